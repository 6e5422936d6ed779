//! Saves that arrive together are written by one statement, committed once.
//!
//! A save on its own is one upsert and one commit, and a commit waits for its WAL flush: with a
//! pool of ten connections at most ten saves share a flush, while pgbench's 64 clients share
//! theirs 64 ways. Batched (see [`crate::batching`] for when a batch leaves), the saves that
//! arrive while the previous batch is being written go out as one `INSERT ... ON CONFLICT` over
//! arrays, in one implicit transaction: one round trip and one flush for all of them.
//!
//! What each save is promised does not change:
//! - it is answered only after the statement that wrote it has committed (`synchronous_commit`
//!   as configured, `on` by default: flushed), so the next page it loads reads it back;
//! - its precondition (create only, replace one version, replace anything) is checked against the
//!   row as it is when the statement writes it, so two tabs cannot both win;
//! - one save cannot fail or hold up the others. A person who saves twice before the first batch
//!   leaves gets the second save in a statement of its own, after the first (Postgres refuses to
//!   touch one row twice in a statement). A person without a `users` row (deleted while signed
//!   in) or whose id cannot be stored (a NUL byte from an odd identity provider) is answered
//!   [`SaveOutcome::NoUser`] without sending anything that could fail the batch. Anything else
//!   that fails a statement (a row deleted under it, a trigger, a deadlock) splits the batch in
//!   halves, retried apart, until the failing save is alone with its error: a few more round
//!   trips for the others, never their failure.

use std::{collections::HashMap, time::Duration};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sqlx::PgPool;

use super::{
    queries::{self, Precondition, SaveOutcome, StoredQuote},
    quote::Quote,
};
use crate::batching::{BatchError, Batcher};

/// The most saves one statement writes (a quote is at most 1000 characters).
const MAX_BATCH: usize = 128;

/// One save: who (from the session), what, and what it may overwrite.
#[derive(Debug, Clone)]
pub struct Save {
    pub user_id: String,
    pub quote: Quote,
    pub precondition: Precondition,
}

type Answer = Result<SaveOutcome, BatchError>;

/// A handle to the batched writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct BatchedSaves {
    batcher: Batcher<Save, Answer>,
}

impl BatchedSaves {
    /// Starts the writer on the current runtime; `statement_timeout` bounds each statement.
    pub fn start(db: PgPool, statement_timeout: Duration) -> Self {
        let batcher = Batcher::start(MAX_BATCH, move |saves| {
            let db = db.clone();
            async move { write(&db, statement_timeout, saves).await }
        });
        Self { batcher }
    }

    /// Creates the quote, or replaces it when `precondition` allows; answers once committed.
    pub async fn save(&self, save: Save) -> Answer {
        self.batcher
            .call(save)
            .await
            .unwrap_or_else(|stopped| Err(stopped.into()))
    }
}

/// Writes a batch: each person's first save in one statement, their second (if any) in the
/// next, and so on. Answers come back in the order of `saves`.
async fn write(db: &PgPool, timeout: Duration, saves: Vec<Save>) -> Vec<Answer> {
    let mut answers: Vec<Option<Answer>> = vec![None; saves.len()];
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, save) in saves.iter().enumerate() {
        // Postgres text cannot hold NUL, so no `users` row has such an id.
        if save.user_id.contains('\0') {
            answers[i] = Some(Ok(SaveOutcome::NoUser));
            continue;
        }
        let round = seen.entry(save.user_id.as_str()).or_insert(0);
        if rounds.len() <= *round {
            rounds.push(Vec::new());
        }
        rounds[*round].push(i);
        *round += 1;
    }
    for round in rounds {
        let batch: Vec<&Save> = round.iter().map(|&i| &saves[i]).collect();
        for (i, answer) in round
            .into_iter()
            .zip(write_isolated(db, timeout, batch).await)
        {
            answers[i] = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|answer| answer.unwrap_or_else(|| Err(BatchError::Failed("no answer".into()))))
        .collect()
}

/// Writes saves of distinct people; a statement that fails is split until the save that fails
/// it is alone with its error.
fn write_isolated<'a>(
    db: &'a PgPool,
    timeout: Duration,
    saves: Vec<&'a Save>,
) -> BoxFuture<'a, Vec<Answer>> {
    Box::pin(async move {
        let failed = match tokio::time::timeout(timeout, write_once(db, &saves)).await {
            Ok(Ok(answers)) => return answers,
            Ok(Err(err)) => err,
            Err(_) => {
                let err = BatchError::timed_out("quote save", saves.len());
                return vec![Err(err); saves.len()];
            }
        };
        if crate::db::is_unavailable(&failed) {
            let err = BatchError::classify(&failed, "quote save", saves.len());
            return vec![Err(err); saves.len()];
        }
        if saves.len() == 1 {
            return vec![lone_failure(&failed)];
        }
        tracing::warn!(error = %failed, saves = saves.len(), "a batch of quote saves failed; writing it in halves");
        let mut first = saves;
        let second = first.split_off(first.len() / 2);
        let (mut a, b) = futures::join!(
            write_isolated(db, timeout, first),
            write_isolated(db, timeout, second)
        );
        a.extend(b);
        a
    })
}

/// The answer for a single save whose statement failed.
fn lone_failure(err: &sqlx::Error) -> Answer {
    // The `users` row went between the statement's look at it and its insert.
    if matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23503")) {
        return Ok(SaveOutcome::NoUser);
    }
    Err(BatchError::classify(err, "quote save", 1))
}

/// A row of the save statement: a save written, or a person without a `users` row.
#[derive(sqlx::FromRow)]
struct Written {
    saved: bool,
    user_id: String,
    message: Option<String>,
    updated_at: Option<DateTime<Utc>>,
}

/// One statement for saves of distinct people, then (only if some lost their precondition) a
/// read of the rows they lost to.
async fn write_once(db: &PgPool, saves: &[&Save]) -> Result<Vec<Answer>, sqlx::Error> {
    let mut ids = Vec::with_capacity(saves.len());
    let mut messages = Vec::with_capacity(saves.len());
    let mut overwrite = Vec::with_capacity(saves.len());
    let mut versions: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(saves.len());
    for save in saves {
        ids.push(save.user_id.as_str());
        messages.push(save.quote.as_str());
        let (any, version) = match save.precondition {
            Precondition::Absent => (false, None),
            Precondition::Version(version) => (false, Some(version)),
            Precondition::Any => (true, None),
        };
        overwrite.push(any);
        versions.push(version);
    }
    // Rows are inserted in user-id order, so concurrent batches lock rows in one order and
    // cannot deadlock. `users` is joined so a missing row is reported, not a foreign-key error
    // that would fail every save in the statement.
    let rows: Vec<Written> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::timestamptz[])
                 AS t(user_id, message, overwrite, version)
         ),
         saved AS (
             INSERT INTO user_messages AS m (user_id, message)
             SELECT input.user_id, input.message FROM input JOIN users USING (user_id)
             ORDER BY input.user_id
             ON CONFLICT (user_id) DO UPDATE
                 SET message = EXCLUDED.message, updated_at = clock_timestamp()
                 WHERE EXISTS (SELECT FROM input i WHERE i.user_id = m.user_id
                               AND (i.overwrite OR m.updated_at = i.version))
             RETURNING m.user_id, m.message, m.updated_at
         )
         SELECT true AS saved, user_id, message, updated_at FROM saved
         UNION ALL
         SELECT false, input.user_id, NULL, NULL FROM input
         WHERE NOT EXISTS (SELECT FROM users u WHERE u.user_id = input.user_id)",
    )
    .bind(&ids)
    .bind(&messages)
    .bind(&overwrite)
    .bind(&versions)
    .fetch_all(db)
    .await?;

    let mut outcomes: HashMap<String, SaveOutcome> = HashMap::with_capacity(rows.len());
    for Written {
        saved,
        user_id,
        message,
        updated_at,
    } in rows
    {
        let outcome = match (saved, message, updated_at) {
            (true, Some(message), Some(updated_at)) => SaveOutcome::Saved(StoredQuote {
                message,
                updated_at,
            }),
            _ => SaveOutcome::NoUser,
        };
        outcomes.insert(user_id, outcome);
    }
    // The rest lost their precondition to a row saved elsewhere: read it (a statement of its
    // own, so it sees rows committed after the write's snapshot).
    let lost: Vec<String> = ids
        .iter()
        .filter(|id| !outcomes.contains_key(**id))
        .map(|id| (*id).to_owned())
        .collect();
    let mut again = Vec::new();
    if !lost.is_empty() {
        let current: HashMap<String, StoredQuote> =
            queries::find_many(crate::db::acquire(db).await?, lost.clone())
                .await?
                .into_iter()
                .collect();
        for user_id in lost {
            match current.get(&user_id) {
                Some(latest) => {
                    outcomes.insert(user_id, SaveOutcome::Conflict(latest.clone()));
                }
                // Deleted between the two statements: nothing to overwrite any more.
                None => again.push(user_id),
            }
        }
    }
    if !again.is_empty() {
        let retry: Vec<Save> = saves
            .iter()
            .filter(|save| again.contains(&save.user_id))
            .map(|save| Save {
                precondition: Precondition::Absent,
                ..(*save).clone()
            })
            .collect();
        let retry_refs: Vec<&Save> = retry.iter().collect();
        for (save, answer) in retry
            .iter()
            .zip(Box::pin(write_once(db, &retry_refs)).await?)
        {
            if let Ok(outcome) = answer {
                outcomes.insert(save.user_id.clone(), outcome);
            }
        }
    }
    Ok(ids
        .iter()
        .map(|id| {
            outcomes
                .get(*id)
                .cloned()
                .ok_or_else(|| BatchError::Failed("the save was not answered".into()))
        })
        .collect())
}
