//! Recording deliveries and queueing their work, in one transaction per delivery.
//!
//! Each change is first recorded in `auth0_stream_events` under its stream and id; a row that is
//! already there means a redelivery, which queues nothing. The apalis job is pushed in the same
//! transaction, so a change is never recorded without its job, nor queued twice. Log events
//! queue a refresh of their user only when none is waiting (`user_refreshes`): ten logins in a
//! row cost one `GET /api/v2/users/{id}`.
//!
//! Runs in the web tier, through a transaction pooler when there is one: every statement is a
//! plain one inside one transaction (`db.rs`).

use std::{collections::HashSet, time::Duration};

use apalis::prelude::TaskBuilder;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};

use super::{
    Stream, event_stream::UserEvent, event_stream::UserEventKind, log_events::UserLogEvent,
};

/// The apalis queue the worker takes these jobs from (named explicitly, as the sync's is).
pub const QUEUE: &str = "quotebook.user_changes";

/// Attempts apalis gives a job whose handler fails (the database away); a refresh that fails
/// at Auth0 is re-queued with a delay instead (see `worker`).
const MAX_ATTEMPTS: usize = 10;

/// A job: one change to apply to `users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum UserChange {
    /// An Event Stream's user event, with the profile it carried.
    Event {
        id: String,
        kind: UserEventKind,
        user_id: String,
        time: Option<DateTime<Utc>>,
        /// `data.object` as JSON text.
        profile: String,
    },
    /// Read the user again with the Management API (a Log Stream named them); `attempt` counts
    /// from 0 and grows each time Auth0 could not answer.
    Refresh { user_id: String, attempt: u32 },
}

async fn push(
    conn: &mut PgConnection,
    changes: Vec<(UserChange, Duration)>,
) -> Result<(), sqlx::Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let mut tasks = Vec::with_capacity(changes.len());
    for (change, delay) in changes {
        let payload = serde_json::to_vec(&change).map_err(|e| sqlx::Error::Encode(e.into()))?;
        let mut task = TaskBuilder::new(payload).max_attempts(MAX_ATTEMPTS);
        if !delay.is_zero() {
            task = task.run_after(delay);
        }
        tasks.push(task.build());
    }
    apalis_postgres::queries::push_tasks(conn, QUEUE, tasks)
        .await
        .map_err(|err| match err {
            apalis_postgres::Error::Database(db) => db,
            other => sqlx::Error::Protocol(other.to_string()),
        })
}

/// Records a delivery's user events and queues those not seen before; returns their ids.
pub async fn record_events(
    db: &PgPool,
    events: &[UserEvent],
) -> Result<HashSet<String>, sqlx::Error> {
    if events.is_empty() {
        return Ok(HashSet::new());
    }
    let mut tx = db.begin().await?;
    let rows = events
        .iter()
        .map(|e| (e.id.as_str(), e.kind.as_str(), e.user_id.as_str(), e.time));
    let recorded: HashSet<String> = record(&mut tx, Stream::Events, rows)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // An id twice in one delivery is one change.
    let mut queued = HashSet::new();
    let jobs = events
        .iter()
        .filter(|e| recorded.contains(&e.id) && queued.insert(e.id.as_str()))
        .map(|e| {
            let change = UserChange::Event {
                id: e.id.clone(),
                kind: e.kind,
                user_id: e.user_id.clone(),
                time: e.time,
                profile: e.profile.clone(),
            };
            (change, Duration::ZERO)
        })
        .collect();
    push(&mut tx, jobs).await?;
    tx.commit().await?;
    Ok(recorded)
}

/// What recording a Log Stream batch did.
#[derive(Debug, Default)]
pub struct LogsRecorded {
    /// Log events not seen before.
    pub log_ids: HashSet<String>,
    /// Refresh jobs queued.
    pub refreshes_queued: usize,
    /// Users of new log events whose refresh was already waiting.
    pub coalesced: usize,
}

/// Records a batch's user log events and queues a refresh for each of their users with none
/// waiting.
pub async fn record_log_events(
    db: &PgPool,
    events: &[UserLogEvent],
) -> Result<LogsRecorded, sqlx::Error> {
    if events.is_empty() {
        return Ok(LogsRecorded::default());
    }
    let mut tx = db.begin().await?;
    let rows = events
        .iter()
        .map(|e| (e.log_id.as_str(), e.type_code, e.user_id.as_str(), e.date));
    let recorded = record(&mut tx, Stream::Logs, rows).await?;
    let users: HashSet<&str> = recorded.iter().map(|(_, user)| user.as_str()).collect();
    let mut users: Vec<&str> = users.into_iter().collect();
    // Rows locked in one order by every delivery: two that name the same users wait for each
    // other instead of deadlocking.
    users.sort_unstable();
    let to_refresh = waiting_refreshes(&mut tx, &users).await?;
    let jobs = to_refresh
        .iter()
        .map(|user_id| (refresh(user_id, 0), Duration::ZERO))
        .collect();
    push(&mut tx, jobs).await?;
    tx.commit().await?;
    Ok(LogsRecorded {
        refreshes_queued: to_refresh.len(),
        coalesced: users.len() - to_refresh.len(),
        log_ids: recorded.into_iter().map(|(id, _)| id).collect(),
    })
}

/// Records changes `(id, type, user_id, occurred_at)` of `stream` in the ledger; returns the
/// `(id, user_id)` of those not recorded before (a redelivery returns nothing).
async fn record<'a>(
    conn: &mut PgConnection,
    stream: Stream,
    rows: impl Iterator<Item = (&'a str, &'a str, &'a str, Option<DateTime<Utc>>)>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    // In id order, so two deliveries that repeat each other's changes insert (and wait for
    // each other's keys) in the same order, never in a cycle.
    let mut rows: Vec<_> = rows.collect();
    rows.sort_unstable_by_key(|(id, ..)| *id);
    let (mut ids, mut types, mut users, mut times) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, ty, user_id, at) in rows {
        ids.push(id);
        types.push(ty);
        users.push(user_id);
        times.push(at);
    }
    sqlx::query_as(
        "INSERT INTO auth0_stream_events (stream, id, type, user_id, occurred_at)
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[])
         ON CONFLICT (stream, id) DO NOTHING
         RETURNING id, user_id",
    )
    .bind(stream.as_str())
    .bind(ids)
    .bind(types)
    .bind(users)
    .bind(times)
    .fetch_all(conn)
    .await
}

/// Marks a refresh of each of `users` as waiting; returns those that had none waiting (and so
/// need a job). A refresh waiting longer than any retry delay ([`STALE_WAIT`]) lost its job (the
/// database failed it to the end), so it counts as none and gets a new one.
async fn waiting_refreshes(
    conn: &mut PgConnection,
    users: &[&str],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO user_refreshes (user_id) SELECT * FROM UNNEST($1::text[])
         ON CONFLICT (user_id) DO UPDATE SET requested_at = now()
             WHERE user_refreshes.requested_at < now() - make_interval(secs => $2)
         RETURNING user_id",
    )
    .bind(users)
    .bind(STALE_WAIT.as_secs_f64())
    .fetch_all(conn)
    .await
}

/// Longer than a refresh ever waits for its job: the longest retry delay
/// (`worker::WorkerOptions::refresh_retry_max`, 10 minutes) with room to spare.
pub const STALE_WAIT: Duration = Duration::from_secs(15 * 60);

fn refresh(user_id: &str, attempt: u32) -> UserChange {
    UserChange::Refresh {
        user_id: user_id.to_owned(),
        attempt,
    }
}

/// Queues the refresh of `user_id` again after `delay` (Auth0 did not answer), unless another
/// is waiting already. `false`: one was.
pub async fn retry_refresh(
    db: &PgPool,
    user_id: &str,
    attempt: u32,
    delay: Duration,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    let queued = !waiting_refreshes(&mut tx, &[user_id]).await?.is_empty();
    if queued {
        push(&mut tx, vec![(refresh(user_id, attempt), delay)]).await?;
    }
    tx.commit().await?;
    Ok(queued)
}

/// The worker takes a refresh off the waiting list as it starts reading, so that a change
/// landing during the read queues another.
pub async fn start_refresh(db: &PgPool, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM user_refreshes WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(())
}

/// Records how the worker finished with a change: the Event Stream event `id`, or every log
/// event of `user_id` received before `read_at` (the refresh read the user after them).
/// Returns when each of those happened at Auth0, for the lag metric.
pub async fn finish(
    db: &PgPool,
    stream: Stream,
    key: FinishKey<'_>,
    outcome: &str,
) -> Result<Vec<Option<DateTime<Utc>>>, sqlx::Error> {
    let query = match key {
        FinishKey::Event(id) => sqlx::query_scalar(
            "UPDATE auth0_stream_events SET processed_at = now(), outcome = $3
             WHERE stream = $1 AND id = $2 AND processed_at IS NULL
             RETURNING occurred_at",
        )
        .bind(stream.as_str())
        .bind(id),
        FinishKey::UserBefore { user_id, read_at } => sqlx::query_scalar(
            "UPDATE auth0_stream_events SET processed_at = now(), outcome = $4
             WHERE stream = $1 AND user_id = $2 AND received_at <= $3 AND processed_at IS NULL
             RETURNING occurred_at",
        )
        .bind(stream.as_str())
        .bind(user_id)
        .bind(read_at),
    };
    query.bind(outcome).fetch_all(db).await
}

/// Which ledger rows a finished job closes.
#[derive(Debug, Clone, Copy)]
pub enum FinishKey<'a> {
    Event(&'a str),
    UserBefore {
        user_id: &'a str,
        read_at: DateTime<Utc>,
    },
}
