//! One canonical origin: a request addressed to another host than `APP_BASE_URL`'s (`127.0.0.1`
//! for `localhost`, `APP.fly.dev` for a custom domain) is sent there with `307 Temporary
//! Redirect` (method and body kept) before anything runs or is stored. Browsers keep cookies per
//! host, so a sign-in started on one host could never finish on the other.
//!
//! Health, readiness and metrics answer on any host: platform checks and scrapers reach the app
//! on an internal address (Fly's checks do not follow redirects).
//!
//! The host is the request's `Host` (or HTTP/2 `:authority`), or `X-Forwarded-Host` behind a
//! trusted proxy (`TRUST_PROXY_HEADERS`): a proxy that rewrites `Host` without saying so would
//! make every request look foreign, so it must pass the original on.

use poem::{Endpoint, IntoResponse, Request, Response, http::StatusCode};
use url::Url;

/// Paths that answer on any host.
const ANY_HOST: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

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
}

impl CanonicalOrigin {
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
        }
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
        if foreign && !ANY_HOST.contains(&path) {
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
}
