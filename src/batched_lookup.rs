//! Lookups by key that arrive together are answered by one query.
//!
//! Every signed-in page reads its session and its owner's quote. Sent one by one, each read is a
//! round trip that wakes a Postgres backend and waits for it: on a small machine the context
//! switches cost more than the query, and on Neon the round trip is the page's latency floor
//! while the pool caps how many can be in flight. Here lookups queue on a channel; a dispatcher
//! takes whatever has queued (never waiting for more) and answers it with one `= ANY($1)` query,
//! one query at a time. Idle, a lookup is one query as before; busy, one query answers dozens
//! of pages, since everything that arrives while a query runs rides on the next one. (Measured
//! with `examples/web_bench.rs`: one query at a time beat two or four on a 2-core machine.)
//!
//! A query that is slow (a dead connection, a database waking up) must not hold every page
//! behind it: once the one in flight has run for [`STALLED_AFTER`], the next batch goes without
//! waiting, and the pool's own limit is what bounds them. A query whose connection turns out to
//! be dead (a compute restart) runs once more on another: these are reads
//! (`db::retry_idempotent`). Connections come from `db::acquire`, which waits for a waking
//! compute but not long for a busy pool.
//!
//! Freshness is unchanged: a lookup joins only a query that has not been sent yet, so every page
//! still reads the database as it was after its request arrived, including the person's own
//! write a moment before. Nothing is cached here.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use sqlx::{PgPool, Postgres, pool::PoolConnection};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// The most lookups one query answers (a bound on the array sent and the rows returned).
const MAX_BATCH: usize = 256;
/// How long the batch in flight may run before the next one stops waiting for it. Well above a
/// healthy query's few milliseconds (Neon's round trip included).
pub const STALLED_AFTER: Duration = Duration::from_millis(100);

/// Why a lookup has no answer. Every lookup in a failed batch gets the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    /// The database could not be reached, or did not answer in time (a 503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The query itself failed (a 500; the cause is logged once, where it happened).
    #[error("the lookup failed: {0}")]
    Failed(String),
}

struct Lookup<V> {
    key: String,
    reply: oneshot::Sender<Result<Option<V>, LookupError>>,
}

/// A handle to the dispatcher; cheap to clone. The dispatcher stops when the last handle goes.
pub struct BatchedLookup<V> {
    queue: mpsc::UnboundedSender<Lookup<V>>,
}

impl<V> Clone for BatchedLookup<V> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<V> std::fmt::Debug for BatchedLookup<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchedLookup").finish_non_exhaustive()
    }
}

impl<V: Clone + Send + 'static> BatchedLookup<V> {
    /// Starts the dispatcher on the current runtime. `fetch` answers a batch: it gets a
    /// connection and the keys, and returns the `(key, value)` pairs that exist; it must only
    /// read (it may run twice). `query_timeout` bounds one batch, connecting included.
    pub fn start<F, Fut>(db: PgPool, query_timeout: Duration, fetch: F) -> Self
    where
        F: Fn(PoolConnection<Postgres>, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<(String, V)>, sqlx::Error>> + Send + 'static,
    {
        let (queue, lookups) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(db, lookups, query_timeout, Arc::new(fetch)));
        Self { queue }
    }

    /// The value stored under `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<V>, LookupError> {
        let (reply, answer) = oneshot::channel();
        let lookup = Lookup {
            key: key.to_owned(),
            reply,
        };
        if self.queue.send(lookup).is_err() {
            return Err(stopped());
        }
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> LookupError {
    LookupError::Unavailable("the server is shutting down".into())
}

async fn dispatch<V, F, Fut>(
    db: PgPool,
    mut lookups: mpsc::UnboundedReceiver<Lookup<V>>,
    query_timeout: Duration,
    fetch: Arc<F>,
) where
    V: Clone + Send + 'static,
    F: Fn(PoolConnection<Postgres>, Vec<String>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(String, V)>, sqlx::Error>> + Send + 'static,
{
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
        // Postgres text cannot hold NUL, so such a key has no row; sending it would fail the
        // whole batch with an encoding error.
        let keys: Vec<String> = batch
            .iter()
            .map(|lookup| lookup.key.clone())
            .filter(|key| !key.contains('\0'))
            .collect();
        let (db, fetch) = (db.clone(), fetch.clone());
        let query = async move {
            let (db, fetch, keys) = (&db, &*fetch, &keys);
            crate::db::retry_idempotent(move || async move {
                fetch(crate::db::acquire(db).await?, keys.clone()).await
            })
            .await
        };
        tokio::spawn(async move {
            let found = match tokio::time::timeout(query_timeout, query).await {
                Ok(Ok(rows)) => Ok(rows.into_iter().collect::<HashMap<_, _>>()),
                Ok(Err(err)) => Err(failure(&err, batch.len())),
                Err(_) => {
                    tracing::warn!(lookups = batch.len(), "batched lookup timed out");
                    Err(LookupError::Unavailable("the query timed out".into()))
                }
            };
            drop(slot);
            for lookup in batch {
                let answer = match &found {
                    Ok(values) => Ok(values.get(&lookup.key).cloned()),
                    Err(err) => Err(err.clone()),
                };
                let _ = lookup.reply.send(answer);
            }
        });
    }
}

/// Classifies (and logs, once per batch rather than once per page) a failed query.
fn failure(err: &sqlx::Error, lookups: usize) -> LookupError {
    if crate::db::is_unavailable(err) {
        tracing::warn!(error = %err, lookups, "batched lookup failed");
        LookupError::Unavailable(err.to_string())
    } else {
        tracing::error!(error = %err, lookups, "batched lookup failed");
        LookupError::Failed(err.to_string())
    }
}
