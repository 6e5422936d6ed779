//! One canonical origin: a request addressed to another host than `APP_BASE_URL`'s (`127.0.0.1`
//! for `localhost`, `APP.fly.dev` for a custom domain) is sent there with `307 Temporary
//! Redirect` (method and body kept) before anything runs or is stored. Browsers keep cookies per
//! host, so a sign-in started on one host could never finish on the other.
//!
//! What moves depends on the environment ([`Scope`]). In production every browser-facing route
//! moves (a second public host such as `APP.fly.dev` next to a custom domain would otherwise split
//! people's cookies). In development only the sign-in routes (`/auth/*`) move: they are what
//! breaks across hosts, and a developer or a script reaching `127.0.0.1` instead of `localhost`
//! keeps being served everywhere else.
//!
//! Machine endpoints answer on any host, in every environment: health, readiness and metrics
//! (platform checks and scrapers reach the app on an internal address, and Fly's checks do not
//! follow redirects), the bearer-token admin API (clients drop `Authorization` on a redirect to
//! another host), and the provider's server-to-server deliveries (`/webhooks/*`,
//! `/auth/backchannel-logout`), which carry no cookie and may not follow redirects.
//!
//! The host is the request's `Host` (or HTTP/2 `:authority`), or `X-Forwarded-Host` behind a
//! trusted proxy (`TRUST_PROXY_HEADERS`): a proxy that rewrites `Host` without saying so would
//! make every request look foreign, so it must pass the original on.

use poem::{Endpoint, IntoResponse, Request, Response, http::StatusCode};
use url::Url;

/// Paths that answer on any host.
const ANY_HOST: [&str; 4] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/auth/backchannel-logout",
];
/// Path prefixes that answer on any host.
const ANY_HOST_PREFIXES: [&str; 2] = ["/api/", "/webhooks/"];

/// Which requests for a foreign host are moved to the canonical origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every browser-facing route (production).
    EveryPage,
    /// Only the sign-in routes under `/auth/` (development).
    SignIn,
}

impl Scope {
    /// Whether a request for `path` on a foreign host is moved.
    pub fn moves(self, path: &str) -> bool {
        if ANY_HOST.contains(&path) || ANY_HOST_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return false;
        }
        match self {
            Self::EveryPage => true,
            Self::SignIn => path.starts_with("/auth/"),
        }
    }
}

/// `APP_BASE_URL`'s origin, and how to tell whether a request is addressed to it.
#[derive(Debug, Clone)]
pub struct CanonicalOrigin {
    /// `scheme://host[:port]`, no path.
    origin: String,
    host: String,
    /// The base URL's port, explicit or its scheme's default.
    port: u16,
    /// What a `Host` without a port means: the base URL's scheme's default.
    default_port: u16,
    trust_proxy_headers: bool,
    scope: Scope,
}

impl CanonicalOrigin {
    /// The origin of `base_url`; it moves [`Scope::EveryPage`] until [`Self::scoped`] says otherwise.
    pub fn new(base_url: &Url, trust_proxy_headers: bool) -> Self {
        let default_port = if base_url.scheme() == "https" {
            443
        } else {
            80
        };
        Self {
            origin: base_url.origin().ascii_serialization(),
            host: base_url.host_str().unwrap_or_default().to_ascii_lowercase(),
            port: base_url.port().unwrap_or(default_port),
            default_port,
            trust_proxy_headers,
            scope: Scope::EveryPage,
        }
    }

    /// The same origin, moving only what `scope` covers.
    pub fn scoped(self, scope: Scope) -> Self {
        Self { scope, ..self }
    }

    /// Whether `host` (`name[:port]`, as in a `Host` header) is this origin's.
    pub fn is_canonical(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<poem::http::uri::Authority>() else {
            return false;
        };
        authority.host().eq_ignore_ascii_case(&self.host)
            && authority.port_u16().unwrap_or(self.default_port) == self.port
    }

    /// The host the request was addressed to, lower-cased (`name[:port]`).
    pub fn request_host(&self, req: &Request) -> Option<String> {
        let forwarded = self
            .trust_proxy_headers
            .then(|| req.header("x-forwarded-host"))
            .flatten()
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        forwarded
            .or_else(|| req.uri().authority().map(|a| a.as_str()))
            .or_else(|| req.header("host"))
            .map(str::to_ascii_lowercase)
    }

    /// `scheme://host[:port]` of `APP_BASE_URL`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Sends requests for other hosts to this origin; serves the rest.
    pub async fn handle<E: Endpoint>(&self, next: E, req: Request) -> poem::Result<Response> {
        let path = req.uri().path();
        let foreign = self
            .request_host(&req)
            .is_some_and(|host| !self.is_canonical(&host));
        if foreign && self.scope.moves(path) {
            let target = format!(
                "{}{}",
                self.origin,
                req.uri().path_and_query().map_or(path, |pq| pq.as_str())
            );
            return Ok(Response::builder()
                .status(StatusCode::TEMPORARY_REDIRECT)
                .header("Location", target)
                .finish());
        }
        Ok(next.call(req).await?.into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_match_by_name_and_port_with_the_schemes_default() {
        let https = CanonicalOrigin::new(&Url::parse("https://Quotes.example/").unwrap(), false);
        for host in ["quotes.example", "QUOTES.example:443"] {
            assert!(https.is_canonical(host), "{host}");
        }
        for host in ["quotes.example:8443", "app.fly.dev", "", "bad host"] {
            assert!(!https.is_canonical(host), "{host}");
        }
        let local = CanonicalOrigin::new(&Url::parse("http://localhost:3000").unwrap(), false);
        assert!(local.is_canonical("localhost:3000"));
        assert!(!local.is_canonical("127.0.0.1:3000"));
        assert!(!local.is_canonical("localhost"));
        assert_eq!(local.origin(), "http://localhost:3000");
        let v6 = CanonicalOrigin::new(&Url::parse("http://[::1]:3000/").unwrap(), false);
        assert!(v6.is_canonical("[::1]:3000"));
    }

    #[test]
    fn production_moves_every_page_development_only_sign_in_and_machines_never() {
        for path in [
            "/",
            "/quote/edit",
            "/admin",
            "/auth/login",
            "/auth/callback",
        ] {
            assert!(Scope::EveryPage.moves(path), "{path}");
        }
        for path in ["/auth/login", "/auth/callback", "/auth/logout"] {
            assert!(Scope::SignIn.moves(path), "{path}");
        }
        for path in ["/", "/quote/edit", "/admin", "/assets/app.css"] {
            assert!(!Scope::SignIn.moves(path), "{path}");
        }
        for path in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api/admin/users",
            "/webhooks/auth0/events",
            "/auth/backchannel-logout",
        ] {
            assert!(!Scope::EveryPage.moves(path), "{path}");
            assert!(!Scope::SignIn.moves(path), "{path}");
        }
    }
}
