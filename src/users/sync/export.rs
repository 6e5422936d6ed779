//! The full sync of a large tenant: an export job (`POST /api/v2/jobs/users-exports`), polled
//! until its file is ready, then the gzipped NDJSON file streamed through a decoder thread
//! ([`super::ndjson`]): memory stays flat whatever the tenant size. Users the file does not hold
//! are marked deleted.
//! auth0.com/docs/manage-users/user-migration/bulk-user-exports

use std::{io, time::Duration};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use tokio::time::Instant;

use super::{
    AbortOnDrop, SyncError, Syncer,
    ndjson::{Batch, ChannelReader, decode_export},
};
use crate::users::{auth0_api::UsersQuery, store, sync_runs::Progress};

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
        let mut lines_done = 0u64;
        let mut downloads = 0;
        loop {
            let location = self.wait_for_export(run_id, &job.id, progress).await?;
            if downloads == 0 {
                *self
                    .export_ready
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) =
                    Some(std::time::Instant::now());
            }
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
}
