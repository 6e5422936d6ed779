//! Lookups by key that arrive together are answered by one query.
//!
//! Every signed-in page reads its session and its owner's quote. Sent one by one, each read is a
//! round trip that wakes a Postgres backend and waits for it: on a small machine the context
//! switches cost more than the query, and on Neon the round trip is the page's latency floor
//! while the pool caps how many can be in flight. Here lookups are batched (see
//! [`crate::batching`] for when a batch leaves) and each batch is answered by one `= ANY($1)`
//! query: idle, a lookup is one query as before; busy, one query answers dozens of pages.
//!
//! A query whose connection turns out to be dead (a compute restart) runs once more on another:
//! these are reads (`db::retry_idempotent`). Connections come from `db::acquire`, which waits for
//! a waking compute but not long for a busy pool.
//!
//! Freshness is unchanged: a lookup joins only a query that has not been sent yet, so every page
//! still reads the database as it was after its request arrived, including the person's own
//! write a moment before. Nothing is cached here.

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use sqlx::{PgPool, Postgres, pool::PoolConnection};

use crate::batching::{BatchError, Batcher};

/// The most lookups one query answers (a bound on the array sent and the rows returned).
const MAX_BATCH: usize = 256;

/// Why a lookup has no answer. Every lookup in a failed batch gets the same one.
pub type LookupError = BatchError;

type Answer<V> = Result<Option<V>, LookupError>;

/// A handle to the dispatcher; cheap to clone. The dispatcher stops when the last handle goes.
pub struct BatchedLookup<V> {
    batcher: Batcher<String, Answer<V>>,
}

impl<V> Clone for BatchedLookup<V> {
    fn clone(&self) -> Self {
        Self {
            batcher: self.batcher.clone(),
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
    /// connection and the keys and returns the `(key, value)` pairs that exist. `query_timeout`
    /// bounds one query (a retry on a fresh connection included).
    pub fn start<F, Fut>(db: PgPool, query_timeout: Duration, fetch: F) -> Self
    where
        F: Fn(PoolConnection<Postgres>, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<(String, V)>, sqlx::Error>> + Send + 'static,
    {
        let fetch = Arc::new(fetch);
        let batcher = Batcher::start(MAX_BATCH, move |keys: Vec<String>| {
            // Postgres text cannot hold NUL, so such a key has no row; sending it would fail the
            // whole batch with an encoding error.
            let sent: Vec<String> = keys.iter().filter(|k| !k.contains('\0')).cloned().collect();
            let (db, fetch) = (db.clone(), fetch.clone());
            let query = async move {
                let (db, fetch, sent) = (&db, &*fetch, &sent);
                crate::db::retry_idempotent(move || async move {
                    fetch(crate::db::acquire(db).await?, sent.clone()).await
                })
                .await
            };
            async move {
                let found = match tokio::time::timeout(query_timeout, query).await {
                    Ok(Ok(rows)) => Ok(rows.into_iter().collect::<HashMap<_, _>>()),
                    Ok(Err(err)) => Err(BatchError::classify(&err, "batched lookup", keys.len())),
                    Err(_) => Err(BatchError::timed_out("batched lookup", keys.len())),
                };
                keys.iter()
                    .map(|key| match &found {
                        Ok(values) => Ok(values.get(key).cloned()),
                        Err(err) => Err(err.clone()),
                    })
                    .collect()
            }
        });
        Self { batcher }
    }

    /// The value stored under `key`, if there is one.
    pub async fn get(&self, key: &str) -> Result<Option<V>, LookupError> {
        self.batcher
            .call(key.to_owned())
            .await
            .unwrap_or_else(|stopped| Err(stopped.into()))
    }
}
