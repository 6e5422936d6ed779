//! The sync algorithm: copy Auth0's users into `users`, full or incremental.
//!
//! Full (auth0.com/docs/manage-users/user-search/view-search-results-by-page): paging reaches
//! only the first 1000 users, so a tenant of up to 1000 is paged (100 a page) and a larger one is
//! exported (`POST /api/v2/jobs/users-exports`, gzipped NDJSON streamed through a decoder thread:
//! memory stays flat whatever the tenant size). After a complete pass, users not seen are marked
//! deleted.
//!
//! Incremental: a keyset walk over `q=updated_at:[W TO *]` sorted `updated_at:1`. After each page
//! the lower bound moves to the newest `updated_at` seen (inclusive, de-duplicated by id), so the
//! 1000-result cap of search never applies to more than one timestamp, and users sharing a
//! timestamp across a page boundary are neither lost nor counted twice. The watermark is saved as
//! pages arrive; the next run starts a little before it because search is eventually consistent.

use std::{
    collections::HashSet,
    io::{self, BufRead, Read},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use sqlx::{PgPool, pool::PoolConnection};
use tokio::time::Instant;

use crate::{
    auth::revocation,
    observability::{self, names},
};

use super::{
    auth0_api::{ApiError, ManagementApi, UsersQuery},
    auth0_user::{Auth0User, Unusable},
    store,
    sync_runs::{self, Progress, SyncMode, SyncRun},
};

/// The fields requested from an export; a JSON export has no other way to say "everything".
pub const EXPORT_FIELDS: &[&str] = &[
    "user_id",
    "email",
    "email_verified",
    "username",
    "phone_number",
    "phone_verified",
    "name",
    "nickname",
    "given_name",
    "family_name",
    "picture",
    "blocked",
    "logins_count",
    "last_login",
    "last_ip",
    "created_at",
    "updated_at",
    "identities",
    "app_metadata",
    "user_metadata",
];

#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Users a page of `GET /api/v2/users` (Auth0's maximum is 100).
    pub per_page: u32,
    /// Users a paged listing or search can reach (Auth0: 1000).
    pub paging_limit: u64,
    /// Profiles written per statement on the export path.
    pub batch_size: usize,
    /// The incremental search starts this far before the watermark (search is eventually consistent).
    pub search_overlap: Duration,
    /// Unseen users confirmed one by one with `GET /api/v2/users/{id}` after a paged full sync
    /// (paging over a changing tenant can skip a user; an export cannot).
    pub confirm_deletions_up_to: usize,
    pub export_poll_max: Duration,
    pub purge_after_days: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        Self {
            per_page: 100,
            paging_limit: 1000,
            batch_size: 1000,
            search_overlap: Duration::from_secs(60),
            confirm_deletions_up_to: 100,
            export_poll_max: Duration::from_secs(30 * 60),
            purge_after_days: 30,
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

    fn count_sql(&self, n: u64) {
        self.sql.fetch_add(n, Ordering::Relaxed);
    }

    /// Executes one attempt of run `run_id` to its end, recording progress and the outcome.
    ///
    /// `Ok(None)`: the run is unknown or already finished (a duplicate delivery). On `Err` the
    /// row is left as it was (running): the caller decides between retrying and failing it.
    pub async fn execute(&self, run_id: i64) -> Result<Option<SyncRun>, SyncError> {
        // A session lock on a connection of its own: two workers never execute runs at once,
        // even the same run delivered twice. Closed (not pooled) afterwards so the lock cannot
        // outlive this attempt on a recycled connection, even when the attempt is cancelled.
        let mut lock_conn = self.db.acquire().await?;
        lock_conn.close_on_drop();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(RUN_LOCK_KEY)
            .fetch_one(&mut *lock_conn)
            .await?;
        self.count_sql(1);
        if !locked {
            return Err(SyncError::Busy);
        }
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

    async fn full(
        &self,
        run_id: i64,
        started_at: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let per_page = self.options.per_page;
        let listing = |page| UsersQuery {
            page,
            per_page,
            // A stable order: creation time does not change while we page.
            sort: Some("created_at:1".to_owned()),
            q: None,
        };
        let mut page = self.api.list_users(&listing(0)).await?;
        progress.total = Some(page.total);
        if page.total > self.options.paging_limit {
            return self.full_by_export(run_id, started_at, progress).await;
        }
        let mut page_no = 0u32;
        loop {
            // The page's length, not what could be stored of it, says whether more follow.
            let received = page.users.len();
            let (users, unusable) = parse_page(std::mem::take(&mut page.users));
            self.write(run_id, &users, unusable, progress).await?;
            progress.pages += 1;
            progress.total = Some(page.total);
            tracing::debug!(
                run = run_id,
                page = page_no,
                users = received,
                total = page.total,
                "full sync page written"
            );
            self.record(run_id, progress).await?;
            if received < per_page as usize {
                break;
            }
            page_no += 1;
            if u64::from(page_no) * u64::from(per_page) >= self.options.paging_limit {
                if page.total <= self.options.paging_limit {
                    break;
                }
                // The tenant grew past what paging reaches while we paged: only an export is whole.
                *progress = Progress::default();
                return self.full_by_export(run_id, started_at, progress).await;
            }
            page = self.api.list_users(&listing(page_no)).await?;
        }
        let listing_consistent = progress.fetched == page.total;
        self.paged_deletions(run_id, started_at, listing_consistent, progress)
            .await?;
        self.after_full(started_at).await
    }

    /// Paging over a tenant that changes underneath can skip a user (a deletion shifts the
    /// offsets), so users missing from a paged listing are confirmed with Auth0 one by one.
    async fn paged_deletions(
        &self,
        run_id: i64,
        started_at: DateTime<Utc>,
        listing_consistent: bool,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let limit = self.options.confirm_deletions_up_to;
        let candidates = store::deletion_candidates(
            &self.db,
            started_at,
            i64::try_from(limit + 1).unwrap_or(i64::MAX),
        )
        .await?;
        self.count_sql(1);
        if candidates.len() > limit {
            if listing_consistent {
                progress.deleted += store::mark_unseen_deleted(&self.db, started_at).await?;
                self.count_sql(1);
            } else {
                tracing::warn!(
                    "many users missing from a listing that changed while paging; deletions left for the next full sync"
                );
            }
            return Ok(());
        }
        let mut gone = Vec::new();
        for user_id in candidates {
            match self.api.get_user(&user_id).await? {
                None => gone.push(user_id),
                Some(profile) => match Auth0User::parse(profile.get()) {
                    Ok(user) => self.write(run_id, &[user], Vec::new(), progress).await?,
                    Err(unusable) => self.write(run_id, &[], vec![unusable], progress).await?,
                },
            }
        }
        progress.deleted += store::mark_deleted(&self.db, &gone).await?;
        self.count_sql(1);
        Ok(())
    }

    async fn full_by_export(
        &self,
        run_id: i64,
        started_at: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        let expected_before = progress.total.unwrap_or_default();
        // Room for users created while the job runs; the count check below catches a short file.
        let limit = expected_before
            .saturating_mul(2)
            .max(expected_before + 10_000);
        let job = self.api.create_users_export(EXPORT_FIELDS, limit).await?;
        tracing::info!(run = run_id, job = %job.id, "export job created");
        let mut lines_done = 0u64;
        let mut downloads = 0;
        loop {
            let location = self.wait_for_export(run_id, &job.id, progress).await?;
            downloads += 1;
            // The signed location is valid for 60 s; if a download breaks, fetch a fresh one and
            // skip the lines already written (the file of one job does not change).
            match self
                .stream_export(run_id, &location, lines_done, progress)
                .await
            {
                Ok(lines) => {
                    lines_done = lines;
                    break;
                }
                Err((lines, err)) if downloads < 3 => {
                    tracing::warn!(run = run_id, error = %err, "export download interrupted; resuming");
                    lines_done = lines;
                }
                Err((_, err)) => return Err(err),
            }
        }
        // Auth0's docs disagree on an export's default `limit`: check it held the whole tenant
        // (allowing for users deleted while it ran) before trusting it for deletions.
        let after = self
            .api
            .list_users(&UsersQuery {
                page: 0,
                per_page: 1,
                sort: None,
                q: None,
            })
            .await?;
        let expected = expected_before.min(after.total);
        if lines_done < expected {
            return Err(SyncError::IncompleteExport {
                exported: lines_done,
                expected,
            });
        }
        progress.deleted += store::mark_unseen_deleted(&self.db, started_at).await?;
        self.count_sql(1);
        self.after_full(started_at).await
    }

    /// Polls the job with growing pauses until it has a download location.
    async fn wait_for_export(
        &self,
        run_id: i64,
        job_id: &str,
        progress: &Progress,
    ) -> Result<String, SyncError> {
        let deadline = Instant::now() + self.options.export_poll_max;
        let mut pause = Duration::from_millis(100);
        loop {
            let job = self.api.get_job(job_id).await?;
            tracing::debug!(
                run = run_id,
                job = %job.id,
                status = %job.status,
                percent = job.percentage_done,
                "export job polled"
            );
            match job.status.as_str() {
                "completed" => {
                    if let Some(location) = job.location {
                        return Ok(location);
                    }
                }
                "failed" => {
                    return Err(SyncError::ExportFailed {
                        job: job_id.to_owned(),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(SyncError::ExportTimeout {
                    job: job_id.to_owned(),
                    minutes: self.options.export_poll_max.as_secs() / 60,
                });
            }
            // Keeps the run's heartbeat fresh during a long export.
            self.record(run_id, progress).await?;
            tokio::time::sleep(pause).await;
            pause = (pause * 3 / 2).min(Duration::from_secs(5));
        }
    }

    /// Downloads and writes the export, skipping its first `skip` lines. Returns the number of
    /// lines read in total, or that number so far with the error.
    async fn stream_export(
        &self,
        run_id: i64,
        location: &str,
        skip: u64,
        progress: &mut Progress,
    ) -> Result<u64, (u64, SyncError)> {
        // Not the location itself: it is a pre-signed URL, i.e. a credential while it lasts.
        tracing::debug!(run = run_id, skip, "export download started");
        let stream = self
            .api
            .download(location)
            .await
            .map_err(|e| (skip, e.into()))?;
        let (chunk_tx, chunk_rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(16);
        let (batch_tx, mut batch_rx) = tokio::sync::mpsc::channel::<Batch>(2);
        let pump = AbortOnDrop(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| io::Error::other(e.to_string()));
                let failed = chunk.is_err();
                if chunk_tx.send(chunk).await.is_err() || failed {
                    break;
                }
            }
        }));
        let batch_size = self.options.batch_size;
        let decoder = tokio::task::spawn_blocking(move || {
            decode_export(
                ChannelReader {
                    rx: chunk_rx,
                    current: Bytes::new(),
                },
                skip,
                batch_size,
                &batch_tx,
            )
        });
        let mut lines = skip;
        while let Some(batch) = batch_rx.recv().await {
            lines = batch.lines_read;
            let users = batch.users.len();
            if let Err(err) = self
                .write(run_id, &batch.users, batch.unusable, progress)
                .await
            {
                return Err((lines - batch.lines_in_batch, err));
            }
            progress.pages += 1;
            tracing::debug!(run = run_id, lines, users, "export batch written");
            if let Err(err) = self.record(run_id, progress).await {
                return Err((lines, err));
            }
        }
        drop(pump);
        match decoder.await {
            Ok(Ok(total)) => Ok(total),
            Ok(Err(err)) => Err((lines, SyncError::Download(err.to_string()))),
            Err(join) => Err((lines, SyncError::Download(join.to_string()))),
        }
    }

    /// Returns `false` when more users share one `updated_at` than search can return: only a full
    /// sync can get past that.
    async fn incremental(
        &self,
        run_id: i64,
        watermark: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<bool, SyncError> {
        let overlap = chrono::Duration::from_std(self.options.search_overlap).unwrap_or_default();
        let mut from = watermark - overlap;
        let mut page_no = 0u32;
        let mut seen: HashSet<String> = HashSet::new();
        let per_page = self.options.per_page;
        loop {
            let page = self
                .api
                .list_users(&UsersQuery {
                    page: page_no,
                    per_page,
                    sort: Some("updated_at:1".to_owned()),
                    q: Some(format!(
                        "updated_at:[{} TO *]",
                        from.to_rfc3339_opts(SecondsFormat::Millis, true)
                    )),
                })
                .await?;
            if progress.pages == 0 {
                progress.total = Some(page.total);
            }
            let received = page.users.len();
            let (users, unusable) = parse_page(page.users);
            let users: Vec<Auth0User> = users
                .into_iter()
                .filter(|u| seen.insert(u.user_id.clone()))
                .collect();
            let unusable: Vec<Unusable> = unusable
                .into_iter()
                .filter(|u| u.user_id.as_ref().is_none_or(|id| seen.insert(id.clone())))
                .collect();
            let newest = users.iter().filter_map(|u| u.updated_at).max();
            self.write(run_id, &users, unusable, progress).await?;
            progress.pages += 1;
            tracing::debug!(
                run = run_id,
                page = page_no,
                from = %from,
                received,
                new = users.len(),
                "incremental sync page written"
            );
            self.record(run_id, progress).await?;
            if let Some(newest) = newest {
                self.advance_watermark(newest).await?;
            }
            if received < per_page as usize {
                return Ok(true);
            }
            match newest {
                // Keyset step: restart the search at the newest timestamp seen (inclusive).
                Some(newest) if newest > from => {
                    from = newest;
                    page_no = 0;
                }
                // The whole page shared `from` (or was already seen): page deeper at this bound.
                _ => {
                    page_no += 1;
                    if u64::from(page_no + 1) * u64::from(per_page) > self.options.paging_limit {
                        tracing::warn!(at = %from, "more users share one updated_at than search returns; running a full sync");
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Writes what a page, a batch of export lines or a single read brought: the profiles in as
    /// few statements as Postgres allows, and the ones that cannot be stored counted as skipped,
    /// logged with their `user_id` and marked as seen. A skipped profile never fails the run.
    async fn write(
        &self,
        run_id: i64,
        users: &[Auth0User],
        unusable: Vec<Unusable>,
        progress: &mut Progress,
    ) -> Result<(), SyncError> {
        progress.fetched += (users.len() + unusable.len()) as u64;
        let mut skipped: Vec<(Option<String>, String)> = unusable
            .into_iter()
            .map(|u| (u.user_id, u.reason))
            .collect();
        let identified: Vec<String> = skipped.iter().filter_map(|(id, _)| id.clone()).collect();
        if !identified.is_empty() {
            store::mark_seen(&self.db, &identified).await?;
            self.count_sql(1);
        }
        if !users.is_empty() {
            let outcome = store::write_profiles(&self.db, users).await?;
            self.count_sql(1);
            progress.upserted += outcome.written.upserted;
            // Counted as batches land, so a long export shows progress and a failed run its work.
            metrics::counter!(names::USERS_SYNCED_TOTAL).increment(outcome.written.upserted);
            skipped.extend(outcome.skipped.into_iter().map(|(id, why)| (Some(id), why)));
            // A user found blocked loses every session now, not at their sessions' expiry.
            let blocked: Vec<&str> = users
                .iter()
                .filter(|u| u.blocked == Some(true))
                .map(|u| u.user_id.as_str())
                .collect();
            if !blocked.is_empty() {
                revocation::end_sessions_of_revoked_users(&self.db, &blocked).await?;
                self.count_sql(1);
            }
        }
        for (user_id, reason) in &skipped {
            tracing::warn!(
                run = run_id,
                // Debug: quoted and escaped, since an id may hold what a log line should not.
                user_id = ?user_id.as_deref().unwrap_or("(none)"),
                %reason,
                "user profile skipped: it cannot be stored"
            );
        }
        progress.skipped += skipped.len() as u64;
        Ok(())
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

struct Batch {
    users: Vec<Auth0User>,
    unusable: Vec<Unusable>,
    lines_read: u64,
    lines_in_batch: u64,
}

/// Gunzips and parses NDJSON on a blocking thread, handing over batches through a bounded
/// channel (the back-pressure that keeps memory flat). Returns the number of lines read.
fn decode_export(
    reader: ChannelReader,
    skip: u64,
    batch_size: usize,
    out: &tokio::sync::mpsc::Sender<Batch>,
) -> io::Result<u64> {
    let mut lines =
        io::BufReader::with_capacity(64 * 1024, flate2::read::MultiGzDecoder::new(reader));
    let mut line = String::new();
    let mut read = 0u64;
    let mut batch = Vec::with_capacity(batch_size);
    let mut unusable = Vec::new();
    let mut batch_lines = 0u64;
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            break;
        }
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        read += 1;
        if read <= skip {
            continue;
        }
        batch_lines += 1;
        match Auth0User::parse(text) {
            Ok(user) => batch.push(user),
            Err(err) => unusable.push(err),
        }
        if batch.len() + unusable.len() >= batch_size {
            let full = Batch {
                users: std::mem::replace(&mut batch, Vec::with_capacity(batch_size)),
                unusable: std::mem::take(&mut unusable),
                lines_read: read,
                lines_in_batch: std::mem::take(&mut batch_lines),
            };
            if out.blocking_send(full).is_err() {
                return Err(io::Error::other("the sync stopped reading the export"));
            }
        }
    }
    if !batch.is_empty() || !unusable.is_empty() {
        let last = Batch {
            users: batch,
            unusable,
            lines_read: read,
            lines_in_batch: batch_lines,
        };
        if out.blocking_send(last).is_err() {
            return Err(io::Error::other("the sync stopped reading the export"));
        }
    }
    Ok(read)
}

/// `Read` over chunks arriving on a channel from the async download.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(err)) => return Err(err),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
