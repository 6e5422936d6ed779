//! The `sync_runs` table: one row per sync, the history and progress the admin page shows.
//!
//! Runs are created by [`create_or_in_flight`], which never loses a full request: at most one run
//! waits to start (the unique partial index `sync_runs_one_waiting`), every request joins it, and
//! a full request upgrades a waiting incremental one; a run under way answers an incremental
//! request (and a full one when it is full), while a full request meeting an incremental run
//! under way queues a full run behind it. Cron ticks are claimed in `sync_schedule_ticks`, so
//! several instances firing one tick make one run. This holds across any number of instances
//! without a lock; the run lock (`sync.rs`) lets one run execute at a time.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgExecutor, PgPool};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncTrigger {
    Schedule,
    Admin,
    Cli,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
}

macro_rules! text_enum {
    ($ty:ty { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
            pub fn parse(text: &str) -> Option<Self> {
                match text { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
text_enum!(SyncMode { Full => "full", Incremental => "incremental" });
text_enum!(SyncTrigger { Schedule => "schedule", Admin => "admin", Cli => "cli" });
text_enum!(RunStatus { Queued => "queued", Running => "running", Succeeded => "succeeded", Failed => "failed" });

impl RunStatus {
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// One sync run as stored (and as the admin API returns it).
#[derive(Debug, Clone, Serialize)]
pub struct SyncRun {
    pub id: i64,
    pub trigger: SyncTrigger,
    pub mode: SyncMode,
    pub status: RunStatus,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub fetched: i32,
    pub upserted: i32,
    pub deleted: i32,
    /// Profiles received but not stored (no usable `user_id`, or values Postgres refused).
    pub skipped: i32,
    pub pages: i32,
    /// Users Auth0 reported for this run, when known (progress = fetched / total).
    pub total: Option<i32>,
    pub attempts: i32,
    pub error: Option<String>,
}

impl SyncRun {
    /// 0-100 when the total is known.
    pub fn percent(&self) -> Option<u8> {
        let total = self.total.filter(|t| *t > 0)?;
        if self.status == RunStatus::Succeeded {
            return Some(100);
        }
        Some(((i64::from(self.fetched) * 100 / i64::from(total)).clamp(0, 100)) as u8)
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    id: i64,
    trigger: String,
    mode: String,
    status: String,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    fetched: i32,
    upserted: i32,
    deleted: i32,
    skipped: i32,
    pages: i32,
    total: Option<i32>,
    attempts: i32,
    error: Option<String>,
}

impl TryFrom<Row> for SyncRun {
    type Error = sqlx::Error;

    fn try_from(row: Row) -> Result<Self, Self::Error> {
        // The table's CHECK constraints make these total; a failure means a schema drift.
        let bad = |column: &str, value: &str| {
            sqlx::Error::Decode(format!("sync_runs.{column} has unknown value {value:?}").into())
        };
        Ok(Self {
            id: row.id,
            trigger: SyncTrigger::parse(&row.trigger)
                .ok_or_else(|| bad("trigger", &row.trigger))?,
            mode: SyncMode::parse(&row.mode).ok_or_else(|| bad("mode", &row.mode))?,
            status: RunStatus::parse(&row.status).ok_or_else(|| bad("status", &row.status))?,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            fetched: row.fetched,
            upserted: row.upserted,
            deleted: row.deleted,
            skipped: row.skipped,
            pages: row.pages,
            total: row.total,
            attempts: row.attempts,
            error: row.error,
        })
    }
}

const COLUMNS: &str = "id, trigger, mode, status, created_at, started_at, finished_at, fetched, \
                       upserted, deleted, skipped, pages, total, attempts, error";

/// A queued or running row whose heartbeat is older than this belongs to a dead process.
pub const STALE_AFTER_MINUTES: i32 = 15;

fn select(rest: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM sync_runs {rest}"))
}

/// Creates a queued run (`created = true`), or returns the run that serves the request already
/// (`created = false`): the run waiting to start (upgraded to full for a full request), or the
/// run under way when it covers the request. A full request is never answered by an
/// incremental run that has started: it queues a full run behind it.
///
/// `schedule_key` identifies a cron tick (`"full:1764201600"`): the first caller claims it, and
/// every other instance firing the same tick gets the claimer's run back, even after it has
/// finished. Pass a key only inside a transaction, so the claim and the run commit together.
pub async fn create_or_in_flight(
    conn: &mut PgConnection,
    mode: SyncMode,
    trigger: SyncTrigger,
    schedule_key: Option<&str>,
) -> Result<(SyncRun, bool), sqlx::Error> {
    fail_stale(&mut *conn).await?;
    if let Some(key) = schedule_key
        && let Some(run) = claim_tick(&mut *conn, key).await?
    {
        return Ok((run, false));
    }
    let (run, created) = join_or_create(&mut *conn, mode, trigger).await?;
    if let Some(key) = schedule_key {
        sqlx::query("UPDATE sync_schedule_ticks SET run_id = $2 WHERE schedule_key = $1")
            .bind(key)
            .bind(run.id)
            .execute(&mut *conn)
            .await?;
    }
    Ok((run, created))
}

/// Claims a cron tick for this caller (`None`), or returns the run another caller claimed it
/// for. A concurrent claim waits for the claimer's transaction (unique key), so the run is known.
async fn claim_tick(conn: &mut PgConnection, key: &str) -> Result<Option<SyncRun>, sqlx::Error> {
    // A tick is only ever fired again within seconds (clock skew between instances).
    sqlx::query("DELETE FROM sync_schedule_ticks WHERE fired_at < now() - interval '7 days'")
        .execute(&mut *conn)
        .await?;
    let claimed = sqlx::query(
        "INSERT INTO sync_schedule_ticks (schedule_key) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(key)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    let row: Option<Row> = sqlx::query_as(select(
        "WHERE id = (SELECT run_id FROM sync_schedule_ticks WHERE schedule_key = $1)",
    ))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => Ok(Some(row.try_into()?)),
        None => Err(sqlx::Error::Protocol(format!(
            "sync_schedule_ticks: tick {key} was claimed without a run"
        ))),
    }
}

async fn join_or_create(
    conn: &mut PgConnection,
    mode: SyncMode,
    trigger: SyncTrigger,
) -> Result<(SyncRun, bool), sqlx::Error> {
    // Each step can lose a race (the waiting run starts, another trigger inserts first): retry.
    for _ in 0..5 {
        // The row lock holds the waiting run still: a worker starting it waits for this
        // transaction, and then starts it in the mode set here.
        let waiting: Option<Row> = sqlx::query_as(select(
            "WHERE status = 'queued' AND started_at IS NULL FOR UPDATE",
        ))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(waiting) = waiting {
            let waiting = SyncRun::try_from(waiting)?;
            if mode == SyncMode::Full && waiting.mode == SyncMode::Incremental {
                set_mode(&mut *conn, waiting.id, SyncMode::Full).await?;
                tracing::info!(run = waiting.id, %trigger, "queued incremental sync upgraded to full");
                return Ok((
                    SyncRun {
                        mode: SyncMode::Full,
                        ..waiting
                    },
                    false,
                ));
            }
            return Ok((waiting, false));
        }
        let under_way: Option<Row> = sqlx::query_as(select(
            "WHERE status IN ('queued', 'running') AND started_at IS NOT NULL
             ORDER BY id DESC LIMIT 1",
        ))
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(run) = under_way {
            let run = SyncRun::try_from(run)?;
            if mode == SyncMode::Incremental || run.mode == SyncMode::Full {
                return Ok((run, false));
            }
        }
        let inserted: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO sync_runs (trigger, mode, status) VALUES ($1, $2, 'queued')
             ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(trigger.as_str())
        .bind(mode.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = inserted {
            return Ok((row.try_into()?, true));
        }
    }
    Err(sqlx::Error::Protocol(
        "sync_runs: could not create a run nor find the one in flight".into(),
    ))
}

/// Fails queued/running rows nobody has touched for [`STALE_AFTER_MINUTES`] (a killed CLI run, or
/// a queued run no worker ever took), so they stop blocking new runs.
async fn fail_stale(db: impl PgExecutor<'_>) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE sync_runs SET status = 'failed', finished_at = now(),
             error = coalesce(error || '; ', '') || 'abandoned: no progress for ' || $1 || ' minutes'
         WHERE status IN ('queued', 'running')
           AND heartbeat_at < now() - make_interval(mins => $1)",
    )
    .bind(STALE_AFTER_MINUTES)
    .execute(db)
    .await?;
    if result.rows_affected() > 0 {
        tracing::warn!(
            runs = result.rows_affected(),
            "failed abandoned sync runs (no progress)"
        );
    }
    Ok(result.rows_affected())
}

/// The newest run queued or running, if any (a full run may wait behind an incremental one).
pub async fn in_flight(db: impl PgExecutor<'_>) -> Result<Option<SyncRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(select(
        "WHERE status IN ('queued', 'running') ORDER BY id DESC LIMIT 1",
    ))
    .fetch_optional(db)
    .await?;
    row.map(SyncRun::try_from).transpose()
}

pub async fn get(db: &PgPool, id: i64) -> Result<Option<SyncRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(select("WHERE id = $1"))
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.map(SyncRun::try_from).transpose()
}

/// The latest runs, newest first.
pub async fn recent(db: &PgPool, limit: u32) -> Result<Vec<SyncRun>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(select("ORDER BY created_at DESC, id DESC LIMIT $1"))
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(db)
        .await?;
    rows.into_iter().map(SyncRun::try_from).collect()
}

/// Moves a queued (or interrupted running) run to running for a new attempt. Counters restart
/// because the attempt refetches everything; `started_at` keeps the first attempt's time, which
/// is what the deletion pass compares against. `None` when the run is unknown or finished.
pub async fn start_attempt(db: &PgPool, id: i64) -> Result<Option<SyncRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE sync_runs SET status = 'running', started_at = coalesce(started_at, now()),
             attempts = attempts + 1, heartbeat_at = now(),
             fetched = 0, upserted = 0, deleted = 0, skipped = 0, pages = 0
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(db)
    .await?;
    row.map(SyncRun::try_from).transpose()
}

/// Counters as a run goes; also its heartbeat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Profiles received, stored or not.
    pub fetched: u64,
    pub upserted: u64,
    pub deleted: u64,
    /// Profiles received but not stored.
    pub skipped: u64,
    pub pages: u64,
    pub total: Option<u64>,
}

fn int(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

pub async fn record_progress(
    db: impl PgExecutor<'_>,
    id: i64,
    progress: &Progress,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync_runs SET fetched = $2, upserted = $3, deleted = $4, pages = $5,
             total = coalesce($6, total), skipped = $7, heartbeat_at = now()
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .bind(int(progress.fetched))
    .bind(int(progress.upserted))
    .bind(int(progress.deleted))
    .bind(int(progress.pages))
    .bind(progress.total.map(int))
    .bind(int(progress.skipped))
    .execute(db)
    .await?;
    Ok(())
}

/// Ends a run as succeeded with its final counters (and clears the error of a failed attempt).
pub async fn finish(
    db: &PgPool,
    id: i64,
    progress: &Progress,
) -> Result<Option<SyncRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE sync_runs SET status = 'succeeded', finished_at = now(), heartbeat_at = now(),
             error = NULL, fetched = $2, upserted = $3, deleted = $4, pages = $5,
             total = coalesce($6, total), skipped = $7
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(int(progress.fetched))
    .bind(int(progress.upserted))
    .bind(int(progress.deleted))
    .bind(int(progress.pages))
    .bind(progress.total.map(int))
    .bind(int(progress.skipped))
    .fetch_optional(db)
    .await?;
    row.map(SyncRun::try_from).transpose()
}

/// Ends a run as failed, keeping the counters it reached.
pub async fn fail(db: &PgPool, id: i64, error: &str) -> Result<Option<SyncRun>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE sync_runs SET status = 'failed', finished_at = now(), heartbeat_at = now(), error = $2
         WHERE id = $1 AND status IN ('queued', 'running')
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(error)
    .fetch_optional(db)
    .await?;
    row.map(SyncRun::try_from).transpose()
}

/// The run cannot start yet because another is executing: keeps its heartbeat fresh (so it is
/// not taken for abandoned) and says why it waits. Only a queued run is touched.
pub async fn note_waiting(db: &PgPool, id: i64, note: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync_runs SET heartbeat_at = now(), error = $2 WHERE id = $1 AND status = 'queued'",
    )
    .bind(id)
    .bind(note)
    .execute(db)
    .await?;
    Ok(())
}

/// An attempt failed and another will follow: back to queued with the reason on show.
pub async fn requeue(db: &PgPool, id: i64, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sync_runs SET status = 'queued', heartbeat_at = now(), error = $2
         WHERE id = $1 AND status IN ('queued', 'running')",
    )
    .bind(id)
    .bind(error)
    .execute(db)
    .await?;
    Ok(())
}

/// A run changed to the other mode: an incremental without a watermark runs as a full sync, and
/// a full request upgrades a waiting incremental run.
pub async fn set_mode(db: impl PgExecutor<'_>, id: i64, mode: SyncMode) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sync_runs SET mode = $2 WHERE id = $1")
        .bind(id)
        .bind(mode.as_str())
        .execute(db)
        .await?;
    Ok(())
}

/// When the latest successful run finished. `/metrics` reports it from here so every instance
/// shows the same value, including ones that did not run the sync or restarted since.
pub async fn last_success(db: &PgPool) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(finished_at) FROM sync_runs WHERE status = 'succeeded'")
        .fetch_one(db)
        .await
}
