//! The sync algorithm: copy Auth0's users into `users`, full or incremental.
//!
//! Full (auth0.com/docs/manage-users/user-search/view-search-results-by-page): paging reaches
//! only the first 1000 users, so a tenant of up to 1000 is paged (100 a page, [`paging`]) and a
//! larger one is exported ([`export`]). After a complete pass, users not seen are marked deleted.
//!
//! Incremental ([`incremental`]): a keyset walk over `q=updated_at:[W TO *]` sorted
//! `updated_at:1`.
//!
//! This file holds what the walks share: the run itself (its lock, attempt and outcome), writing
//! what a walk brought, progress and the watermark.

mod export;
mod incremental;
mod ndjson;
mod paging;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use sqlx::{PgPool, pool::PoolConnection};
use tokio::time::Instant;

use crate::{
    auth::revocation,
    observability::{self, names},
};

use super::{
    auth0_api::{ApiError, ManagementApi},
    auth0_user::{Auth0User, Unusable},
    search_indexes,
    store::{self, Destination},
    sync_runs::{self, Progress, SyncMode, SyncRun},
};

pub use export::EXPORT_FIELDS;

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Users a page of `GET /api/v2/users` (Auth0's maximum is 100).
    pub per_page: u32,
    /// Users a paged listing or search can reach (Auth0: 1000).
    pub paging_limit: u64,
    /// Lines of an export written per batch (one `COPY` and one merge).
    pub batch_size: usize,
    /// Batches of an export written at once, each on a connection of its own (at most the
    /// pool's size less two: the run's lock and its progress need one each).
    pub writers: usize,
    /// The incremental search starts this far before the watermark (search is eventually consistent).
    pub search_overlap: Duration,
    /// Unseen users confirmed one by one with `GET /api/v2/users/{id}` after a paged full sync
    /// (paging over a changing tenant can skip a user; an export cannot).
    pub confirm_deletions_up_to: usize,
    pub export_poll_max: Duration,
    pub purge_after_days: u32,
    /// A full sync by export of a tenant at least this large, into a `user_search` holding
    /// fewer than half of its users, sets the admin search's indexes aside while it loads and
    /// builds them after ([`crate::users::search_indexes`]).
    pub bulk_load_min_users: u64,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            per_page: 100,
            paging_limit: 1000,
            batch_size: 5000,
            writers: 2,
            search_overlap: Duration::from_secs(60),
            confirm_deletions_up_to: 100,
            export_poll_max: Duration::from_secs(30 * 60),
            purge_after_days: 30,
            bulk_load_min_users: 10_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("another process is running a sync right now")]
    Busy,
    #[error("the export job {job} failed at Auth0")]
    ExportFailed { job: String },
    #[error("the export job {job} did not complete within {minutes} minutes")]
    ExportTimeout { job: String, minutes: u64 },
    #[error("the export download failed: {0}")]
    Download(String),
    #[error("could not enqueue the sync job: {0}")]
    Queue(String),
    #[error(
        "the export held {exported} users but Auth0 reports {expected}; not trusting it for deletions"
    )]
    IncompleteExport { exported: u64, expected: u64 },
}

impl SyncError {
    /// Worth another attempt later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api(err) => err.is_transient(),
            Self::Db(err) => crate::db::is_unavailable(err),
            Self::Busy
            | Self::ExportFailed { .. }
            | Self::ExportTimeout { .. }
            | Self::Download(_)
            | Self::IncompleteExport { .. } => true,
            Self::Queue(_) => false,
        }
    }
}

/// Everything a sync needs; cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    db: PgPool,
    api: ManagementApi,
    options: Arc<SyncOptions>,
    sql: Arc<AtomicU64>,
    export_ready: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    search_indexes_built: Arc<std::sync::Mutex<Option<Duration>>>,
}

/// Arbitrary constant key for the session advisory lock held while a run executes.
const RUN_LOCK_KEY: i64 = 0x7175_6f74_6573_796e;

impl Syncer {
    pub fn new(db: PgPool, api: ManagementApi, options: SyncOptions) -> Self {
        Self {
            db,
            api,
            options: Arc::new(options),
            sql: Arc::new(AtomicU64::new(0)),
            export_ready: Arc::default(),
            search_indexes_built: Arc::default(),
        }
    }

    pub fn db(&self) -> &PgPool {
        &self.db
    }

    pub fn api(&self) -> &ManagementApi {
        &self.api
    }

    /// SQL statements the sync itself has sent (for the benchmark).
    pub fn sql_statements(&self) -> u64 {
        self.sql.load(Ordering::Relaxed)
    }

    /// When the last export this syncer waited for was ready to download (for the benchmark,
    /// which times the sync apart from Auth0's work to produce the file).
    pub fn export_ready_at(&self) -> Option<std::time::Instant> {
        *self
            .export_ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How long the last build of the admin search's indexes took, if one was made since the
    /// last call (for the benchmark): after a bulk load, or to repair a run that stopped
    /// before building them.
    pub fn take_search_indexes_build_time(&self) -> Option<Duration> {
        self.search_indexes_built
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// [`search_indexes::ensure`], logged and timed. Never fails the run: its users are written
    /// either way, the search only gets slower without the indexes, and the next run (or the
    /// worker's start) tries again.
    async fn ensure_search_indexes(&self, run_id: Option<i64>) {
        match search_indexes::ensure(&self.db).await {
            Ok((built, took)) => {
                self.count_sql(1 + 2 * built.len() as u64);
                if !built.is_empty() {
                    *self
                        .search_indexes_built
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(took);
                    tracing::info!(
                        run = run_id,
                        indexes = ?built,
                        elapsed_ms = took.as_millis() as u64,
                        "admin search indexes built"
                    );
                }
            }
            Err(err) => tracing::error!(
                run = run_id,
                error = %err,
                "admin search indexes not built; the next sync run tries again"
            ),
        }
    }

    /// Builds the admin search's indexes that a stopped run left aside (a process killed
    /// during a bulk load), unless a run is under way: it builds them itself. For the worker's
    /// start, so the search is not left without them until the next run.
    pub async fn repair_search_indexes(&self) -> Result<(), sqlx::Error> {
        if let Some(lock_conn) = self.try_run_lock().await? {
            self.ensure_search_indexes(None).await;
            release(lock_conn).await;
        }
        Ok(())
    }

    /// The run lock: a session lock on a connection of its own, so two workers never execute
    /// runs at once, even the same run delivered twice. The connection is closed (not pooled)
    /// when dropped, so the lock cannot outlive its holder on a recycled connection, even when
    /// the holder is cancelled. `None` when another process holds it.
    async fn try_run_lock(&self) -> Result<Option<PoolConnection<sqlx::Postgres>>, sqlx::Error> {
        let mut lock_conn = self.db.acquire().await?;
        lock_conn.close_on_drop();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RUN_LOCK_KEY)
            .fetch_one(&mut *lock_conn)
            .await?;
        self.count_sql(1);
        Ok(locked.then_some(lock_conn))
    }

    fn count_sql(&self, n: u64) {
        self.sql.fetch_add(n, Ordering::Relaxed);
    }

    /// Executes one attempt of run `run_id` to its end, recording progress and the outcome.
    ///
    /// `Ok(None)`: the run is unknown or already finished (a duplicate delivery). On `Err` the
    /// row is left as it was (running): the caller decides between retrying and failing it.
    pub async fn execute(&self, run_id: i64) -> Result<Option<SyncRun>, SyncError> {
        let Some(lock_conn) = self.try_run_lock().await? else {
            return Err(SyncError::Busy);
        };
        let result = self.execute_locked(run_id).await;
        release(lock_conn).await;
        result
    }

    async fn execute_locked(&self, run_id: i64) -> Result<Option<SyncRun>, SyncError> {
        let Some(run) = sync_runs::start_attempt(&self.db, run_id).await? else {
            return Ok(None);
        };
        self.count_sql(1);
        let started_at = run.started_at.unwrap_or_else(Utc::now);
        tracing::info!(run = run.id, mode = %run.mode, attempt = run.attempts, "user sync started");
        let mut progress = Progress::default();
        let clock = Instant::now();
        match run.mode {
            SyncMode::Full => self.full(run.id, started_at, &mut progress).await?,
            SyncMode::Incremental => match self.watermark().await? {
                Some(watermark) => {
                    // A run that stopped during a bulk load left the search's indexes aside.
                    // (A full run decides first whether it is a bulk load itself.)
                    self.ensure_search_indexes(Some(run.id)).await;
                    let done = self.incremental(run.id, watermark, &mut progress).await?;
                    if !done {
                        sync_runs::set_mode(&self.db, run.id, SyncMode::Full).await?;
                        progress = Progress::default();
                        self.full(run.id, started_at, &mut progress).await?;
                    }
                }
                None => {
                    // No watermark: nothing was ever synced, so "changes since" means everything.
                    sync_runs::set_mode(&self.db, run.id, SyncMode::Full).await?;
                    self.full(run.id, started_at, &mut progress).await?;
                }
            },
        }
        let finished = sync_runs::finish(&self.db, run.id, &progress).await?;
        self.count_sql(1);
        // `None`: the run was ended elsewhere meanwhile (an operator, a duplicate delivery), so
        // this attempt's success is not the run's outcome and is not counted.
        if let Some(done) = &finished {
            observability::sync_run_finished(
                done.mode.as_str(),
                true,
                done.finished_at
                    .map(|at| at.timestamp_millis() as f64 / 1000.0),
            );
        }
        tracing::info!(
            run = run.id,
            mode = %finished.as_ref().map_or(run.mode, |done| done.mode),
            fetched = progress.fetched,
            upserted = progress.upserted,
            deleted = progress.deleted,
            skipped = progress.skipped,
            pages = progress.pages,
            elapsed_ms = clock.elapsed().as_millis() as u64,
            "user sync succeeded"
        );
        Ok(finished)
    }

    /// Writes what a page or a single read brought, and counts it in `progress`.
    async fn write(
        &self,
        run_id: i64,
        users: &[Auth0User],
        unusable: Vec<Unusable>,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let written = write_to(&mut Destination::Statement(&self.db), users, unusable).await?;
        self.account_and_revoke(run_id, written, progress).await
    }

    /// [`Self::account`], then ends the sessions of the users the write found blocked: now, not
    /// at their sessions' expiry, nor only if the run gets to its end.
    async fn account_and_revoke(
        &self,
        run_id: i64,
        mut written: Written,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let blocked = std::mem::take(&mut written.blocked);
        self.account(run_id, written, progress);
        if !blocked.is_empty() {
            let blocked: Vec<&str> = blocked.iter().map(String::as_str).collect();
            revocation::end_sessions_of_revoked_users(&self.db, &blocked).await?;
            self.count_sql(1);
        }
        Ok(())
    }

    /// Counts what a write did in `progress` and the metrics, and logs every profile skipped
    /// with its `user_id`.
    fn account(&self, run_id: i64, written: Written, progress: &mut Progress) {
        self.count_sql(written.statements);
        progress.fetched += written.fetched;
        progress.upserted += written.upserted;
        // Counted as batches land, so a long export shows progress and a failed run its work.
        metrics::counter!(names::USERS_SYNCED_TOTAL).increment(written.upserted);
        for (user_id, reason) in &written.skipped {
            tracing::warn!(
                run = run_id,
                // Debug: quoted and escaped, since an id may hold what a log line should not.
                user_id = ?user_id.as_deref().unwrap_or("(none)"),
                %reason,
                "user profile skipped: it cannot be stored"
            );
        }
        progress.skipped += written.skipped.len() as u64;
    }

    async fn record(&self, run_id: i64, progress: &Progress) -> Result<(), SyncError> {
        sync_runs::record_progress(&self.db, run_id, progress).await?;
        self.count_sql(1);
        Ok(())
    }

    /// After a complete full sync: purge old quotes and move the watermark up to the run's start
    /// (minus the overlap), since everything older was in the listing.
    async fn after_full(&self, started_at: DateTime<Utc>) -> Result<(), SyncError> {
        // Users just marked deleted (and any blocked one a session outlived) lose their sessions.
        revocation::end_sessions_of_all_revoked_users(&self.db).await?;
        self.count_sql(1);
        let purged = store::purge_deleted(&self.db, self.options.purge_after_days).await?;
        if purged > 0 {
            tracing::info!(quotes = purged, "purged quotes of long-deleted users");
        }
        let overlap = chrono::Duration::from_std(self.options.search_overlap).unwrap_or_default();
        self.advance_watermark(started_at - overlap).await?;
        self.count_sql(1);
        Ok(())
    }

    pub async fn watermark(&self) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        self.count_sql(1);
        sqlx::query_scalar("SELECT watermark FROM sync_state WHERE id")
            .fetch_optional(&self.db)
            .await
            .map(Option::flatten)
    }

    async fn advance_watermark(&self, to: DateTime<Utc>) -> Result<(), sqlx::Error> {
        self.count_sql(1);
        sqlx::query(
            "INSERT INTO sync_state (id, watermark, updated_at) VALUES (true, $1, now())
             ON CONFLICT (id) DO UPDATE
             SET watermark = greatest(sync_state.watermark, EXCLUDED.watermark), updated_at = now()",
        )
        .bind(to)
        .execute(&self.db)
        .await?;
        Ok(())
    }
}

/// What writing a page, a batch of export lines or a single read did.
pub(super) struct Written {
    /// Profiles received, stored or not.
    fetched: u64,
    upserted: u64,
    /// Profiles not stored: the `user_id` when known, and why.
    skipped: Vec<(Option<String>, String)>,
    /// The users whose profile says blocked (their row decides whether sessions end).
    blocked: Vec<String>,
    statements: u64,
}

/// Writes `users` to `destination` in as few statements as Postgres allows; the profiles in
/// `unusable`, and those Postgres refuses, are skipped, and their users (when known) marked as
/// seen. A skipped profile never fails the write.
pub(super) async fn write_to(
    destination: &mut Destination<'_>,
    users: &[Auth0User],
    unusable: Vec<Unusable>,
) -> Result<Written, sqlx::Error> {
    let mut written = Written {
        fetched: (users.len() + unusable.len()) as u64,
        upserted: 0,
        skipped: unusable
            .into_iter()
            .map(|u| (u.user_id, u.reason))
            .collect(),
        blocked: users
            .iter()
            .filter(|u| u.blocked == Some(true))
            .map(|u| u.user_id.clone())
            .collect(),
        statements: 0,
    };
    let identified: Vec<String> = written
        .skipped
        .iter()
        .filter_map(|(id, _)| id.clone())
        .collect();
    if !identified.is_empty() {
        destination.mark_seen(&identified).await?;
        written.statements += 1;
    }
    if !users.is_empty() {
        let outcome = store::write_isolating(destination, users).await?;
        written.upserted = outcome.written.upserted;
        written.statements += outcome.statements;
        written
            .skipped
            .extend(outcome.skipped.into_iter().map(|(id, why)| (Some(id), why)));
    }
    Ok(written)
}

async fn release(mut conn: PoolConnection<sqlx::Postgres>) {
    // Best effort: the connection is closed right after, which releases the lock anyway.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RUN_LOCK_KEY)
        .execute(&mut *conn)
        .await;
}

/// A page's profiles: those that can be stored, and those that cannot.
fn parse_page(profiles: Vec<Box<serde_json::value::RawValue>>) -> (Vec<Auth0User>, Vec<Unusable>) {
    let mut users = Vec::with_capacity(profiles.len());
    let mut unusable = Vec::new();
    for profile in profiles {
        match Auth0User::parse(profile.get()) {
            Ok(user) => users.push(user),
            Err(err) => unusable.push(err),
        }
    }
    (users, unusable)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
