//! Typed settings read once from the environment (and `.env` in development).
//!
//! Quotebook's own variable names win over the names used by Neon's Next.js guide
//! (`AUTH0_BASE_URL`, `AUTH0_SECRET`, `AUTH0_ISSUER_BASE_URL`), so a `.env.local` copied from the
//! guide works unchanged and can be migrated one variable at a time.

use std::{collections::HashMap, fmt, net::IpAddr, path::PathBuf, time::Duration};

use url::Url;

mod database;

pub use database::{
    DatabaseUse, DirectSource, PoolMode, TransactionPooler, detect as detect_pooler, endpoint_label,
};

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuthMethod {
    /// `client_secret_post`: Auth0's default for a Regular Web Application.
    Post,
    /// `client_secret_basic`: HTTP Basic, as some providers require.
    Basic,
}

/// An OpenID Provider's issuer identifier exactly as configured: an http(s) URL without query
/// or fragment (OpenID Connect Discovery 1.0, section 2). It is kept as written, never given or
/// stripped of a trailing slash, because providers differ (`https://TENANT.auth0.com/`,
/// `https://accounts.google.com`, `https://HOST/realms/NAME`) and tokens' `iss` is compared
/// as a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    written: String,
    url: Url,
}

impl Issuer {
    /// Accepts an http(s) URL with a host and no query or fragment; `var` names the setting in
    /// the error.
    pub fn parse(var: &'static str, raw: &str) -> Result<Self, ConfigError> {
        let url = parse_http_url(var, raw)?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::new(
                var,
                format!("an issuer has no query or fragment, got {raw:?}"),
            ));
        }
        Ok(Self {
            written: raw.to_owned(),
            url,
        })
    }

    /// Auth0's issuer for a tenant domain: `https://DOMAIN/`.
    /// https://auth0.com/docs/get-started/applications/configure-applications-with-oidc-discovery
    pub fn auth0_domain(domain: &str) -> Result<Self, ConfigError> {
        let domain = domain.trim_end_matches('/');
        let domain = domain.strip_prefix("https://").unwrap_or(domain);
        Self::parse("AUTH0_DOMAIN", &format!("https://{domain}/"))
    }

    /// The identifier as written.
    pub fn as_str(&self) -> &str {
        &self.written
    }

    /// The identifier as a URL (normalised: an empty path becomes `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }
}

impl fmt::Display for Issuer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.written)
    }
}

/// Where sign-in and the Management API live.
#[derive(Debug, Clone)]
pub enum IdentityProvider {
    /// A real OpenID provider (Auth0 or any other standards-following one).
    External { issuer: Issuer },
    /// The built-in Auth0 emulator, started in-process on `bind` (development only).
    Emulator { bind: std::net::SocketAddr },
}

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub provider: IdentityProvider,
    pub client_id: String,
    pub client_secret: Secret,
    pub token_auth: TokenAuthMethod,
    /// Client used for the Management API (client credentials); defaults to the app's client.
    pub mgmt_client_id: String,
    pub mgmt_client_secret: Secret,
    /// Namespaced ID-token claim holding the user's roles (Auth0 drops bare names like `roles`).
    pub roles_claim: String,
    /// What every sign-in asks the provider for besides what the person chose.
    pub login: LoginSettings,
}

/// `AUTH0_AUDIENCE` and `AUTH0_SCOPE`: the API the access token is for and scopes beyond
/// `openid profile email` (Auth0's Universal Login parameters, named as @auth0/nextjs-auth0 v4
/// names them). https://auth0.com/docs/authenticate/login/auth0-universal-login
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoginSettings {
    pub audience: Option<String>,
    /// Scope tokens (RFC 6749 section 3.3), `openid profile email` first, without repeats.
    pub scopes: Vec<String>,
}

/// Where Postgres is and how long to wait for it (see `config/database.rs` for which URL does
/// what).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// `DATABASE_URL`, for requests; `None` starts a local cluster under `data_dir`.
    pub url: Option<Secret>,
    /// For session-level work (migrations, the sync's run lock, the job queue):
    /// `DATABASE_URL_DIRECT`, or derived from a pooled `DATABASE_URL`. `None`: `DATABASE_URL`
    /// keeps sessions and does everything. Never `None` when `pooler` is set.
    pub direct_url: Option<Secret>,
    pub direct_source: Option<DirectSource>,
    /// Why `DATABASE_URL` is taken for a transaction-mode pooler, if it is.
    pub pooler: Option<TransactionPooler>,
    pub max_connections: u32,
    /// `DATABASE_ACQUIRE_TIMEOUT_MS`: how long a page waits for a connection while every one
    /// is busy.
    pub acquire_timeout: Duration,
    /// `DATABASE_CONNECT_TIMEOUT_SECS`: how long opening a connection may take (a suspended
    /// Neon compute wakes in hundreds of milliseconds, sometimes seconds).
    pub connect_timeout: Duration,
    /// `DATABASE_STARTUP_TIMEOUT_SECS`: how long start-up waits for the database to answer.
    pub startup_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub secret: Option<Secret>,
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub api_token: Option<Secret>,
    pub emails: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    /// Cron expression (seconds field first) for incremental syncs.
    pub incremental_schedule: String,
    /// Cron expression for full syncs.
    pub full_schedule: String,
    /// Days a user marked deleted keeps their quote before it is purged.
    pub purge_after_days: u32,
}

/// The built-in emulator's development options.
#[derive(Debug, Clone)]
pub struct EmulatorSettings {
    /// `AUTH0_EMULATOR_USERS`: demo users to seed (the first is an admin).
    pub seed_users: usize,
    /// `AUTH0_EMULATOR_PERSIST_KEY`: keep the signing key under `DATA_DIR` across restarts.
    pub persist_key: bool,
}

/// Auth0's pushes of user changes (README "Event Streams and Log Streams"). A stream whose token
/// is unset is off: its webhook answers 404.
#[derive(Debug, Clone, Default)]
pub struct StreamSettings {
    /// `AUTH0_EVENTS_TOKEN`: the Event Stream's bearer token; deliveries to
    /// `/webhooks/auth0/events` carry `Authorization: Bearer <token>`.
    /// https://auth0.com/docs/customize/events/create-an-event-stream
    pub events_token: Option<Secret>,
    /// `AUTH0_LOG_STREAM_TOKEN`: the Log Stream's "Authorization Token", which Auth0 sends as the
    /// whole `Authorization` header of deliveries to `/webhooks/auth0/logs`.
    /// https://auth0.com/docs/customize/log-streams/custom-log-streams
    pub log_stream_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    /// `METRICS_TOKEN`: bearer token for `/metrics` on the main port.
    pub token: Option<Secret>,
    /// `METRICS_ADDR`: a separate (private) listener for `/metrics`, e.g. `0.0.0.0:9091` on Fly.
    pub addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub env: AppEnv,
    pub host: IpAddr,
    pub port: u16,
    pub base_url: Url,
    pub data_dir: PathBuf,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Trust `X-Forwarded-Proto` / `Fly-Client-IP` (only behind a proxy that sets them).
    pub trust_proxy_headers: bool,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub session: SessionSettings,
    pub admin: AdminSettings,
    pub sync: SyncSettings,
    pub metrics: MetricsSettings,
    pub emulator: EmulatorSettings,
    pub streams: StreamSettings,
}

/// A setting that could not be accepted; the message names the variable and what it expects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {expected}")]
pub struct ConfigError {
    pub var: &'static str,
    pub expected: String,
}

impl ConfigError {
    fn new(var: &'static str, expected: impl Into<String>) -> Self {
        Self {
            var,
            expected: expected.into(),
        }
    }
}

/// Default credentials registered with the built-in emulator (also in `.env.example`).
pub const DEV_CLIENT_ID: &str = "quotebook-dev";
pub const DEV_CLIENT_SECRET: &str = "quotebook-dev-secret";
pub const DEFAULT_ROLES_CLAIM: &str = "https://quotebook.example/roles";

impl Settings {
    /// Reads `.env` (development convenience) and then the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one would silently drop settings, so report it.
        for file in [".env", ".env.local"] {
            if let Err(err) = dotenvy::from_filename(file)
                && !err.not_found()
            {
                return Err(ConfigError::new(
                    "DOTENV",
                    format!("{file} could not be read: {err}"),
                ));
            }
        }
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars(&vars)
    }

    /// Builds settings from a map of variables: the testable core of `from_env`.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let first = |names: &[&'static str]| {
            names
                .iter()
                .find_map(|name| get(name).map(|value| (*name, value)))
        };

        let env = match get("APP_ENV").as_deref() {
            None | Some("development" | "dev") => AppEnv::Development,
            Some("production" | "prod") => AppEnv::Production,
            Some(_) => {
                return Err(ConfigError::new(
                    "APP_ENV",
                    "expected `development` or `production`",
                ));
            }
        };
        let production = env == AppEnv::Production;

        let port = match get("PORT") {
            None => 3000,
            Some(raw) => raw.parse::<u16>().map_err(|_| {
                ConfigError::new(
                    "PORT",
                    format!("expected a port number 0-65535, got {raw:?}"),
                )
            })?,
        };
        let host = match get("HOST") {
            None if production => IpAddr::from([0, 0, 0, 0]),
            None => IpAddr::from([127, 0, 0, 1]),
            Some(raw) => raw.parse().map_err(|_| {
                ConfigError::new("HOST", format!("expected an IP address, got {raw:?}"))
            })?,
        };

        let base_url = match first(&["APP_BASE_URL", "AUTH0_BASE_URL"]) {
            None if production => {
                return Err(ConfigError::new(
                    "APP_BASE_URL",
                    "required in production: the public https URL of the app",
                ));
            }
            None => Url::parse(&format!("http://localhost:{port}"))
                .map_err(|e| ConfigError::new("PORT", e.to_string()))?,
            Some((var, raw)) => parse_http_url(var, &raw)?,
        };
        if production && base_url.scheme() != "https" {
            return Err(ConfigError::new(
                "APP_BASE_URL",
                "must be an https URL in production",
            ));
        }

        let auth = auth_settings(&get, production)?;

        let session_secret =
            first(&["SESSION_SECRET", "AUTH0_SECRET"]).map(|(_, v)| Secret::new(v));
        if production
            && session_secret
                .as_ref()
                .is_none_or(|s| s.expose().len() < 32)
        {
            return Err(ConfigError::new(
                "SESSION_SECRET",
                "required in production: at least 32 random bytes (e.g. `openssl rand -hex 32`)",
            ));
        }

        // A local cluster in production would keep everyone's data on a Machine's throwaway disk.
        let database_url = get("DATABASE_URL").map(Secret::new);
        if production && database_url.is_none() {
            return Err(ConfigError::new(
                "DATABASE_URL",
                "required in production: your Neon pooled connection string (postgres://...?sslmode=require)",
            ));
        }

        let endpoints = database::resolve(
            database_url.as_ref().map(Secret::expose),
            get("DATABASE_URL_DIRECT").as_deref(),
            PoolMode::parse(get("DATABASE_POOL_MODE").as_deref())?,
        )?;

        Ok(Self {
            env,
            host,
            port,
            base_url,
            data_dir: get("DATA_DIR").map_or_else(|| PathBuf::from(".data"), PathBuf::from),
            body_limit: parse_number(&get, "BODY_LIMIT_BYTES", 64 * 1024)?,
            request_timeout: Duration::from_secs(parse_number(&get, "REQUEST_TIMEOUT_SECS", 15)?),
            trust_proxy_headers: parse_bool(&get, "TRUST_PROXY_HEADERS", false)?,
            database: DatabaseSettings {
                url: database_url,
                direct_url: endpoints.direct_url,
                direct_source: endpoints.direct_source,
                pooler: endpoints.pooler,
                max_connections: parse_number(&get, "DATABASE_MAX_CONNECTIONS", 10)?,
                acquire_timeout: Duration::from_millis(parse_number(
                    &get,
                    "DATABASE_ACQUIRE_TIMEOUT_MS",
                    3000,
                )?),
                connect_timeout: Duration::from_secs(parse_seconds(
                    &get,
                    "DATABASE_CONNECT_TIMEOUT_SECS",
                    10,
                )?),
                startup_timeout: Duration::from_secs(parse_seconds(
                    &get,
                    "DATABASE_STARTUP_TIMEOUT_SECS",
                    60,
                )?),
            },
            auth,
            session: SessionSettings {
                secret: session_secret,
                idle_timeout: Duration::from_secs(parse_number(
                    &get,
                    "SESSION_IDLE_TIMEOUT_SECS",
                    24 * 3600,
                )?),
                absolute_lifetime: Duration::from_secs(parse_number(
                    &get,
                    "SESSION_LIFETIME_SECS",
                    7 * 24 * 3600,
                )?),
            },
            admin: AdminSettings {
                api_token: get("ADMIN_API_TOKEN").map(Secret::new),
                emails: get("ADMIN_EMAILS")
                    .map(|raw| {
                        raw.split(',')
                            .map(|e| e.trim().to_lowercase())
                            .filter(|e| !e.is_empty())
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            sync: SyncSettings {
                incremental_schedule: get("SYNC_SCHEDULE")
                    .unwrap_or_else(|| "0 */15 * * * *".to_owned()),
                full_schedule: get("SYNC_FULL_SCHEDULE")
                    .unwrap_or_else(|| "0 30 3 * * *".to_owned()),
                purge_after_days: parse_number(&get, "SYNC_PURGE_AFTER_DAYS", 30)?,
            },
            emulator: EmulatorSettings {
                seed_users: parse_number(&get, "AUTH0_EMULATOR_USERS", 20)?,
                persist_key: parse_bool(&get, "AUTH0_EMULATOR_PERSIST_KEY", true)?,
            },
            streams: StreamSettings {
                events_token: webhook_token(&get, "AUTH0_EVENTS_TOKEN", production)?,
                log_stream_token: webhook_token(&get, "AUTH0_LOG_STREAM_TOKEN", production)?,
            },
            metrics: MetricsSettings {
                token: get("METRICS_TOKEN").map(Secret::new),
                addr: match get("METRICS_ADDR") {
                    None => None,
                    Some(raw) => Some(raw.parse().map_err(|_| {
                        ConfigError::new("METRICS_ADDR", format!("expected host:port, got {raw:?}"))
                    })?),
                },
            },
        })
    }

    pub fn is_production(&self) -> bool {
        self.env == AppEnv::Production
    }

    /// The OIDC redirect URI registered with the provider.
    pub fn callback_url(&self) -> Url {
        let mut url = self.base_url.clone();
        url.set_path("/auth/callback");
        url
    }

    /// Where the provider posts logout tokens (OpenID Connect Back-Channel Logout 1.0).
    pub fn backchannel_logout_url(&self) -> Url {
        let mut url = self.base_url.clone();
        url.set_path("/auth/backchannel-logout");
        url
    }

    /// Cookies get `Secure` and the `__Host-` prefix when the app is served over https.
    pub fn secure_cookies(&self) -> bool {
        self.base_url.scheme() == "https"
    }
}

fn auth_settings(
    get: &impl Fn(&str) -> Option<String>,
    production: bool,
) -> Result<AuthSettings, ConfigError> {
    let wants_emulator = parse_bool(get, "AUTH0_EMULATOR", false)?;
    // Only a bare Auth0 domain is given Auth0's form; any issuer URL is used as written.
    let issuer = match (get("AUTH0_DOMAIN"), get("AUTH0_ISSUER_BASE_URL")) {
        (Some(domain), _) => Some(Issuer::auth0_domain(&domain)?),
        (None, Some(raw)) => Some(Issuer::parse("AUTH0_ISSUER_BASE_URL", &raw)?),
        (None, None) => None,
    };

    let provider = match issuer {
        _ if wants_emulator && production => {
            return Err(ConfigError::new(
                "AUTH0_EMULATOR",
                "the Auth0 emulator is for development only and cannot run with APP_ENV=production",
            ));
        }
        Some(issuer) if !wants_emulator => {
            if production && issuer.url().scheme() != "https" {
                return Err(ConfigError::new(
                    "AUTH0_ISSUER_BASE_URL",
                    "must be an https URL in production",
                ));
            }
            IdentityProvider::External { issuer }
        }
        _ if production => {
            return Err(ConfigError::new(
                "AUTH0_DOMAIN",
                "required in production (e.g. your-tenant.us.auth0.com)",
            ));
        }
        _ if !cfg!(feature = "emulator") => {
            return Err(ConfigError::new(
                "AUTH0_DOMAIN",
                "required: this build has no built-in Auth0 emulator (e.g. your-tenant.us.auth0.com)",
            ));
        }
        _ => {
            let raw = get("AUTH0_EMULATOR_ADDR").unwrap_or_else(|| "127.0.0.1:3001".to_owned());
            let bind = raw.parse().map_err(|_| {
                ConfigError::new(
                    "AUTH0_EMULATOR_ADDR",
                    format!("expected host:port, got {raw:?}"),
                )
            })?;
            IdentityProvider::Emulator { bind }
        }
    };
    let emulated = matches!(provider, IdentityProvider::Emulator { .. });

    let client_id = match get("AUTH0_CLIENT_ID") {
        Some(id) => id,
        None if emulated => DEV_CLIENT_ID.to_owned(),
        None => {
            return Err(ConfigError::new(
                "AUTH0_CLIENT_ID",
                "required with AUTH0_DOMAIN: the Client ID of your Regular Web Application",
            ));
        }
    };
    let client_secret = match get("AUTH0_CLIENT_SECRET") {
        Some(secret) => Secret::new(secret),
        None if emulated => Secret::new(DEV_CLIENT_SECRET),
        None => {
            return Err(ConfigError::new(
                "AUTH0_CLIENT_SECRET",
                "required with AUTH0_DOMAIN: the Client Secret of your Regular Web Application",
            ));
        }
    };
    let token_auth = match get("AUTH0_TOKEN_AUTH_METHOD").as_deref() {
        None | Some("client_secret_post") => TokenAuthMethod::Post,
        Some("client_secret_basic") => TokenAuthMethod::Basic,
        Some(_) => {
            return Err(ConfigError::new(
                "AUTH0_TOKEN_AUTH_METHOD",
                "expected `client_secret_post` or `client_secret_basic`",
            ));
        }
    };
    Ok(AuthSettings {
        mgmt_client_id: get("AUTH0_MGMT_CLIENT_ID").unwrap_or_else(|| client_id.clone()),
        mgmt_client_secret: get("AUTH0_MGMT_CLIENT_SECRET")
            .map(Secret::new)
            .unwrap_or_else(|| client_secret.clone()),
        provider,
        client_id,
        client_secret,
        token_auth,
        roles_claim: get("AUTH0_ROLES_CLAIM").unwrap_or_else(|| DEFAULT_ROLES_CLAIM.to_owned()),
        login: login_settings(get)?,
    })
}

/// The scopes every sign-in requests: the profile the app shows needs these.
const BASE_SCOPES: [&str; 3] = ["openid", "profile", "email"];

fn login_settings(get: &impl Fn(&str) -> Option<String>) -> Result<LoginSettings, ConfigError> {
    let mut scopes: Vec<String> = BASE_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    for scope in get("AUTH0_SCOPE").unwrap_or_default().split_whitespace() {
        // RFC 6749 3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if !scope
            .bytes()
            .all(|b| matches!(b, 0x21 | 0x23..=0x5B | 0x5D..=0x7E))
        {
            return Err(ConfigError::new(
                "AUTH0_SCOPE",
                format!("expected space-separated scopes, got {scope:?}"),
            ));
        }
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    let audience = get("AUTH0_AUDIENCE");
    if let Some(audience) = &audience
        && audience.chars().any(char::is_control)
    {
        return Err(ConfigError::new(
            "AUTH0_AUDIENCE",
            "expected an API identifier such as https://api.example.com",
        ));
    }
    Ok(LoginSettings { audience, scopes })
}

/// The shortest webhook token production accepts: anyone who can guess it can write users.
const MIN_WEBHOOK_TOKEN: usize = 16;

/// A webhook's shared secret: compared with an HTTP header, so printable ASCII only
/// (RFC 9110 section 5.5), and not guessable in production.
fn webhook_token(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    production: bool,
) -> Result<Option<Secret>, ConfigError> {
    let Some(token) = get(var) else {
        return Ok(None);
    };
    if !token.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
        return Err(ConfigError::new(
            var,
            "expected printable ASCII (it travels in an HTTP header), e.g. `openssl rand -hex 32`",
        ));
    }
    if production && token.len() < MIN_WEBHOOK_TOKEN {
        return Err(ConfigError::new(
            var,
            format!(
                "at least {MIN_WEBHOOK_TOKEN} characters in production (e.g. `openssl rand -hex 32`)"
            ),
        ));
    }
    Ok(Some(Secret::new(token)))
}

fn parse_http_url(var: &'static str, raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => Ok(url),
        _ => Err(ConfigError::new(
            var,
            format!("expected an http(s) URL such as https://example.com, got {raw:?}"),
        )),
    }
}

fn parse_number<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(raw) => raw
            .parse()
            .map_err(|_| ConfigError::new(var, format!("expected a whole number, got {raw:?}"))),
    }
}

/// A number of seconds to wait, at least one (zero would fail every attempt at once).
fn parse_seconds(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u64,
) -> Result<u64, ConfigError> {
    match parse_number(get, var, default)? {
        0 => Err(ConfigError::new(var, "expected at least 1 (seconds)")),
        secs => Ok(secs),
    }
}

fn parse_bool(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match get(var).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(raw) => Err(ConfigError::new(
            var,
            format!("expected true or false, got {raw:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn production() -> Vec<(&'static str, &'static str)> {
        vec![
            ("APP_ENV", "production"),
            ("APP_BASE_URL", "https://quotebook.fly.dev"),
            ("AUTH0_DOMAIN", "tenant.us.auth0.com"),
            ("AUTH0_CLIENT_ID", "id"),
            ("AUTH0_CLIENT_SECRET", "client-secret-value"),
            ("SESSION_SECRET", "0123456789abcdef0123456789abcdef"),
            ("DATABASE_URL", "postgres://u:p@h/db"),
        ]
    }

    #[test]
    fn empty_environment_is_a_working_development_setup() {
        let s = Settings::from_vars(&HashMap::new()).unwrap();
        assert_eq!(s.port, 3000);
        assert_eq!(s.base_url.as_str(), "http://localhost:3000/");
        assert!(matches!(s.auth.provider, IdentityProvider::Emulator { .. }));
        assert!(s.database.url.is_none());
    }

    #[test]
    fn bad_port_names_the_variable() {
        let err = Settings::from_vars(&vars(&[("PORT", "abc")])).unwrap_err();
        assert_eq!(err.var, "PORT");
        assert!(err.to_string().contains("abc"));
    }

    #[test]
    fn production_requires_a_long_session_secret_and_never_starts_the_emulator() {
        let mut p = production();
        assert!(Settings::from_vars(&vars(&p)).is_ok());
        p.retain(|(k, _)| *k != "SESSION_SECRET");
        p.push(("SESSION_SECRET", "short"));
        assert_eq!(
            Settings::from_vars(&vars(&p)).unwrap_err().var,
            "SESSION_SECRET"
        );

        let mut p = production();
        p.push(("AUTH0_EMULATOR", "true"));
        assert_eq!(
            Settings::from_vars(&vars(&p)).unwrap_err().var,
            "AUTH0_EMULATOR"
        );

        let mut p = production();
        p.retain(|(k, _)| *k != "AUTH0_DOMAIN");
        assert_eq!(
            Settings::from_vars(&vars(&p)).unwrap_err().var,
            "AUTH0_DOMAIN"
        );

        let mut p = production();
        p.retain(|(k, _)| *k != "DATABASE_URL");
        assert_eq!(
            Settings::from_vars(&vars(&p)).unwrap_err().var,
            "DATABASE_URL"
        );
    }

    #[test]
    fn a_pooled_database_url_without_a_direct_one_is_refused_unless_derivable() {
        let mut p = production();
        p.retain(|(k, _)| *k != "DATABASE_URL");
        p.push(("DATABASE_URL", "postgres://u:p@pgbouncer.internal:6432/db"));
        // Development too: work through the pooler would fail far from its cause.
        for env in ["production", "development"] {
            let mut vars = vars(&p);
            vars.insert("APP_ENV".into(), env.into());
            let err = Settings::from_vars(&vars).unwrap_err();
            assert_eq!(err.var, "DATABASE_URL_DIRECT", "{env}");
        }
        p.push(("DATABASE_POOL_MODE", "session"));
        let mut zero = vars(&p);
        zero.insert("DATABASE_CONNECT_TIMEOUT_SECS".into(), "0".into());
        assert_eq!(
            Settings::from_vars(&zero).unwrap_err().var,
            "DATABASE_CONNECT_TIMEOUT_SECS"
        );
        let s = Settings::from_vars(&vars(&p)).unwrap();
        assert!(s.database.pooler.is_none() && s.database.direct_url.is_none());

        let mut p = production();
        p.retain(|(k, _)| *k != "DATABASE_URL");
        p.push((
            "DATABASE_URL",
            "postgres://u:p@ep-a-1-pooler.us-east-2.aws.neon.tech/db",
        ));
        let s = Settings::from_vars(&vars(&p)).unwrap();
        assert!(s.database.pooled(DatabaseUse::Requests));
        assert!(!s.database.pooled(DatabaseUse::Session));
        assert_eq!(
            s.database.url_for(DatabaseUse::Session).unwrap().expose(),
            "postgres://u:p@ep-a-1.us-east-2.aws.neon.tech/db"
        );
        assert!(
            !s.database.describe().contains("u:p"),
            "no credentials in the log"
        );
    }

    #[test]
    fn seed_guide_names_are_accepted_and_ours_win() {
        let s = Settings::from_vars(&vars(&[
            ("AUTH0_ISSUER_BASE_URL", "https://tenant.us.auth0.com"),
            ("AUTH0_BASE_URL", "http://localhost:4000"),
            ("AUTH0_CLIENT_ID", "id"),
            ("AUTH0_CLIENT_SECRET", "s"),
            ("AUTH0_SECRET", "guide-secret"),
        ]))
        .unwrap();
        match s.auth.provider {
            // As written: discovery finds Auth0's `https://tenant.us.auth0.com/` from it.
            IdentityProvider::External { issuer } => {
                assert_eq!(issuer.as_str(), "https://tenant.us.auth0.com")
            }
            other => panic!("expected an external provider, got {other:?}"),
        }
        assert_eq!(s.base_url.as_str(), "http://localhost:4000/");
        assert_eq!(s.session.secret.unwrap().expose(), "guide-secret");

        let s = Settings::from_vars(&vars(&[
            ("AUTH0_BASE_URL", "http://localhost:4000"),
            ("APP_BASE_URL", "http://localhost:5000"),
        ]))
        .unwrap();
        assert_eq!(s.base_url.as_str(), "http://localhost:5000/");
    }

    #[test]
    fn issuers_are_kept_as_written_and_only_a_domain_gets_auth0s_form() {
        let issuer = |pairs: &[(&str, &str)]| {
            let mut all = vec![("AUTH0_CLIENT_ID", "id"), ("AUTH0_CLIENT_SECRET", "s")];
            all.extend_from_slice(pairs);
            match Settings::from_vars(&vars(&all)).map(|s| s.auth.provider) {
                Ok(IdentityProvider::External { issuer }) => Ok(issuer.as_str().to_owned()),
                Ok(other) => panic!("expected an external provider, got {other:?}"),
                Err(err) => Err(err.var),
            }
        };
        for written in [
            "https://accounts.google.com",
            "https://kc.example/realms/app",
            "https://kc.example/realms/app/",
            "https://tenant.eu.auth0.com/",
        ] {
            assert_eq!(
                issuer(&[("AUTH0_ISSUER_BASE_URL", written)]),
                Ok(written.into())
            );
        }
        for domain in ["tenant.eu.auth0.com", "https://tenant.eu.auth0.com/"] {
            assert_eq!(
                issuer(&[("AUTH0_DOMAIN", domain)]),
                Ok("https://tenant.eu.auth0.com/".into())
            );
        }
        assert_eq!(
            issuer(&[("AUTH0_ISSUER_BASE_URL", "https://idp.example/?tenant=1")]),
            Err("AUTH0_ISSUER_BASE_URL")
        );
    }

    #[test]
    fn login_settings_add_scopes_once_and_refuse_malformed_ones() {
        let s = Settings::from_vars(&vars(&[
            ("AUTH0_AUDIENCE", "https://api.example"),
            (
                "AUTH0_SCOPE",
                "openid offline_access  read:quotes offline_access",
            ),
        ]))
        .unwrap();
        assert_eq!(
            s.auth.login.audience.as_deref(),
            Some("https://api.example")
        );
        assert_eq!(
            s.auth.login.scopes,
            [
                "openid",
                "profile",
                "email",
                "offline_access",
                "read:quotes"
            ]
        );
        let err = Settings::from_vars(&vars(&[("AUTH0_SCOPE", "read\\quotes")])).unwrap_err();
        assert_eq!(err.var, "AUTH0_SCOPE");
        assert_eq!(
            Settings::from_vars(&HashMap::new())
                .unwrap()
                .auth
                .login
                .scopes,
            ["openid", "profile", "email"]
        );
    }

    #[test]
    fn base_url_must_be_a_url() {
        let err = Settings::from_vars(&vars(&[("APP_BASE_URL", "not a url")])).unwrap_err();
        assert_eq!(err.var, "APP_BASE_URL");
    }

    #[test]
    fn webhook_tokens_are_printable_and_long_enough_in_production() {
        let with = |env: &str, token: &str| {
            let mut pairs = production();
            pairs.retain(|(k, _)| *k != "APP_ENV");
            pairs.push(("APP_ENV", env));
            pairs.push(("AUTH0_EVENTS_TOKEN", token));
            pairs.push(("AUTH0_LOG_STREAM_TOKEN", "Bearer 0123456789abcdef"));
            Settings::from_vars(&vars(&pairs))
        };
        assert_eq!(
            with("production", "short").unwrap_err().var,
            "AUTH0_EVENTS_TOKEN"
        );
        assert!(with("development", "short").is_ok());
        assert_eq!(
            with("development", "tab\there").unwrap_err().var,
            "AUTH0_EVENTS_TOKEN"
        );
        let s = with("production", "0123456789abcdef0123").unwrap();
        assert_eq!(
            s.streams.events_token.unwrap().expose(),
            "0123456789abcdef0123"
        );
        assert_eq!(
            s.streams.log_stream_token.unwrap().expose(),
            "Bearer 0123456789abcdef"
        );
        let quiet = Settings::from_vars(&HashMap::new()).unwrap();
        assert!(quiet.streams.events_token.is_none() && quiet.streams.log_stream_token.is_none());
    }

    #[test]
    fn secrets_never_print() {
        let s = Settings::from_vars(&vars(&production())).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("client-secret-value"));
        assert!(!shown.contains("0123456789abcdef"));
        assert!(!shown.contains("postgres://u:p@h/db"));
    }
}
