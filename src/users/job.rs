//! The sync as an apalis job on Postgres, its triggers and its schedule.
//!
//! - A trigger inserts the `sync_runs` row and pushes the job in one transaction: a run is never
//!   queued without a job. A second trigger joins the run waiting to start or the run under way
//!   that covers it; a full one never settles for an incremental run under way
//!   (`sync_runs::create_or_in_flight`).
//! - The worker executes the run; failed attempts that may succeed later are retried with
//!   exponential backoff (the row shows `queued` and the reason meanwhile). A worker killed mid-run
//!   stops heart-beating; apalis re-enqueues its job and the next worker reruns the run from the
//!   start, which is correct because every write is an idempotent upsert.
//! - The schedule (apalis-cron) only triggers: each tick carries a key (`mode:unix-seconds`) that
//!   is claimed once in `sync_schedule_ticks`, so several instances firing the same tick create
//!   one run, and every full tick is served by a full run, even in the second an incremental
//!   tick fires or while a run is under way.

use std::{future::Future, str::FromStr, sync::Arc, time::Duration};

use apalis::prelude::{BoxDynError, Data, TaskBuilder, WorkerBuilder};
use apalis_cron::CronScheduler;
use apalis_postgres::{Config, PostgresStorage};
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Shared},
};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::{
    sync::{SyncError, Syncer},
    sync_runs::{self, SyncMode, SyncRun, SyncTrigger},
};
use crate::config::SyncSettings;

/// The apalis queue (named explicitly: the default is the Rust type path, which a refactor changes).
pub const QUEUE: &str = "quotebook.sync_users";

/// The job payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncUsers {
    pub run_id: i64,
    pub mode: SyncMode,
    pub trigger: SyncTrigger,
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// apalis heartbeat; a worker silent for `heartbeat * missed_heartbeats` is presumed dead and
    /// its job re-enqueued.
    pub heartbeat: Duration,
    pub missed_heartbeats: usize,
    /// Attempts of one run before it is marked failed.
    pub max_attempts: i32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// Run the cron schedules in this process (any number of instances may).
    pub schedules: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(10),
            missed_heartbeats: 3,
            max_attempts: 5,
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(300),
            schedules: true,
        }
    }
}

/// Creates apalis' schema (`apalis`, with its own migrations table; needs `hstore`).
pub async fn setup(db: &PgPool) -> Result<(), SyncError> {
    PostgresStorage::setup(db)
        .await
        .map_err(|e| SyncError::Queue(e.to_string()))
}

/// Pushes the job for `run` (inside the caller's transaction when given one).
pub async fn enqueue(conn: &mut PgConnection, run: &SyncRun) -> Result<(), SyncError> {
    let job = SyncUsers {
        run_id: run.id,
        mode: run.mode,
        trigger: run.trigger,
    };
    let payload = serde_json::to_vec(&job).map_err(|e| SyncError::Queue(e.to_string()))?;
    // apalis' own attempt limit only matters for jobs whose handler panics or is killed
    // repeatedly; our handler counts attempts on the run itself.
    let task = TaskBuilder::new(payload).max_attempts(25).build();
    apalis_postgres::queries::push_tasks(conn, QUEUE, vec![task])
        .await
        .map_err(|e| SyncError::Queue(e.to_string()))
}

/// Starts a sync (the admin API and the schedule call this): returns the new queued run and
/// `true`, or the run in flight that covers the request and `false` (see
/// [`sync_runs::create_or_in_flight`]).
pub async fn trigger(
    db: &PgPool,
    mode: SyncMode,
    trigger: SyncTrigger,
) -> Result<(SyncRun, bool), SyncError> {
    trigger_with_key(db, mode, trigger, None).await
}

/// The schedule's trigger for the cron tick at `tick` (UNIX seconds): every instance that fires
/// the same tick gets the same run back, even after it has finished.
pub async fn trigger_scheduled(
    db: &PgPool,
    mode: SyncMode,
    tick: u64,
) -> Result<(SyncRun, bool), SyncError> {
    let key = format!("{mode}:{tick}");
    trigger_with_key(db, mode, SyncTrigger::Schedule, Some(&key)).await
}

async fn trigger_with_key(
    db: &PgPool,
    mode: SyncMode,
    trigger: SyncTrigger,
    schedule_key: Option<&str>,
) -> Result<(SyncRun, bool), SyncError> {
    let mut tx = db.begin().await?;
    let (run, created) =
        sync_runs::create_or_in_flight(&mut tx, mode, trigger, schedule_key).await?;
    if created {
        enqueue(&mut tx, &run).await?;
    }
    tx.commit().await?;
    if created {
        tracing::info!(run = run.id, %mode, %trigger, "user sync queued");
    }
    Ok((run, created))
}

/// Executes `run_id` with retries: what the worker does with each job, and what
/// `quotebook sync` does in the foreground. Returns the finished run.
pub async fn execute_with_retries(
    syncer: &Syncer,
    run_id: i64,
    options: &WorkerOptions,
) -> Result<Option<SyncRun>, sqlx::Error> {
    let db = syncer.db();
    let mut delay = options.retry_base;
    loop {
        let err = match syncer.execute(run_id).await {
            Ok(run) => return Ok(run),
            // Another run is executing (a full run queued behind an incremental one): wait for
            // it without spending attempts or growing the pause.
            Err(SyncError::Busy) => {
                sync_runs::note_waiting(db, run_id, "waiting for the sync under way to finish")
                    .await?;
                tokio::time::sleep(options.retry_base + jitter(options.retry_base / 4)).await;
                continue;
            }
            Err(err) => err,
        };
        let attempts = sync_runs::get(db, run_id)
            .await?
            .map_or(i32::MAX, |run| run.attempts);
        if err.is_retryable() && attempts < options.max_attempts {
            let wait = delay + jitter(delay / 4);
            tracing::warn!(run = run_id, attempt = attempts, error = %err, retry_in_s = wait.as_secs(), "user sync attempt failed; will retry");
            sync_runs::requeue(
                db,
                run_id,
                &format!("attempt {attempts} failed: {err}; retrying"),
            )
            .await?;
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(options.retry_max);
        } else {
            tracing::error!(run = run_id, attempt = attempts, error = %err, "user sync failed");
            let failed = sync_runs::fail(db, run_id, &err.to_string()).await?;
            // Counted only when this call ended the run (not when it was already over).
            if let Some(run) = &failed {
                crate::observability::sync_run_finished(run.mode.as_str(), false, None);
            }
            return Ok(failed);
        }
    }
}

fn jitter(max: Duration) -> Duration {
    let ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
}

#[derive(Clone)]
struct JobContext {
    syncer: Syncer,
    options: Arc<WorkerOptions>,
    stop: Shared<BoxFuture<'static, ()>>,
}

async fn handle(job: SyncUsers, ctx: Data<JobContext>) -> Result<(), BoxDynError> {
    tracing::debug!(run = job.run_id, mode = %job.mode, trigger = %job.trigger, "sync job received");
    // The outcome lives on the run row; only a database failure or a shutdown fails the job
    // itself, and apalis hands a failed job with attempts left to the next worker.
    tokio::select! {
        result = execute_with_retries(&ctx.syncer, job.run_id, &ctx.options) => {
            result?;
            Ok(())
        }
        // A sync can outlast a deploy's grace period: stop now and let the next worker resume
        // rather than be killed mid-write (which is safe too, only slower to recover).
        () = ctx.stop.clone() => {
            sync_runs::requeue(ctx.syncer.db(), job.run_id, "interrupted by a worker shutdown; resuming on the next worker").await?;
            Err("worker shutting down".into())
        }
    }
}

/// Runs the sync worker (and, with `options.schedules`, the cron schedules) until `shutdown`.
///
/// Sets up apalis' schema first. The worker is restarted with backoff if its backend dies (a
/// database outage), so a long-running process recovers by itself.
pub async fn run_worker(
    syncer: Syncer,
    settings: &SyncSettings,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let schedules = [
        (SyncMode::Incremental, settings.incremental_schedule.as_str()),
        (SyncMode::Full, settings.full_schedule.as_str()),
    ]
    .into_iter()
    .map(|(mode, expr)| {
        cron::Schedule::from_str(expr)
            .map(|schedule| (mode, schedule))
            .map_err(|e| anyhow::anyhow!("sync schedule {expr:?} ({mode}) is not a cron expression (sec min hour day month weekday): {e}"))
    })
    .collect::<Result<Vec<_>, _>>()?;
    setup(syncer.db()).await?;
    // A process that stopped during a bulk load left the admin search's indexes aside.
    let repairing = syncer.clone();
    tokio::spawn(async move {
        if let Err(err) = repairing.repair_search_indexes().await {
            tracing::warn!(error = %err, "admin search indexes not checked; the next sync run does");
        }
    });

    let shutdown = shutdown.boxed().shared();
    let db = syncer.db().clone();
    let options = Arc::new(options);
    let mut cron_tasks = Vec::new();
    if options.schedules {
        for (mode, schedule) in schedules {
            cron_tasks.push(AbortOnDrop(tokio::spawn(run_schedule(
                db.clone(),
                mode,
                schedule,
            ))));
        }
    }

    let context = JobContext {
        syncer,
        options: options.clone(),
        stop: shutdown.clone(),
    };
    keep_running("sync", shutdown, |name, stopped| {
        let config = Config::default()
            .queue(QUEUE)
            .batch_size(1)
            .heartbeat_interval(options.heartbeat)
            .missed_heartbeats(options.missed_heartbeats);
        let backend = PostgresStorage::<SyncUsers>::new(&db)
            .with_config(config)
            .with_pubsub();
        WorkerBuilder::new(name)
            .backend(backend)
            .data(context.clone())
            .build(handle)
            .run_until(stopped)
    })
    .await;
    drop(cron_tasks);
    tracing::info!("sync worker stopped");
    Ok(())
}

/// Runs the apalis worker that `run_once` builds and runs (named `name`, until `stopped`
/// resolves, at `shutdown`), building another with backoff (1 s, doubling up to a minute)
/// whenever one stops or fails: a database outage ends an apalis worker, and a long-running
/// process must recover by itself. `what` names the worker in the log and in its name, which is
/// unique per process (apalis registers workers by name under an advisory lock).
pub(crate) async fn keep_running<F, Fut, E>(
    what: &'static str,
    shutdown: Shared<BoxFuture<'static, ()>>,
    mut run_once: F,
) where
    F: FnMut(String, BoxFuture<'static, Result<(), std::io::Error>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut restart_delay = Duration::from_secs(1);
    loop {
        let name = format!("quotebook-{what}-{}", crate::users::random_id());
        let stop = shutdown.clone();
        let stopped = async move {
            stop.await;
            Ok(())
        }
        .boxed();
        let result = run_once(name, stopped).await;
        if shutdown.clone().now_or_never().is_some() {
            break;
        }
        match result {
            Ok(()) => tracing::warn!(worker = what, "worker stopped; restarting"),
            Err(err) => tracing::error!(worker = what, error = %err, "worker failed; restarting"),
        }
        tokio::select! {
            _ = tokio::time::sleep(restart_delay) => {}
            _ = shutdown.clone() => break,
        }
        restart_delay = (restart_delay * 2).min(Duration::from_secs(60));
    }
}

/// Spawns [`run_worker`] on the runtime; the handle resolves when it stops.
pub fn spawn_worker(
    syncer: Syncer,
    settings: SyncSettings,
    options: WorkerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move { run_worker(syncer, &settings, options, shutdown).await })
}

async fn run_schedule(db: PgPool, mode: SyncMode, schedule: cron::Schedule) {
    let mut ticks = std::pin::pin!(CronScheduler::new(schedule).into_stream());
    while let Some(tick) = ticks.next().await {
        let tick = match tick {
            Ok(tick) => tick,
            Err(err) => {
                tracing::warn!(%mode, error = %err, "sync schedule error");
                continue;
            }
        };
        let tick = tick.get_timestamp();
        match trigger_scheduled(&db, mode, tick).await {
            Ok((run, true)) => tracing::debug!(run = run.id, tick, "scheduled sync queued"),
            Ok((run, false)) => {
                tracing::debug!(
                    run = run.id,
                    tick,
                    "scheduled sync skipped: a run is in flight or this tick was taken"
                )
            }
            Err(err) => tracing::warn!(%mode, error = %err, "could not queue the scheduled sync"),
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
