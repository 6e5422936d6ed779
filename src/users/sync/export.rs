//! The full sync of a large tenant: an export job (`POST /api/v2/jobs/users-exports`), polled
//! until its file is ready, then the gzipped NDJSON file streamed into `users`. Users the file
//! does not hold are marked deleted.
//! auth0.com/docs/manage-users/user-migration/bulk-user-exports
//!
//! The file is written as it arrives, in a pipeline whose stages overlap: the download (async),
//! gunzip and parsing on a blocking thread ([`super::ndjson`]), and writers that each stream
//! batches into a staging table of their own and merge them ([`crate::users::staging`]). While
//! Postgres merges one batch, the next is parsed and another writer copies a third, so neither
//! side waits for the other. Bounded channels between the stages keep memory flat whatever the
//! tenant size.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::{
    sync::{Mutex, mpsc},
    task::JoinSet,
    time::Instant,
};

use super::{
    AbortOnDrop, SyncError, Syncer, Written,
    ndjson::{Batch, ChannelReader, decode_export},
    write_to,
};
use crate::users::{
    auth0_api::UsersQuery,
    search_indexes,
    staging::{DirectCopy, StagingTable},
    store::{self, Destination},
    sync_runs::Progress,
};

pub use crate::users::fields::EXPORT_FIELDS;

/// Progress is recorded at most this often while batches land (the admin page polls once a
/// second); always when the file is done.
const RECORD_EVERY: Duration = Duration::from_millis(250);

/// Bounds of the pause between two polls of an export job.
const MIN_POLL: Duration = Duration::from_millis(100);
const MAX_POLL: Duration = Duration::from_secs(5);

impl Syncer {
    pub(super) async fn full_by_export(
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
        let location = self.wait_for_export(run_id, &job.id, progress).await?;
        *self
            .export_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(std::time::Instant::now());
        let held = search_indexes::rows_held(&self.db, expected_before).await?;
        self.count_sql(1);
        let bulk_load =
            search_indexes::is_bulk_load(held, expected_before, self.options.bulk_load_min_users);
        let direct_copy = match (bulk_load, held) {
            (false, _) => DirectCopy::Off,
            (true, 0) => DirectCopy::Optimistic,
            (true, _) => DirectCopy::WhenNew,
        };
        let aside = if bulk_load {
            self.set_search_indexes_aside(run_id, expected_before)
                .await?
        } else {
            // A run that stopped during a bulk load left the search's indexes aside.
            self.ensure_search_indexes(Some(run_id)).await;
            false
        };
        let downloaded = self
            .download_export(run_id, &job.id, location, direct_copy, progress)
            .await;
        if aside {
            // Whether or not the download got to its end: searches need them either way. (A
            // failed run that is tried again may set them aside once more.)
            self.ensure_search_indexes(Some(run_id)).await;
        }
        let lines_done = downloaded?;
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
        // An anti-join against what this run saw: every row the file held was stamped
        // `synced_at` by its merge, so the unseen are the rows older than the run and unstamped.
        let clock = Instant::now();
        let deleted = store::mark_unseen_deleted(&self.db, started_at).await?;
        self.count_sql(1);
        progress.deleted += deleted;
        tracing::info!(
            run = run_id,
            deleted,
            elapsed_ms = clock.elapsed().as_millis() as u64,
            "users the export did not hold marked deleted"
        );
        self.after_full(started_at).await
    }

    /// Sets the admin search's indexes aside for a bulk load; returns whether it did.
    async fn set_search_indexes_aside(
        &self,
        run_id: i64,
        expected_users: u64,
    ) -> Result<bool, SyncError> {
        let aside = search_indexes::set_aside(&self.db).await?;
        self.count_sql(3);
        if aside {
            tracing::info!(
                run = run_id,
                expected_users,
                "admin search indexes set aside for a bulk load"
            );
        } else {
            tracing::info!(
                run = run_id,
                "admin search busy: loading with its indexes in place"
            );
        }
        Ok(aside)
    }

    /// Downloads the export from `location` and writes it; if a download breaks, fetches a
    /// fresh location (the signed one is valid for 60 s) and skips the lines already written
    /// (the file of one job does not change), up to three downloads. Returns the lines read.
    /// `direct_copy`: how batches of new users are written ([`DirectCopy`]).
    async fn download_export(
        &self,
        run_id: i64,
        job_id: &str,
        mut location: String,
        direct_copy: DirectCopy,
        progress: &mut Progress,
    ) -> Result<u64, SyncError> {
        let mut lines_done = 0u64;
        let mut downloads = 0;
        loop {
            downloads += 1;
            match self
                .stream_export(run_id, &location, lines_done, direct_copy, progress)
                .await
            {
                Ok(lines) => return Ok(lines),
                Err((lines, err)) if downloads < 3 => {
                    tracing::warn!(run = run_id, error = %err, "export download interrupted; resuming");
                    lines_done = lines;
                }
                Err((_, err)) => return Err(err),
            }
            location = self.wait_for_export(run_id, job_id, progress).await?;
        }
    }

    /// Polls the job until it has a download location: after the time Auth0 says is left when
    /// it says so, else with growing pauses.
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
            let left = job
                .time_left_seconds
                .filter(|s| s.is_finite() && *s > 0.0)
                .map(Duration::from_secs_f64);
            tokio::time::sleep(left.unwrap_or(pause).clamp(MIN_POLL, MAX_POLL)).await;
            pause = (pause * 3 / 2).min(MAX_POLL);
        }
    }

    /// Downloads and writes the export, skipping its first `skip` lines. Returns the number of
    /// lines read in total; on an error, the number of lines read and written up to a point
    /// where every earlier line is written too (where a resumed download starts), with the error.
    async fn stream_export(
        &self,
        run_id: i64,
        location: &str,
        skip: u64,
        direct_copy: DirectCopy,
        progress: &mut Progress,
    ) -> Result<u64, (u64, SyncError)> {
        // Not the location itself: it is a pre-signed URL, i.e. a credential while it lasts.
        tracing::debug!(run = run_id, skip, "export download started");
        let stream = self
            .api
            .download(location)
            .await
            .map_err(|e| (skip, e.into()))?;
        let (chunk_tx, chunk_rx) = mpsc::channel::<io::Result<Bytes>>(16);
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
        // Each writer holds a connection while the file streams in; the run's lock holds
        // another, and one stays free for its progress. A pool too small to spare one for a
        // writer gets a single writer that takes a connection per statement.
        let spare = usize::try_from(self.db.options().get_max_connections())
            .unwrap_or(usize::MAX)
            .saturating_sub(2);
        let staged = spare > 0;
        let writers = self.options.writers.clamp(1, spare.max(1));
        // The decoder is several times faster than the writers: one batch ready is enough to
        // keep them busy, and memory holds little more than the batches being written.
        let (batch_tx, batch_rx) = mpsc::channel::<Batch>(1);
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
        let (done_tx, mut done_rx) = mpsc::channel(writers);
        let mut tasks = JoinSet::new();
        let batches = Arc::new(Mutex::new(batch_rx));
        for _ in 0..writers {
            tasks.spawn(write_batches(
                self.db.clone(),
                staged,
                direct_copy,
                batches.clone(),
                done_tx.clone(),
            ));
        }
        drop((batches, done_tx));

        let mut written = WrittenLines::after(skip);
        let mut recorded = Instant::now();
        // Ends when every writer has ended: the decoder is done, or a writer failed.
        while let Some(done) = done_rx.recv().await {
            let (batch, outcome) = match done {
                Ok(done) => done,
                // Dropping the writers rolls back what they have under way.
                Err(err) => return Err((written.lines, err)),
            };
            if let Err(err) = self.account_and_revoke(run_id, outcome, progress).await {
                return Err((written.lines, err));
            }
            progress.pages += 1;
            written.add(batch.seq, batch.lines_read);
            tracing::debug!(
                run = run_id,
                lines = batch.lines_read,
                "export batch written"
            );
            if recorded.elapsed() >= RECORD_EVERY {
                recorded = Instant::now();
                if let Err(err) = self.record(run_id, progress).await {
                    return Err((written.lines, err));
                }
            }
        }
        drop(pump);
        if let Err(err) = self.record(run_id, progress).await {
            return Err((written.lines, err));
        }
        match decoder.await {
            Ok(Ok(total)) => Ok(total),
            Ok(Err(err)) => Err((written.lines, SyncError::Download(err.to_string()))),
            Err(join) => Err((written.lines, SyncError::Download(join.to_string()))),
        }
    }
}

/// What a writer hands back for each batch: where the batch ends in the file, and what writing
/// it did.
type Done = Result<(BatchEnd, Written), SyncError>;

/// Where a batch ends in the file.
struct BatchEnd {
    seq: u64,
    lines_read: u64,
}

/// One writer: takes batches until there are no more (or one fails) and writes each through
/// its own staging table (`staged`), else one statement at a time on the pool.
async fn write_batches(
    db: sqlx::PgPool,
    staged: bool,
    direct_copy: DirectCopy,
    batches: Arc<Mutex<mpsc::Receiver<Batch>>>,
    done: mpsc::Sender<Done>,
) {
    let mut staging = None;
    if staged {
        match StagingTable::open(&db).await {
            Ok(mut table) => {
                table.copy_new_users_directly(direct_copy);
                staging = Some(table);
            }
            Err(err) => {
                let _ = done.send(Err(err.into())).await;
                return;
            }
        }
    }
    loop {
        let next = batches.lock().await.recv().await;
        let Some(batch) = next else {
            if let Some(table) = &staging {
                tracing::debug!(
                    batches_copied = table.batches_copied(),
                    "export writer done"
                );
            }
            return;
        };
        let end = BatchEnd {
            seq: batch.seq,
            lines_read: batch.lines_read,
        };
        let mut destination = match staging.as_mut() {
            Some(table) => Destination::Staging(table),
            None => Destination::Statement(&db),
        };
        let result = write_to(&mut destination, &batch.users, batch.unusable).await;
        let failed = result.is_err();
        if done
            .send(
                result
                    .map(|outcome| (end, outcome))
                    .map_err(SyncError::from),
            )
            .await
            .is_err()
            || failed
        {
            return;
        }
    }
}

/// The lines of the file known written: batches finish out of order when several writers run,
/// so this is the end of the last batch before which every batch is written.
struct WrittenLines {
    lines: u64,
    next: u64,
    finished: BTreeMap<u64, u64>,
}

impl WrittenLines {
    fn after(skip: u64) -> Self {
        Self {
            lines: skip,
            next: 0,
            finished: BTreeMap::new(),
        }
    }

    fn add(&mut self, seq: u64, lines_read: u64) {
        self.finished.insert(seq, lines_read);
        while let Some(lines) = self.finished.remove(&self.next) {
            self.lines = lines;
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::WrittenLines;

    #[test]
    fn written_lines_stop_at_the_first_gap() {
        let mut written = WrittenLines::after(10);
        written.add(1, 30);
        assert_eq!(written.lines, 10, "batch 0 is still being written");
        written.add(0, 20);
        assert_eq!(written.lines, 30);
        written.add(3, 50);
        assert_eq!(written.lines, 30);
        written.add(2, 40);
        assert_eq!(written.lines, 50);
    }
}
