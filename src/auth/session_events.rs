//! Ended sessions, announced to every instance at once.
//!
//! Each instance serves the sessions it read in the last second from memory
//! (`session_store`). So that a session ended anywhere (a logout on another instance, a
//! back-channel logout, a blocked or deleted user found by the sync in the worker, "sign out the
//! others") is signed out on the very next request everywhere, Postgres announces every ended
//! session: a trigger on `sessions` notifies `quotebook_sessions_ended` with their ids when the
//! deleting transaction commits (migration `20261202002100_sessions_ended_notify.sql`), and this
//! listener makes the store forget them.
//!
//! `LISTEN` needs a session of its own, so it runs on the direct URL (a transaction pooler such
//! as Neon's would hand its `LISTEN` to unrelated clients): one connection per instance. While it
//! is not listening (starting, reconnecting) the store serves nothing from memory, and a
//! reconnect forgets everything, since announcements may have been missed meanwhile. A
//! connection that dies without a word is bounded by the memory's one second.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use super::session_store::PgSessionStore;

/// The channel the trigger notifies.
pub const CHANNEL: &str = "quotebook_sessions_ended";
/// The payload that means "forget every session" (too many ended to list).
const ALL: &str = "*";
/// Waits between attempts to listen again, doubling up to the last.
const RETRY: [Duration; 4] = [
    Duration::from_millis(100),
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Listens for ended sessions on a connection made with `options` (the direct URL) and makes
/// `store` forget them, for as long as the app runs. Failures are logged and retried.
pub async fn listen(store: PgSessionStore, options: PgConnectOptions) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    let mut failures = 0usize;
    loop {
        let stopped = match PgListener::connect_with(&pool).await {
            Ok(mut listener) => {
                // A lost connection ends this listener (below), so the memory is off from the
                // moment it is lost until a new one listens.
                listener.eager_reconnect(false);
                match listener.listen(CHANNEL).await {
                    Ok(()) => {
                        store.set_announced(true);
                        failures = 0;
                        tracing::debug!("listening for ended sessions");
                        receive(&store, &mut listener).await
                    }
                    Err(err) => err.to_string(),
                }
            }
            Err(err) => err.to_string(),
        };
        store.set_announced(false);
        if failures == 0 {
            tracing::warn!(
                reason = %stopped,
                "not told of ended sessions; serving none from memory until listening again"
            );
        }
        tokio::time::sleep(RETRY[failures.min(RETRY.len() - 1)]).await;
        failures += 1;
    }
}

/// Forgets what is announced until the connection fails; returns why it stopped.
async fn receive(store: &PgSessionStore, listener: &mut PgListener) -> String {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => forget(store, notification.payload()),
            Ok(None) => return "the connection was lost".to_owned(),
            Err(err) => return err.to_string(),
        }
    }
}

fn forget(store: &PgSessionStore, payload: &str) {
    if payload == ALL {
        store.forget_all();
    } else {
        store.forget_ended(payload.split(' ').filter(|id| !id.is_empty()));
    }
}
