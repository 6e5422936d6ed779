//! `quotebook sync [--full]`: one sync in the foreground with a progress bar.
//!
//! The run is created like any other (so the admin page shows it and one run executes at a
//! time) but executed here rather than through the queue. When a run in flight already covers
//! the request, the command follows that run instead; `--full` during an incremental run under
//! way queues a full run behind it and executes it once that run ends.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{
    job::{self, WorkerOptions},
    sync::Syncer,
    sync_runs::{self, RunStatus, SyncMode, SyncRun, SyncTrigger},
};

/// Runs (or follows) one sync and returns the finished run.
pub async fn sync_in_foreground(
    syncer: &Syncer,
    mode: SyncMode,
    show_progress: bool,
) -> anyhow::Result<SyncRun> {
    let db = syncer.db();
    let (run, created) = {
        let mut conn = db.acquire().await?;
        sync_runs::create_or_in_flight(&mut conn, mode, SyncTrigger::Cli, None).await?
    };
    let bar = progress_bar(show_progress);
    if created {
        bar.set_message(format!("run #{} ({mode})", run.id));
    } else {
        bar.set_message(format!(
            "run #{} ({}, {}) was already in flight; following it",
            run.id, run.mode, run.trigger
        ));
    }

    let watcher = {
        let db = db.clone();
        let bar = bar.clone();
        let id = run.id;
        tokio::spawn(async move {
            loop {
                if let Ok(Some(run)) = sync_runs::get(&db, id).await {
                    show(&bar, &run);
                    if run.status.is_finished() {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    let finished = if created {
        // The foreground retries less patiently than the worker: someone is waiting.
        let options = WorkerOptions {
            max_attempts: 3,
            retry_base: Duration::from_secs(2),
            retry_max: Duration::from_secs(10),
            ..WorkerOptions::default()
        };
        let finished = job::execute_with_retries(syncer, run.id, &options).await;
        watcher.abort();
        finished?
    } else {
        let _ = watcher.await;
        sync_runs::get(db, run.id).await?
    };
    let finished = match finished {
        Some(run) => run,
        None => sync_runs::get(db, run.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("sync run #{} disappeared", run.id))?,
    };
    show(&bar, &finished);
    bar.finish_and_clear();
    Ok(finished)
}

fn progress_bar(visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg} [{bar:30}] {pos}/{len} users ({per_sec}, {elapsed})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn show(bar: &ProgressBar, run: &SyncRun) {
    if let Some(total) = run.total {
        bar.set_length(u64::try_from(total).unwrap_or_default().max(1));
    }
    bar.set_position(u64::try_from(run.fetched).unwrap_or_default());
    if run.status == RunStatus::Queued
        && let Some(error) = &run.error
    {
        bar.set_message(format!("run #{}: {error}", run.id));
    }
}

/// The one-line summary printed after a foreground sync.
pub fn summary(run: &SyncRun) -> String {
    let took = match (run.started_at, run.finished_at) {
        (Some(start), Some(end)) => format!(
            " in {:.1}s",
            (end - start).num_milliseconds() as f64 / 1000.0
        ),
        _ => String::new(),
    };
    let mut line = format!(
        "sync run #{} ({}) {}{took}: fetched {}, upserted {}, marked deleted {}, skipped {}, {} pages",
        run.id,
        run.mode,
        run.status,
        run.fetched,
        run.upserted,
        run.deleted,
        run.skipped,
        run.pages
    );
    if let Some(error) = &run.error {
        line.push_str(&format!("; error: {error}"));
    }
    line
}
