//! Requests that arrive together are answered by one batch: the queue and the dispatcher behind
//! [`crate::batched_lookup`] (page reads) and [`crate::quotes::batched_saves`] (quote saves).
//!
//! Requests queue on a channel; the dispatcher takes whatever has queued (never waiting for
//! more) and hands it to the batch function as one batch. On a database next door the batch in
//! flight is waited for, so everything that arrives meanwhile rides on the next one: on a 2-core
//! machine one query at a time beat two or four (measured with `examples/web_bench`), because
//! each query wakes a Postgres backend and costs context switches. On a database a network hop
//! away (Neon) that wait would add up to a whole round trip to every request, and one batch at a
//! time would cap throughput at batch size / round trip: so once the latest batch has been out
//! for [`OVERLAP_AFTER`], the next one goes without waiting. Nearby, batches finish well within
//! it and still go one at a time; far away, a few overlap and each request waits at most
//! `OVERLAP_AFTER` (plus the timer's millisecond) before its batch leaves. The same rule keeps a
//! stalled query (a dead connection, a database waking up) from holding everything behind it;
//! the pool's own limit bounds how many batches can run.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

/// How long the latest batch may be out before the next one stops waiting for it. Above a
/// nearby query's fraction of a millisecond; a small part of a remote round trip.
pub const OVERLAP_AFTER: Duration = Duration::from_millis(1);

struct Pending<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<Resp>,
}

/// A handle to the dispatcher; cheap to clone. The dispatcher stops when the last handle goes.
pub struct Batcher<Req, Resp> {
    queue: mpsc::UnboundedSender<Pending<Req, Resp>>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<Req, Resp> std::fmt::Debug for Batcher<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").finish_non_exhaustive()
    }
}

/// The dispatcher has stopped (the server is shutting down, or the batch function panicked).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the batch dispatcher has stopped")]
pub struct Stopped;

/// Why a batched request has no answer. Every request in a failed batch gets the same one.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The database could not be reached, or did not answer in time (a 503).
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The query itself failed (a 500; the cause is logged once, where it happened).
    #[error("the query failed: {0}")]
    Failed(String),
}

impl BatchError {
    /// Classifies (and logs, once per batch rather than once per request) a failed query.
    pub fn classify(err: &sqlx::Error, what: &'static str, requests: usize) -> Self {
        if crate::db::is_unavailable(err) {
            tracing::warn!(error = %err, requests, "{what} failed");
            Self::Unavailable(err.to_string())
        } else {
            tracing::error!(error = %err, requests, "{what} failed");
            Self::Failed(err.to_string())
        }
    }

    /// A query that ran past its timeout (logged once per batch).
    pub fn timed_out(what: &'static str, requests: usize) -> Self {
        tracing::warn!(requests, "{what} timed out");
        Self::Unavailable("the query timed out".into())
    }
}

impl From<Stopped> for BatchError {
    fn from(_: Stopped) -> Self {
        Self::Unavailable("the server is shutting down".into())
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the dispatcher on the current Tokio runtime. `run` answers a batch of at most
    /// `max_batch` requests with one answer per request, in the same order.
    pub fn start<F, Fut>(max_batch: usize, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(pending, max_batch.max(1), Arc::new(run)));
        Self { queue }
    }

    /// Queues `request` and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Resp, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Pending { request, reply })
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}

async fn dispatch<Req, Resp, F, Fut>(
    mut pending: mpsc::UnboundedReceiver<Pending<Req, Resp>>,
    max_batch: usize,
    run: Arc<F>,
) where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Resp>> + Send + 'static,
{
    let (in_flight, mut idle) = watch::channel(0usize);
    let mut last_departure: Option<Instant> = None;
    while let Some(first) = pending.recv().await {
        if let Some(departed) = last_departure {
            // Waiting is what lets a batch grow; the deadline is what bounds the wait.
            let _ =
                tokio::time::timeout_at(departed + OVERLAP_AFTER, idle.wait_for(|n| *n == 0)).await;
        }
        let mut batch = vec![first];
        while batch.len() < max_batch
            && let Ok(next) = pending.try_recv()
        {
            batch.push(next);
        }
        last_departure = Some(Instant::now());
        in_flight.send_modify(|n| *n += 1);
        let done = InFlight(in_flight.clone());
        let run = Arc::clone(&run);
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let answers = run(requests).await;
            drop(done);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}

/// One batch in flight; counted down when it ends, however it ends.
struct InFlight(watch::Sender<usize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}
