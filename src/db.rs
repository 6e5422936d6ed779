//! Connection pools and migrations.
//!
//! Neon specifics: TLS is required (`sslmode=require` in the URL is honoured by sqlx with rustls);
//! a suspended compute wakes when a connection arrives, which takes hundreds of milliseconds and
//! sometimes seconds, so opening a connection has its own allowance and start-up waits for the
//! database (both configurable); the pooled endpoint is PgBouncer in transaction mode, so the
//! statement cache is off there and session-level work goes elsewhere (`config/database.rs`).
//! Connections that died while pooled are found and replaced without costing a page
//! (`db/liveness.rs`).

mod liveness;

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, Connection, PgPool, Postgres,
    pool::PoolConnection,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::time::Instant;

pub use self::liveness::{
    CHECK_IDLE_AFTER, is_connection_lost, note_connection_lost, retry_idempotent,
};
use crate::config::{DatabaseSettings, Secret, detect_pooler};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "DATABASE_URL: expected a postgres:// URL such as postgres://user:password@host/db?sslmode=require"
    )]
    InvalidUrl,
    #[error(
        "Postgres at {endpoint} did not accept a connection within {waited_secs} s (DATABASE_STARTUP_TIMEOUT_SECS): {source}"
    )]
    Unreachable {
        endpoint: String,
        waited_secs: u64,
        #[source]
        source: sqlx::Error,
    },
    #[error("Postgres at {endpoint} refused the connection: {source}")]
    Refused {
        endpoint: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Connection options for `url`. Through a transaction pooler (`pooled`) the statement cache is
/// off, so that every statement goes out unnamed in one Parse/Bind/Execute/Sync which the pooler
/// keeps on one server connection (`vendor/README.md`).
pub fn options(url: &Secret, pooled: bool) -> Result<PgConnectOptions, DbError> {
    let mut parsed = url::Url::parse(url.expose()).map_err(|_| DbError::InvalidUrl)?;
    // Prisma's flag means something to us (`config/database.rs`) and nothing to sqlx, which
    // would warn about it on every connection.
    if parsed.query_pairs().any(|(key, _)| key == "pgbouncer") {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(key, _)| key != "pgbouncer")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let options = PgConnectOptions::from_str(parsed.as_str()).map_err(|_| DbError::InvalidUrl)?;
    let options = if pooled {
        options.statement_cache_capacity(0)
    } else {
        options
    };
    Ok(options
        .application_name("quotebook")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// Connection options for a URL on its own (tools, tests): a URL that names a transaction
/// pooler gets the statement cache off.
pub fn options_from_url(url: &str) -> Result<PgConnectOptions, DbError> {
    let pooled = url::Url::parse(url)
        .ok()
        .and_then(|parsed| detect_pooler(&parsed))
        .is_some();
    options(&Secret::new(url), pooled)
}

/// Builds the pool and waits (up to `DATABASE_STARTUP_TIMEOUT_SECS`) for the database to accept
/// a connection: a suspended compute wakes on the first one, and a database that is starting
/// up refuses for a moment.
pub async fn connect(
    options: PgConnectOptions,
    settings: &DatabaseSettings,
) -> Result<PgPool, DbError> {
    connect_sized(options, settings, settings.max_connections).await
}

async fn connect_sized(
    options: PgConnectOptions,
    settings: &DatabaseSettings,
    max_connections: u32,
) -> Result<PgPool, DbError> {
    wait_until_accepting(&options, settings.startup_timeout).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .min_connections(0)
        // sqlx has one deadline for a connection, whether it waits for a busy pool or opens a
        // new connection; the second may take as long as a waking compute needs, so the deadline
        // covers both. Pages give up on a busy pool sooner (`acquire`), at the slow threshold.
        .acquire_timeout(settings.acquire_timeout + settings.connect_timeout)
        .acquire_slow_threshold(settings.acquire_timeout)
        // Close idle connections before Neon suspends an idle compute (after 5 minutes) kills
        // them, so a quiet app wakes with fresh connections instead of dead ones.
        .idle_timeout(Duration::from_secs(240))
        .max_lifetime(Duration::from_secs(1800))
        // Pinging every connection before use (sqlx's default) would double the round trips of
        // every page; only connections that may have died are checked.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| Box::pin(liveness::check_before_use(conn, meta)))
        .connect_lazy_with(options);
    Ok(pool)
}

/// Opens (and closes) connections until one succeeds or `budget` runs out; a refusal that waiting
/// cannot cure (bad password, no such database, TLS) ends the wait at once.
async fn wait_until_accepting(options: &PgConnectOptions, budget: Duration) -> Result<(), DbError> {
    let started = Instant::now();
    let deadline = started + budget;
    let mut delay = Duration::from_millis(200);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let attempt = tokio::time::timeout(remaining, options.connect()).await;
        let err = match attempt {
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Ok(Err(err)) if !worth_waiting_for(&err) => {
                return Err(DbError::Refused {
                    endpoint: endpoint(options),
                    source: err,
                });
            }
            Ok(Err(err)) => err,
            Err(_) => sqlx::Error::PoolTimedOut,
        };
        let waited = started.elapsed();
        if Instant::now() + delay >= deadline {
            return Err(DbError::Unreachable {
                endpoint: endpoint(options),
                waited_secs: waited.as_secs().max(budget.as_secs()),
                source: err,
            });
        }
        tracing::warn!(
            endpoint = %endpoint(options),
            waited_s = waited.as_secs(),
            error = %err,
            "database not accepting connections yet; retrying"
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Whether a failed connection attempt may succeed later (the server is starting, waking or
/// busy) rather than never (credentials, database name, TLS, configuration).
fn worth_waiting_for(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => false,
        sqlx::Error::Database(db) => !db
            .code()
            .is_some_and(|code| code.starts_with("28") || code == "3D000"),
        _ => true,
    }
}

/// `host:port/database` (or the socket directory) of `options`, for logs and errors.
pub fn endpoint(options: &PgConnectOptions) -> String {
    let host = match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => options.get_host().to_owned(),
    };
    format!(
        "{host}:{}/{}",
        options.get_port(),
        options.get_database().unwrap_or_default()
    )
}

/// A connection for a page's query. While every connection is in use the wait is for another
/// request to finish, and gives up after `DATABASE_ACQUIRE_TIMEOUT_MS` (the pool's slow
/// threshold); otherwise the pool pops an idle connection or opens one, which may take as long
/// as a waking compute needs (`DATABASE_CONNECT_TIMEOUT_SECS` more).
pub async fn acquire(pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
    let busy_for = pool.options().get_acquire_slow_threshold();
    let busy = pool.num_idle() == 0 && pool.size() >= pool.options().get_max_connections();
    let started = Instant::now();
    let result = if busy {
        tokio::time::timeout(busy_for, pool.acquire())
            .await
            .unwrap_or(Err(sqlx::Error::PoolTimedOut))
    } else {
        pool.acquire().await
    };
    if matches!(result, Err(sqlx::Error::PoolTimedOut)) {
        let waited_ms = started.elapsed().as_millis() as u64;
        if busy {
            tracing::warn!(
                waited_ms,
                connections = pool.size(),
                "no database connection: every one is in use"
            );
        } else {
            tracing::warn!(
                waited_ms,
                "no database connection: opening one took too long"
            );
        }
    }
    result
}

/// Applies the app's migrations, then the job queue's (apalis keeps its own schema `apalis` and
/// migrations table, and needs the `hstore` extension). sqlx holds a session advisory lock
/// while migrating, so `pool` must keep sessions (never a transaction pooler): then concurrent
/// deploys are safe, and a process that dies mid-migration releases the lock with its session.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::migrations()
        .run(pool)
        .await?;
    Ok(())
}

/// Applies migrations at start-up: on the session connection (`DATABASE_URL_DIRECT`, or the
/// one derived from a pooled `DATABASE_URL`) when there is one, else through `pool`, which then
/// keeps sessions itself.
pub async fn migrate_at_start(pool: &PgPool, settings: &DatabaseSettings) -> Result<(), DbError> {
    let Some(direct) = &settings.direct_url else {
        return migrate(pool).await;
    };
    // The migrator holds one connection throughout; one is all it needs.
    let direct = connect_sized(options(direct, false)?, settings, 1).await?;
    let result = migrate(&direct).await;
    direct.close().await;
    result
}

/// What a person reads when the database cannot be reached (with a 503).
pub const UNAVAILABLE_MESSAGE: &str =
    "The database is not answering right now. Please try again in a moment.";

/// What a person is told when Postgres refuses a value they sent.
pub const BAD_INPUT_MESSAGE: &str =
    "The request contains text that cannot be stored or searched (for example a NUL character).";

/// True when Postgres refused a value as data (SQLSTATE class 22: a NUL byte in text, a number
/// out of range, ...): the request was at fault, not the server.
pub fn is_bad_input(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("22")))
}

/// True when `err` means the database could not be reached (503), not that a query was wrong.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    matches!(
        err,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_)
    ) || is_connection_lost(err)
}
