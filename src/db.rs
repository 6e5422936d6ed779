//! Connection pools and migrations.
//!
//! Neon specifics: TLS is required (`sslmode=require` in the URL is honoured by sqlx with rustls);
//! computes wake from zero in hundreds of milliseconds and sometimes seconds, so the first
//! connection is retried with backoff; the pooled endpoint is PgBouncer in transaction mode,
//! so named prepared statements are turned off there.

use std::{str::FromStr, time::Duration};

use sqlx::{
    ConnectOptions, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::config::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "DATABASE_URL: expected a postgres:// URL such as postgres://user:password@host/db?sslmode=require"
    )]
    InvalidUrl,
    #[error("could not connect to Postgres after {attempts} attempts: {source}")]
    Unreachable {
        attempts: u32,
        #[source]
        source: sqlx::Error,
    },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Parses a URL into options, turning off the statement cache behind Neon's PgBouncer pooler.
pub fn options_from_url(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url).map_err(|_| DbError::InvalidUrl)?;
    let pooled = options.get_host().contains("-pooler");
    let options = if pooled {
        options.statement_cache_capacity(0)
    } else {
        options
    };
    Ok(options
        .application_name("quotebook")
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500)))
}

/// Builds a pool and waits (with backoff, up to ~30 s) for the first connection.
pub async fn connect(
    options: PgConnectOptions,
    settings: &DatabaseSettings,
) -> Result<PgPool, DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(0)
        .acquire_timeout(settings.acquire_timeout)
        // Close idle connections before Neon suspends an idle compute (after 5 minutes) kills
        // them, so a quiet app wakes with fresh connections instead of dead ones. Pinging every
        // connection before use (sqlx's default) would double the round trips of every page.
        .idle_timeout(Duration::from_secs(240))
        .max_lifetime(Duration::from_secs(1800))
        .test_before_acquire(false)
        .connect_lazy_with(options);

    let mut delay = Duration::from_millis(200);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match pool.acquire().await {
            Ok(_) => return Ok(pool),
            Err(err) if attempts >= 8 => {
                return Err(DbError::Unreachable {
                    attempts,
                    source: err,
                });
            }
            Err(err) => {
                tracing::warn!(attempt = attempts, error = %err, "database not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
        }
    }
}

/// Applies the app's migrations, then the job queue's (apalis keeps its own schema `apalis` and
/// migrations table, and needs the `hstore` extension). sqlx takes an advisory lock, so
/// concurrent deploys are safe.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::migrations()
        .run(pool)
        .await?;
    Ok(())
}

/// Applies migrations at start-up. sqlx holds a session advisory lock while migrating, which
/// Neon's pooler (PgBouncer in transaction mode) cannot keep, so the direct endpoint is used when
/// one is configured; otherwise the app's own pool.
pub async fn migrate_at_start(pool: &PgPool, settings: &DatabaseSettings) -> Result<(), DbError> {
    let Some(direct) = &settings.direct_url else {
        return migrate(pool).await;
    };
    let direct = connect(options_from_url(direct.expose())?, settings).await?;
    let result = migrate(&direct).await;
    direct.close().await;
    result
}

/// What a person is told when Postgres refuses a value they sent.
/// What a person reads when the database cannot be reached (with a 503).
pub const UNAVAILABLE_MESSAGE: &str =
    "The database is not answering right now. Please try again in a moment.";

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
        sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
    ) || matches!(err, sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("57P")))
}
