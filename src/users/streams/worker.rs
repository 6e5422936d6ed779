//! The worker that applies queued changes ([`super::queue::UserChange`]) to `users`.
//!
//! - An Event Stream event is applied from the profile it carries: no Management API call.
//! - A refresh takes the user off the waiting list, reads `GET /api/v2/users/{id}` with the
//!   sync's client (the same token cache and rate-limit window, so the sync and the refreshes
//!   together keep to Auth0's limits), and applies what it read; a 404 marks the user deleted.
//!   When Auth0 does not answer (5xx, 429 past the client's own waiting, timeouts), the refresh
//!   is queued again with a growing delay, up to [`WorkerOptions::refresh_attempts`] times; then
//!   it is given up, logged and counted, and the scheduled sync reconciles the user.
//! - A database failure fails the job; apalis hands it to the next attempt.
//!
//! Jobs run concurrently ([`WorkerOptions::concurrency`]); two changes of one user still apply
//! one after the other (the row lock in [`super::apply`]). The ledger keeps a week of ids
//! (older redeliveries are still harmless: an old profile never replaces a newer one), and
//! finished jobs go after a week too.

use std::{sync::Arc, time::Duration};

use apalis::{
    layers::WorkerBuilderExt,
    prelude::{BackendExt, BoxDynError, Data, PollSnapshot, PollStrategy, WorkerBuilder},
};
use apalis_postgres::{Config, PostgresStorage, Pubsub};
use chrono::{DateTime, Utc};
use futures::{
    FutureExt, StreamExt,
    future::{BoxFuture, Shared},
};
use serde_json::Value;
use sqlx::PgPool;

use super::{
    Stream,
    apply::{self, Applied, Outcome},
    event_stream::UserEventKind,
    queue::{self, FinishKey, UserChange},
};
use crate::{
    observability,
    users::{
        auth0_api::{ApiError, ManagementApi},
        auth0_user::Auth0User,
        job, storable,
    },
};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Jobs in progress at once in this process. Each holds a database connection for a few
    /// milliseconds (a refresh, also while Auth0 answers), and `quotebook serve` shares its pool
    /// between pages and workers: a few keep up with hundreds of changes a second.
    pub concurrency: usize,
    /// Reads of one user a refresh may take while Auth0 does not answer.
    pub refresh_attempts: u32,
    /// The delay before the second attempt; it doubles for each further one.
    pub refresh_retry_base: Duration,
    pub refresh_retry_max: Duration,
    /// How long the ledger remembers ids (redeliveries inside this window are recognised), and
    /// finished jobs are kept.
    pub ledger_retention: chrono::Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            refresh_attempts: 8,
            refresh_retry_base: Duration::from_secs(5),
            refresh_retry_max: Duration::from_secs(600),
            ledger_retention: chrono::Duration::days(7),
        }
    }
}

#[derive(Clone)]
struct Context {
    db: PgPool,
    api: ManagementApi,
    options: Arc<WorkerOptions>,
}

/// Runs the worker until `shutdown` (restarting it after a database outage), and prunes the
/// ledger once an hour meanwhile.
pub async fn run(
    db: PgPool,
    api: ManagementApi,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    job::setup(&db).await?;
    let shutdown: Shared<BoxFuture<'static, ()>> = shutdown.boxed().shared();
    let context = Context {
        db: db.clone(),
        api,
        options: Arc::new(options),
    };
    let pruning = AbortOnDrop(tokio::spawn(prune_every_hour(
        db.clone(),
        context.options.ledger_retention,
    )));
    job::keep_running("changes", shutdown, |name, stopped| {
        let config = Config::default()
            .queue(queue::QUEUE)
            .batch_size(context.options.concurrency)
            .heartbeat_interval(Duration::from_secs(10))
            .missed_heartbeats(3);
        let backend = PostgresStorage::<UserChange>::new(&db)
            .with_config(config)
            .poll_with_strategy(Wakeups::new(&db));
        WorkerBuilder::new(name)
            .backend(backend)
            .data(context.clone())
            .concurrency(context.options.concurrency)
            .build(handle)
            .run_until(stopped)
    })
    .await;
    drop(pruning);
    tracing::info!("user change worker stopped");
    Ok(())
}

/// Spawns [`run`] on the runtime; the handle resolves when it stops.
pub fn spawn(
    db: PgPool,
    api: ManagementApi,
    options: WorkerOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(run(db, api, options, shutdown))
}

/// When the worker looks for jobs: at each job apalis announces (its `NOTIFY` on insert), and
/// every [`FALLBACK_POLL`] in any case.
///
/// apalis' own stream strategy hands over one notification and does not listen for the next
/// (a `Poll::Ready` registers no waker), so after a notification that arrives during a fetch the
/// worker sleeps until its next heartbeat: ten seconds of lag, measured by
/// `examples/streams_bench.rs`. This one drains every notification until the listener is
/// pending again, so the next one always wakes the worker. The fallback poll covers a job
/// committed just after a fetch's snapshot whose notification that fetch used up, and a
/// listener whose connection died (apalis does not reconnect it).
struct Wakeups {
    notifications: Pubsub,
    fallback: std::pin::Pin<Box<tokio::time::Sleep>>,
}

/// See [`Wakeups`]: bounds a missed wake-up, at one cheap query a second while idle.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

impl Wakeups {
    fn new(db: &PgPool) -> Self {
        Self {
            notifications: Pubsub::new(db.clone(), queue::QUEUE.to_owned()),
            fallback: Box::pin(tokio::time::sleep(FALLBACK_POLL)),
        }
    }
}

impl PollStrategy for Wakeups {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> std::task::Poll<Option<()>> {
        use std::task::Poll;
        let mut woken = false;
        // Until pending: only then is the listener's waker registered for the next one.
        while let Poll::Ready(Some(_)) = self.notifications.poll_next_unpin(cx) {
            woken = true;
        }
        if self.fallback.as_mut().poll(cx).is_ready() {
            woken = true;
            let next = tokio::time::Instant::now() + FALLBACK_POLL;
            self.fallback.as_mut().reset(next);
            // Registers the timer's waker for the next round.
            let _ = self.fallback.as_mut().poll(cx);
        }
        if woken {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

async fn handle(change: UserChange, ctx: Data<Context>) -> Result<(), BoxDynError> {
    let result = match change {
        UserChange::Event {
            id,
            kind,
            user_id,
            time,
            profile,
        } => apply_event(&ctx, &id, kind, &user_id, time, &profile).await,
        UserChange::Refresh { user_id, attempt } => refresh(&ctx, &user_id, attempt).await,
    };
    if let Err(err) = &result {
        tracing::warn!(error = %err, "user change not applied; will retry");
        // apalis takes a failed job again at once: give the database a moment.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(result?)
}

async fn apply_event(
    ctx: &Context,
    id: &str,
    kind: UserEventKind,
    user_id: &str,
    time: Option<DateTime<Utc>>,
    profile: &str,
) -> Result<(), sqlx::Error> {
    let user = read_profile(profile, user_id, time);
    let outcome = match (kind, &user) {
        (UserEventKind::Deleted, _) => {
            // The deletion's own time; a profile without one was deleted when the event says.
            let deleted_at = deleted_at(profile).or(time).unwrap_or_else(Utc::now);
            apply::deletion(&ctx.db, user_id, user.as_ref(), deleted_at).await?
        }
        (_, Some(user)) => {
            let existed_at = user.updated_at.or(time).unwrap_or_else(Utc::now);
            apply::profile(&ctx.db, user, existed_at).await?
        }
        (_, None) => Outcome {
            applied: Applied::Unstorable,
            sessions_ended: 0,
        },
    };
    let lags = queue::finish(
        &ctx.db,
        Stream::Events,
        FinishKey::Event(id),
        outcome.applied.as_str(),
    )
    .await?;
    observability::stream_change_applied(Stream::Events, outcome.applied.as_str(), &lags);
    log_outcome(Stream::Events, kind.as_str(), user_id, &outcome);
    Ok(())
}

/// The event's profile as the app stores profiles. Auth0 sends the whole user object, leaving
/// out attributes never set: a user never blocked has no `blocked`, which means not blocked
/// (auth0.com/docs/manage-users/user-accounts/user-profiles/user-profile-structure). A profile
/// without `updated_at` takes the event's time, so it is still ordered against others.
fn read_profile(text: &str, user_id: &str, time: Option<DateTime<Utc>>) -> Option<Auth0User> {
    let parsed = storable::parse_json(text).ok().map(|(value, _)| value);
    let never_blocked = parsed
        .as_ref()
        .is_some_and(|value| value.get("blocked").is_none());
    let mut user = match parsed.map(Auth0User::from_value) {
        Some(Ok(user)) if user.user_id == user_id => user,
        _ => {
            tracing::warn!(user_id = ?user_id, "a user event's profile cannot be read");
            return None;
        }
    };
    if never_blocked {
        user.blocked = Some(false);
    }
    if user.updated_at.is_none() {
        user.updated_at = time;
    }
    Some(user)
}

/// `deleted_at` of a `user.deleted` event's profile.
fn deleted_at(profile: &str) -> Option<DateTime<Utc>> {
    let value: Value = storable::parse_json(profile).ok()?.0;
    let at = value.get("deleted_at")?.as_str()?;
    DateTime::parse_from_rfc3339(at)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

async fn refresh(ctx: &Context, user_id: &str, attempt: u32) -> Result<(), sqlx::Error> {
    queue::start_refresh(&ctx.db, user_id).await?;
    let read_at = Utc::now();
    let outcome = match ctx.api.get_user(user_id).await {
        Ok(Some(profile)) => match read_profile(profile.get(), user_id, None) {
            Some(user) => apply::profile(&ctx.db, &user, read_at).await?,
            None => Outcome {
                applied: Applied::Unstorable,
                sessions_ended: 0,
            },
        },
        Ok(None) => apply::deletion(&ctx.db, user_id, None, read_at).await?,
        Err(err) => return refresh_failed(ctx, user_id, attempt, &err).await,
    };
    let lags = queue::finish(
        &ctx.db,
        Stream::Logs,
        FinishKey::UserBefore { user_id, read_at },
        outcome.applied.as_str(),
    )
    .await?;
    observability::stream_change_applied(Stream::Logs, outcome.applied.as_str(), &lags);
    observability::user_refreshed(outcome.applied.as_str());
    log_outcome(Stream::Logs, "refresh", user_id, &outcome);
    Ok(())
}

/// Auth0 did not answer the read: queue it again later, or give up on this user until the next
/// sync. Never fails the job (that would retry at once).
async fn refresh_failed(
    ctx: &Context,
    user_id: &str,
    attempt: u32,
    err: &ApiError,
) -> Result<(), sqlx::Error> {
    let options = &ctx.options;
    if err.is_transient() && attempt + 1 < options.refresh_attempts {
        let delay = options
            .refresh_retry_base
            .saturating_mul(1 << attempt.min(16))
            .min(options.refresh_retry_max);
        tracing::warn!(user_id = ?user_id, attempt, error = %err, retry_in_s = delay.as_secs(), "user refresh failed; will retry");
        queue::retry_refresh(&ctx.db, user_id, attempt + 1, delay).await?;
        observability::user_refreshed("retried");
        return Ok(());
    }
    tracing::error!(user_id = ?user_id, attempt, error = %err, "user refresh failed; the next sync will catch up");
    queue::finish(
        &ctx.db,
        Stream::Logs,
        FinishKey::UserBefore {
            user_id,
            read_at: Utc::now(),
        },
        "failed",
    )
    .await?;
    observability::user_refreshed("failed");
    Ok(())
}

fn log_outcome(stream: Stream, what: &str, user_id: &str, outcome: &Outcome) {
    tracing::info!(
        stream = stream.as_str(),
        change = what,
        user = %observability::UserTag::of(user_id).0,
        outcome = outcome.applied.as_str(),
        sessions_ended = outcome.sessions_ended,
        "user change from Auth0 applied"
    );
}

async fn prune_every_hour(db: PgPool, retention: chrono::Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    loop {
        every.tick().await;
        match prune(&db, Utc::now() - retention).await {
            Ok(0) => {}
            Ok(pruned) => tracing::debug!(pruned, "old Auth0 stream ids and jobs forgotten"),
            Err(err) => tracing::warn!(error = %err, "could not prune the Auth0 stream ledger"),
        }
    }
}

/// Forgets ledger rows received before `before`, and the finished jobs of this worker's queue
/// done before it (apalis keeps them, with their payloads), a few thousand a statement so no
/// lock is held for long. Returns how many rows went.
pub async fn prune(db: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    const BATCH: u64 = 5000;
    let mut pruned = 0;
    loop {
        let gone = sqlx::query(
            "DELETE FROM auth0_stream_events WHERE ctid IN (
                 SELECT ctid FROM auth0_stream_events WHERE received_at < $1 LIMIT 5000)",
        )
        .bind(before)
        .execute(db)
        .await?
        .rows_affected();
        pruned += gone;
        if gone < BATCH {
            break;
        }
    }
    loop {
        let gone = sqlx::query(
            "DELETE FROM apalis.jobs WHERE id IN (
                 SELECT id FROM apalis.jobs
                 WHERE job_type = $2 AND done_at < $1
                   AND (status IN ('Done', 'Killed')
                        OR (status = 'Failed' AND attempts >= max_attempts))
                 LIMIT 5000)",
        )
        .bind(before)
        .bind(queue::QUEUE)
        .execute(db)
        .await?
        .rows_affected();
        pruned += gone;
        if gone < BATCH {
            return Ok(pruned);
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
