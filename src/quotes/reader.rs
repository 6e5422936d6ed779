//! Reads quotes for pages, coalescing the lookups that arrive together into one query.
//!
//! Every signed-in page needs its owner's quote. Sent one by one, each lookup is a round trip
//! that wakes a Postgres backend and waits for it: on a small machine the context switches cost
//! more than the query, and on Neon the round trip is the page's latency floor while the pool
//! caps how many can be in flight. Here lookups queue on a channel; a dispatcher takes whatever
//! has queued (never waiting for more) and answers it with one `= ANY($1)` query, one query at
//! a time. Idle, a lookup is one query as before; busy, one query answers dozens of pages, since
//! everything that arrives while a query runs rides on the next one. (Measured with
//! `examples/web_bench.rs`: one query at a time beat two or four on a 2-core machine.)
//!
//! A query that is slow (a dead connection, a database waking up) must not hold every page
//! behind it: once the one in flight has run for [`STALLED_AFTER`], the next batch goes without
//! waiting, and the pool's own limit is what bounds them.
//!
//! Freshness is unchanged: a lookup joins only a query that has not been sent yet, so every page
//! still reads the database as it was after its request arrived, including the person's own
//! save a moment before.

use std::{collections::HashMap, sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::queries::StoredQuote;
use crate::error::AppError;

/// The most lookups one query answers (a bound on the array sent and the rows returned).
const MAX_BATCH: usize = 256;
/// How long the batch in flight may run before the next one stops waiting for it. Well above a
/// healthy query's few milliseconds (Neon's round trip included).
pub const STALLED_AFTER: Duration = Duration::from_millis(100);

type Answer = Result<Option<StoredQuote>, AppError>;

#[derive(sqlx::FromRow)]
struct OwnedQuote {
    user_id: String,
    #[sqlx(flatten)]
    quote: StoredQuote,
}

struct Lookup {
    user_id: String,
    reply: oneshot::Sender<Answer>,
}

/// A handle to the dispatcher; cheap to clone. The dispatcher stops when the last handle goes.
#[derive(Clone)]
pub struct QuoteReader {
    queue: mpsc::UnboundedSender<Lookup>,
}

impl QuoteReader {
    /// Starts the dispatcher on the current runtime. `query_timeout` bounds one query (a page
    /// waits no longer than its request may take anyway).
    pub fn start(db: PgPool, query_timeout: Duration) -> Self {
        let (queue, lookups) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(db, lookups, query_timeout));
        Self { queue }
    }

    /// The person's quote, if they have one.
    pub async fn find(&self, user_id: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            user_id: user_id.to_owned(),
            reply,
        };
        if self.queue.send(lookup).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> AppError {
    AppError::Unavailable("The server is shutting down. Please try again in a moment.".into())
}

async fn dispatch(
    db: PgPool,
    mut lookups: mpsc::UnboundedReceiver<Lookup>,
    query_timeout: Duration,
) {
    let turn = Arc::new(Semaphore::new(1));
    while let Some(first) = lookups.recv().await {
        // Waiting for the query in flight is what lets a batch grow while the database is busy.
        // If it has stalled, go anyway (without the turn, so the stalled one still frees it).
        let slot = tokio::time::timeout(STALLED_AFTER, turn.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH
            && let Ok(next) = lookups.try_recv()
        {
            batch.push(next);
        }
        let db = db.clone();
        tokio::spawn(async move {
            answer(&db, batch, query_timeout).await;
            drop(slot);
        });
    }
}

async fn answer(db: &PgPool, batch: Vec<Lookup>, query_timeout: Duration) {
    // Postgres text cannot hold NUL, so such an id owns no quote; sending it would fail the
    // whole batch with an encoding error.
    let ids: Vec<&str> = batch
        .iter()
        .map(|lookup| lookup.user_id.as_str())
        .filter(|id| !id.contains('\0'))
        .collect();
    let query = sqlx::query_as::<_, OwnedQuote>(
        "SELECT user_id, message, updated_at FROM user_messages WHERE user_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(db);
    let rows = match tokio::time::timeout(query_timeout, query).await {
        Ok(Ok(rows)) => rows,
        Ok(Err(err)) => return fail(batch, crate::db::is_unavailable(&err), &err),
        Err(_) => return fail(batch, true, &"the query timed out"),
    };
    let quotes: HashMap<String, StoredQuote> = rows
        .into_iter()
        .map(|row| (row.user_id, row.quote))
        .collect();
    for lookup in batch {
        let quote = quotes.get(&lookup.user_id).cloned();
        let _ = lookup.reply.send(Ok(quote));
    }
}

/// Every page in the batch gets the same verdict: 503 when the database is unreachable,
/// otherwise a 500. The cause is logged once here, not once per page.
fn fail(batch: Vec<Lookup>, unavailable: bool, cause: &dyn std::fmt::Display) {
    if unavailable {
        tracing::warn!(error = %cause, lookups = batch.len(), "quote lookup failed");
    } else {
        tracing::error!(error = %cause, lookups = batch.len(), "quote lookup failed");
    }
    for lookup in batch {
        let error = if unavailable {
            AppError::Unavailable(crate::db::UNAVAILABLE_MESSAGE.into())
        } else {
            AppError::internal(anyhow::anyhow!("quote lookup failed: {cause}"))
        };
        let _ = lookup.reply.send(Err(error));
    }
}
