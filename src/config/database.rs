//! Which connection string does what.
//!
//! Requests go to `DATABASE_URL`, in production usually a pooler in *transaction* mode: Neon's
//! pooled endpoint (PgBouncer; the host carries `-pooler`), Supabase's transaction pooler, a
//! PgBouncer of your own. Such a pooler hands every transaction (and every statement outside one)
//! to whichever server connection is free, so nothing that lives in a session survives from one
//! statement to the next: session advisory locks, `LISTEN`, `SET`, named prepared statements.
//!
//! So everything that needs a session runs on a *direct* connection: migrations (sqlx holds an
//! advisory lock while migrating), the sync's run lock, and the job queue (apalis' `LISTEN`,
//! its locks and heartbeats). That connection string is `DATABASE_URL_DIRECT`, or, when a pooled
//! `DATABASE_URL`'s direct counterpart follows a documented naming rule, derived from it:
//!
//! - Neon: the pooled host is the direct host with `-pooler` after the endpoint id
//!   (`ep-x-123456-pooler.us-east-2.aws.neon.tech`; neon.com/docs/connect/connection-pooling).
//! - Supabase: the shared pooler runs transaction mode on port 6543 and session mode, which keeps
//!   sessions, on port 5432 of the same host
//!   (supabase.com/docs/guides/database/connecting-to-postgres).
//!
//! Any other transaction pooler without `DATABASE_URL_DIRECT` is refused at start (in every
//! environment: work through the pooler would fail now and then, or hang, far from its cause).

use std::fmt;

use url::Url;

use super::{ConfigError, DatabaseSettings, Secret};

/// Why `DATABASE_URL` is taken for a transaction-mode pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionPooler {
    /// A host label ending in `-pooler`: Neon's pooled endpoint.
    Neon,
    /// `*.pooler.supabase.com` on port 6543: Supabase's pooler (Supavisor) in transaction mode.
    Supabase,
    /// `pgbouncer=true` in the URL: Prisma's flag for PgBouncer in transaction mode
    /// (prisma.io/docs/orm/prisma-client/setup-and-configuration/databases-connections/pgbouncer).
    PgBouncerFlag,
    /// Port 6432, PgBouncer's default: a guess, which `DATABASE_POOL_MODE=session` overrules.
    PgBouncerPort,
    /// `DATABASE_POOL_MODE=transaction`.
    Declared,
}

impl fmt::Display for TransactionPooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Neon => "Neon's pooled endpoint (the host ends in -pooler)",
            Self::Supabase => "Supabase's transaction pooler (pooler.supabase.com, port 6543)",
            Self::PgBouncerFlag => "pgbouncer=true in the URL",
            Self::PgBouncerPort => "port 6432, PgBouncer's default",
            Self::Declared => "DATABASE_POOL_MODE=transaction",
        })
    }
}

/// `DATABASE_POOL_MODE`: what `DATABASE_URL` is, in PgBouncer's terms (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// Recognise the poolers above from the URL (the default).
    Auto,
    /// A transaction-mode pooler, whatever the URL looks like.
    Transaction,
    /// Connections keep their session (Postgres itself, or a pooler in session mode): nothing
    /// is treated as pooled, and everything runs on `DATABASE_URL`.
    Session,
}

impl PoolMode {
    pub(super) fn parse(raw: Option<&str>) -> Result<Self, ConfigError> {
        match raw {
            None | Some("auto") => Ok(Self::Auto),
            Some("transaction") => Ok(Self::Transaction),
            Some("session") => Ok(Self::Session),
            Some(other) => Err(ConfigError::new(
                "DATABASE_POOL_MODE",
                format!("expected `auto`, `transaction` or `session`, got {other:?}"),
            )),
        }
    }
}

/// Where the connection string for session-level work came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectSource {
    /// `DATABASE_URL_DIRECT`.
    Configured,
    /// Derived from the pooled `DATABASE_URL` by the naming rule of this pooler.
    Derived(TransactionPooler),
}

/// What a connection is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseUse {
    /// Web requests: `DATABASE_URL`, through the pooler when there is one.
    Requests,
    /// Work that needs a session of its own (migrations, the sync's run lock, the job queue).
    Session,
}

/// The outcome of reading `DATABASE_URL`, `DATABASE_URL_DIRECT` and `DATABASE_POOL_MODE`.
#[derive(Debug, Clone)]
pub(super) struct Endpoints {
    pub pooler: Option<TransactionPooler>,
    pub direct_url: Option<Secret>,
    pub direct_source: Option<DirectSource>,
}

/// Decides which URL does what; errors name the variable to set and never echo a URL.
pub(super) fn resolve(
    url: Option<&str>,
    direct: Option<&str>,
    mode: PoolMode,
) -> Result<Endpoints, ConfigError> {
    let parsed = url.map(|raw| parse("DATABASE_URL", raw)).transpose()?;
    if let Some(raw) = direct
        && let Some(pooler) = certain_pooler(&parse("DATABASE_URL_DIRECT", raw)?)
    {
        return Err(ConfigError::new(
            "DATABASE_URL_DIRECT",
            format!(
                "points at a transaction-mode pooler ({pooler}); use the connection string with pooling off"
            ),
        ));
    }
    let pooler = match (&parsed, mode) {
        (None, _) | (_, PoolMode::Session) => None,
        (Some(url), PoolMode::Auto) => detect(url),
        (Some(url), PoolMode::Transaction) => detect(url).or(Some(TransactionPooler::Declared)),
    };
    let (direct_url, direct_source) = match (direct, parsed, pooler) {
        (Some(raw), _, _) => (Some(Secret::new(raw)), Some(DirectSource::Configured)),
        (None, Some(url), Some(pooler)) => match derive_direct(&url, pooler) {
            Some(derived) => (
                Some(Secret::new(derived)),
                Some(DirectSource::Derived(pooler)),
            ),
            None => {
                return Err(ConfigError::new(
                    "DATABASE_URL_DIRECT",
                    format!(
                        "required: DATABASE_URL points at a transaction-mode pooler ({pooler}), which cannot keep the session that migrations, the sync's lock and the job queue need; set DATABASE_URL_DIRECT to the direct (unpooled) connection string, or DATABASE_POOL_MODE=session if DATABASE_URL is not a transaction pooler"
                    ),
                ));
            }
        },
        _ => (None, None),
    };
    Ok(Endpoints {
        pooler,
        direct_url,
        direct_source,
    })
}

fn parse(var: &'static str, raw: &str) -> Result<Url, ConfigError> {
    match Url::parse(raw) {
        Ok(url) if matches!(url.scheme(), "postgres" | "postgresql") => Ok(url),
        _ => Err(ConfigError::new(
            var,
            "expected a postgres:// URL such as postgres://user:password@host/db?sslmode=require",
        )),
    }
}

/// The transaction pooler `url` points at, judged from the URL alone (no connection is made).
pub fn detect(url: &Url) -> Option<TransactionPooler> {
    certain_pooler(url).or_else(|| (port(url) == 6432).then_some(TransactionPooler::PgBouncerPort))
}

/// The poolers the URL names beyond doubt (port 6432 is only PgBouncer's habit).
fn certain_pooler(url: &Url) -> Option<TransactionPooler> {
    if hosts(url).iter().any(|host| pooler_label(host).is_some()) {
        Some(TransactionPooler::Neon)
    } else if port(url) == 6543
        && hosts(url)
            .iter()
            .any(|host| host.ends_with(".pooler.supabase.com"))
    {
        Some(TransactionPooler::Supabase)
    } else if url
        .query_pairs()
        .any(|(key, value)| key == "pgbouncer" && value == "true")
    {
        Some(TransactionPooler::PgBouncerFlag)
    } else {
        None
    }
}

/// The hosts a client connects to: libpq's `host` parameter overrides the URL's host (sqlx
/// follows libpq here), and may be a Unix socket directory.
fn hosts(url: &Url) -> Vec<String> {
    let from_query: Vec<String> = url
        .query_pairs()
        .filter(|(key, _)| key == "host")
        .map(|(_, value)| value.into_owned())
        .collect();
    if !from_query.is_empty() {
        return from_query;
    }
    url.host_str()
        .map(|host| {
            vec![
                percent_encoding::percent_decode_str(host)
                    .decode_utf8_lossy()
                    .into_owned(),
            ]
        })
        .unwrap_or_default()
}

fn port(url: &Url) -> u16 {
    url.query_pairs()
        .filter(|(key, _)| key == "port")
        .find_map(|(_, value)| value.parse().ok())
        .or_else(|| url.port())
        .unwrap_or(5432)
}

/// Where `-pooler` ends a host label (or the last part of a socket directory), if it does.
fn pooler_label(host: &str) -> Option<usize> {
    host.match_indices("-pooler").map(|(at, _)| at).find(|at| {
        matches!(
            host.as_bytes().get(at + "-pooler".len()),
            None | Some(b'.' | b'/')
        )
    })
}

fn without_pooler_label(host: &str) -> String {
    match pooler_label(host) {
        Some(at) => format!("{}{}", &host[..at], &host[at + "-pooler".len()..]),
        None => host.to_owned(),
    }
}

/// The direct counterpart of a pooled URL, where the pooler's naming says what it is.
fn derive_direct(url: &Url, pooler: TransactionPooler) -> Option<String> {
    let mut direct = url.clone();
    match pooler {
        TransactionPooler::Neon => {
            if let Some(host) = url.host_str() {
                direct.set_host(Some(&without_pooler_label(host))).ok()?;
            }
            rewrite_query(&mut direct, |key, value| match key {
                "host" => Some(without_pooler_label(value)),
                "pgbouncer" => None,
                _ => Some(value.to_owned()),
            });
        }
        TransactionPooler::Supabase => {
            if direct.port().is_some() {
                direct.set_port(Some(5432)).ok()?;
            }
            rewrite_query(&mut direct, |key, value| match key {
                "port" => Some("5432".to_owned()),
                "pgbouncer" => None,
                _ => Some(value.to_owned()),
            });
        }
        TransactionPooler::PgBouncerFlag
        | TransactionPooler::PgBouncerPort
        | TransactionPooler::Declared => return None,
    }
    // A rule that left a pooler behind (both `-pooler` and port 6543, say) derived nothing.
    detect(&direct).is_none().then(|| direct.to_string())
}

/// Rewrites each query parameter through `change` (`None` drops it), keeping their order.
fn rewrite_query(url: &mut Url, change: impl Fn(&str, &str) -> Option<String>) {
    let pairs: Vec<(String, String)> = url
        .query_pairs()
        .filter_map(|(key, value)| change(&key, &value).map(|value| (key.into_owned(), value)))
        .collect();
    if pairs.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
}

/// `host:port/database` of a connection string, for logs: never the user, password or
/// parameters. Unparseable input gives a placeholder rather than the input.
pub fn endpoint_label(raw: &str) -> String {
    let Ok(url) = Url::parse(raw) else {
        return "(unparseable URL)".to_owned();
    };
    let host = hosts(&url)
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}:{}{}", port(&url), url.path())
}

impl DatabaseSettings {
    /// The connection string for `what`; `None` means the local development cluster.
    pub fn url_for(&self, what: DatabaseUse) -> Option<&Secret> {
        match what {
            DatabaseUse::Requests => self.url.as_ref(),
            DatabaseUse::Session => self.direct_url.as_ref().or(self.url.as_ref()),
        }
    }

    /// Whether `what` goes through a transaction pooler (then sqlx's statement cache is off,
    /// and every statement goes out unnamed: see `vendor/README.md`).
    pub fn pooled(&self, what: DatabaseUse) -> bool {
        what == DatabaseUse::Requests && self.pooler.is_some()
    }

    /// One line for the log saying which endpoint does what (hosts only, no credentials).
    pub fn describe(&self) -> String {
        let Some(url) = &self.url else {
            return match &self.direct_url {
                Some(direct) => format!(
                    "requests on the local cluster; session work (migrations, sync lock, job queue) on {} (DATABASE_URL_DIRECT)",
                    endpoint_label(direct.expose())
                ),
                None => "everything on the local development cluster".to_owned(),
            };
        };
        let requests = match self.pooler {
            Some(pooler) => format!(
                "requests on {} through a transaction pooler ({pooler}; statements unnamed)",
                endpoint_label(url.expose())
            ),
            None => format!("requests on {}", endpoint_label(url.expose())),
        };
        match (&self.direct_url, self.direct_source) {
            (Some(direct), Some(source)) => {
                let source = match source {
                    DirectSource::Configured => "DATABASE_URL_DIRECT".to_owned(),
                    DirectSource::Derived(TransactionPooler::Neon) => {
                        "derived: DATABASE_URL's host without -pooler".to_owned()
                    }
                    DirectSource::Derived(TransactionPooler::Supabase) => {
                        "derived: Supabase's session-mode pooler, port 5432".to_owned()
                    }
                    DirectSource::Derived(other) => format!("derived ({other})"),
                };
                format!(
                    "{requests}; session work (migrations, sync lock, job queue) on {} ({source})",
                    endpoint_label(direct.expose())
                )
            }
            _ => format!("{requests}; session work (migrations, sync lock, job queue) there too"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolved(url: &str, direct: Option<&str>, mode: PoolMode) -> Endpoints {
        resolve(Some(url), direct, mode).unwrap_or_else(|err| panic!("{url}: {err}"))
    }

    #[test]
    fn neon_pooled_urls_derive_the_direct_endpoint() {
        let e = resolved(
            "postgres://u:p@ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require",
            None,
            PoolMode::Auto,
        );
        assert_eq!(e.pooler, Some(TransactionPooler::Neon));
        assert_eq!(
            e.direct_url.unwrap().expose(),
            "postgres://u:p@ep-cool-darkness-123456.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require"
        );
        assert_eq!(
            e.direct_source,
            Some(DirectSource::Derived(TransactionPooler::Neon))
        );
    }

    #[test]
    fn libpq_host_parameters_are_hosts_too() {
        // The socket directory in `host=` is where the client connects: the rule applies there.
        let e = resolved(
            "postgres://postgres@ep-x-1-pooler.neon.test/db?host=%2Ftmp%2Fqb%2Fep-x-1-pooler&pgbouncer=true",
            None,
            PoolMode::Auto,
        );
        assert_eq!(e.pooler, Some(TransactionPooler::Neon));
        assert_eq!(
            e.direct_url.unwrap().expose(),
            "postgres://postgres@ep-x-1.neon.test/db?host=%2Ftmp%2Fqb%2Fep-x-1"
        );
        let e = resolved(
            "postgres:///db?host=ep-x-1-pooler.eu-central-1.aws.neon.tech",
            None,
            PoolMode::Auto,
        );
        assert_eq!(
            e.direct_url.unwrap().expose(),
            "postgres:///db?host=ep-x-1.eu-central-1.aws.neon.tech"
        );
    }

    #[test]
    fn supabase_transaction_mode_derives_its_session_mode_port() {
        let e = resolved(
            "postgres://postgres.abcdef:pw@aws-0-eu-west-1.pooler.supabase.com:6543/postgres",
            None,
            PoolMode::Auto,
        );
        assert_eq!(e.pooler, Some(TransactionPooler::Supabase));
        assert_eq!(
            e.direct_url.unwrap().expose(),
            "postgres://postgres.abcdef:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres"
        );
        // Session mode (5432) is no transaction pooler.
        let e = resolved(
            "postgres://postgres.abcdef:pw@aws-0-eu-west-1.pooler.supabase.com:5432/postgres",
            None,
            PoolMode::Auto,
        );
        assert_eq!(e.pooler, None);
        assert!(e.direct_url.is_none());
    }

    #[test]
    fn other_poolers_need_a_direct_url_and_the_error_says_what_to_set() {
        for url in [
            "postgres://u:secret-pw@db.internal:6432/app",
            "postgres://u:secret-pw@db.internal/app?pgbouncer=true",
            "postgres://u:secret-pw@db.internal/app?host=db.internal&port=6432",
        ] {
            let err = resolve(Some(url), None, PoolMode::Auto).unwrap_err();
            assert_eq!(err.var, "DATABASE_URL_DIRECT", "{url}");
            assert!(err.expected.contains("DATABASE_POOL_MODE=session"), "{err}");
            assert!(!err.to_string().contains("secret-pw"), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");

            let e = resolved(
                url,
                Some("postgres://u:p@db.internal:5432/app"),
                PoolMode::Auto,
            );
            assert!(e.pooler.is_some(), "{url}");
            assert_eq!(e.direct_source, Some(DirectSource::Configured));
        }
        let err = resolve(Some("postgres://u@db/app"), None, PoolMode::Transaction).unwrap_err();
        assert_eq!(err.var, "DATABASE_URL_DIRECT");
    }

    #[test]
    fn session_mode_overrules_the_port_guess_and_plain_urls_stay_single() {
        let e = resolved("postgres://u@db.internal:6432/app", None, PoolMode::Session);
        assert_eq!(e.pooler, None);
        assert!(e.direct_url.is_none());
        let e = resolved("postgres://u@db.internal:5432/app", None, PoolMode::Auto);
        assert_eq!(e.pooler, None);
        assert!(e.direct_url.is_none());
        // Look-alikes are not Neon's label.
        let e = resolved("postgres://u@my-poolerx.example/app", None, PoolMode::Auto);
        assert_eq!(e.pooler, None);
    }

    #[test]
    fn a_pooled_direct_url_is_refused() {
        let err = resolve(
            Some("postgres://u@ep-x-1-pooler.neon.tech/db"),
            Some("postgres://u@ep-x-1-pooler.neon.tech/db"),
            PoolMode::Auto,
        )
        .unwrap_err();
        assert_eq!(err.var, "DATABASE_URL_DIRECT");
        assert!(err.expected.contains("pooling off"), "{err}");
    }

    #[test]
    fn labels_never_carry_credentials_or_parameters() {
        let label = endpoint_label(
            "postgres://user:hunter2@ep-x-1.neon.tech:5432/neondb?sslmode=require&password=x",
        );
        assert_eq!(label, "ep-x-1.neon.tech:5432/neondb");
        assert_eq!(
            endpoint_label("postgres://postgres@localhost/db?host=%2Ftmp%2Fpg&port=6432"),
            "/tmp/pg:6432/db"
        );
        assert_eq!(endpoint_label("not a url"), "(unparseable URL)");
    }
}
