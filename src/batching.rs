//! Requests that arrive together are answered by one batch: the queue and the dispatcher behind
//! [`crate::batched_lookup`] (page reads) and [`crate::quotes::batched_saves`] (quote saves).
//!
//! Requests queue on a channel; the dispatcher takes whatever has queued (never waiting for
//! more) and hands it to the batch function as one batch. When the next batch leaves decides
//! both latency and throughput:
//!
//! - **Next to the database** it waits for the batch in flight, so everything that arrives
//!   meanwhile rides on the next one: on a 2-core machine one query at a time beat two or four
//!   (measured with `examples/web_bench`), because each query wakes a Postgres backend and costs
//!   context switches.
//! - **A network hop away** (Neon; every recent batch took longer than [`FAR_AFTER`]) that wait
//!   would add up to a whole round trip to every request, and one batch at a time would cap
//!   throughput at batch size / round trip: up to [`FAR_IN_FLIGHT`] batches are out at once,
//!   each taking what is ready when it leaves.
//! - **Either way** a batch stops waiting once the latest one has been out [`OVERLAP_AFTER`]
//!   (plus the timer's millisecond), which also keeps a stalled query (a dead connection, a
//!   database waking up) from holding everything behind it; the pool's own limit bounds how many
//!   batches run.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::Instant,
};

/// How long the latest batch may be out before the next one stops waiting for it. Above a
/// nearby query's fraction of a millisecond; a small part of a remote round trip.
pub const OVERLAP_AFTER: Duration = Duration::from_millis(1);
/// Batches that never take less than this are a network hop away.
pub const FAR_AFTER: Duration = Duration::from_micros(1500);
/// How many batches may be out at once, a network hop away.
pub const FAR_IN_FLIGHT: usize = 4;

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
    let durations = Arc::new(Mutex::new(RecentDurations::default()));
    while let Some(first) = pending.recv().await {
        // Near the database, a batch waits for the one in flight, so everything arriving
        // meanwhile rides on the next. A round trip away (every recent batch took longer than
        // FAR_AFTER), waiting would add up to a whole round trip: a few go out at once, gathering
        // only what is ready now. Either way the wait ends once the latest batch has been out
        // OVERLAP_AFTER.
        let far = durations.lock().map(|d| d.least()).unwrap_or_default() > FAR_AFTER;
        let free = if far {
            tokio::task::yield_now().await;
            FAR_IN_FLIGHT
        } else {
            1
        };
        if let Some(departed) = last_departure {
            let _ = tokio::time::timeout_at(departed + OVERLAP_AFTER, idle.wait_for(|n| *n < free))
                .await;
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
        let durations = Arc::clone(&durations);
        let departed = Instant::now();
        tokio::spawn(async move {
            let (requests, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.request, p.reply)).unzip();
            let answers = run(requests).await;
            if let Ok(mut durations) = durations.lock() {
                durations.push(departed.elapsed());
            }
            drop(done);
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(answer);
            }
        });
    }
}

/// How long the last few batches took, from leaving to their answers.
#[derive(Default)]
struct RecentDurations {
    ring: [Duration; 16],
    next: usize,
}

impl RecentDurations {
    fn push(&mut self, took: Duration) {
        self.ring[self.next % self.ring.len()] = took;
        self.next += 1;
    }

    /// The shortest: a floor that CPU contention on this machine does not raise, while a
    /// network round trip does. Zero until the ring is full.
    fn least(&self) -> Duration {
        if self.next < self.ring.len() {
            return Duration::ZERO;
        }
        self.ring.iter().copied().min().unwrap_or_default()
    }
}

/// One batch in flight; counted down when it ends, however it ends.
struct InFlight(watch::Sender<usize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_the_shortest_of_the_last_batches_once_there_are_enough() {
        let mut recent = RecentDurations::default();
        for _ in 0..15 {
            recent.push(Duration::from_millis(5));
        }
        assert_eq!(recent.least(), Duration::ZERO, "too few to judge");
        recent.push(Duration::from_millis(7));
        assert_eq!(recent.least(), Duration::from_millis(5));
        // One quick batch among slow ones (the database came nearer, or a slow one was CPU).
        recent.push(Duration::from_micros(300));
        assert_eq!(recent.least(), Duration::from_micros(300));
        for _ in 0..16 {
            recent.push(Duration::from_millis(6));
        }
        assert_eq!(recent.least(), Duration::from_millis(6));
    }
}
