//! Pooled connections that died (a compute restarted, a pooler or proxy in between went away)
//! are found and replaced before they cost a page.
//!
//! A dead connection is only discovered by using it, and pinging every connection before every
//! use would double the round trips of every page. So a connection is checked (pinged) before
//! use only when it may have died:
//!
//! - it sat idle for more than [`CHECK_IDLE_AFTER`] (a busy app never pings; a quiet one is where
//!   a compute restart goes unnoticed), or
//! - it went idle before a lost connection was last seen anywhere in the process: one dead
//!   connection usually means its neighbours died with it.
//!
//! What is found dead in use costs that one statement: idempotent reads run once more
//! ([`retry_idempotent`]), on a connection that has then been checked or newly opened.

use std::{
    future::Future,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{Connection, PgConnection, pool::PoolConnectionMetadata};

/// Connections idle longer than this are pinged before use.
pub const CHECK_IDLE_AFTER: Duration = Duration::from_secs(5);
/// A ping that has not answered by then is a connection that will not (the peer vanished
/// without closing it).
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// When a lost connection was last seen, in milliseconds since [`epoch`] (0: never). Shared by
/// every pool of the process: a needless ping is cheap, a missed dead connection is not.
static LOST_AT_MS: AtomicU64 = AtomicU64::new(0);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Records that a connection was found dead: every connection idle since then is checked before
/// its next use.
pub fn note_connection_lost() {
    // +1 keeps 0 meaning "never", even in the process's first millisecond.
    LOST_AT_MS.store(now_ms() + 1, Ordering::Relaxed);
}

/// Whether a connection idle for `idle_for` may have died without anyone noticing.
fn suspect(idle_for: Duration) -> bool {
    if idle_for >= CHECK_IDLE_AFTER {
        return true;
    }
    let lost_at = LOST_AT_MS.load(Ordering::Relaxed);
    let idle_since = now_ms().saturating_sub(u64::try_from(idle_for.as_millis()).unwrap_or(0));
    lost_at != 0 && idle_since <= lost_at
}

/// sqlx's `before_acquire`: `Ok(false)` closes the connection and the pool takes (or opens)
/// another.
pub(super) async fn check_before_use(
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> Result<bool, sqlx::Error> {
    if !suspect(meta.idle_for) {
        return Ok(true);
    }
    match tokio::time::timeout(PING_TIMEOUT, conn.ping()).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(err)) => {
            tracing::info!(idle_s = meta.idle_for.as_secs(), error = %err, "replacing a dead pooled connection");
            note_connection_lost();
            Ok(false)
        }
        Err(_) => {
            tracing::info!(
                idle_s = meta.idle_for.as_secs(),
                "replacing a pooled connection that did not answer a ping"
            );
            note_connection_lost();
            Ok(false)
        }
    }
}

/// True when `err` means the connection itself failed (it was closed, reset or terminated), so
/// the same statement may well succeed on another connection.
pub fn is_connection_lost(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => true,
        // Class 08: connection exceptions (PgBouncer reports a lost server connection as 08P01);
        // 57P01/02/05: the server ended the session (shutdown, crash, idle-session timeout);
        // 57P03: the server is starting up.
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "57P05")
        }),
        _ => false,
    }
}

/// Runs `read`; when it fails because its connection was lost, runs it once more (on a
/// connection that has been checked or newly opened). Only for statements that may run twice
/// without harm: reads, and writes that set a value rather than change it.
pub async fn retry_idempotent<T, F, Fut>(read: F) -> Result<T, sqlx::Error>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match read().await {
        Err(err) if is_connection_lost(&err) => {
            note_connection_lost();
            tracing::warn!(error = %err, "a database connection was lost; running the read again on another");
            read().await
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_idle_connections_and_those_idle_since_a_loss_are_suspect() {
        assert!(suspect(CHECK_IDLE_AFTER));
        // Went idle 1 ms ago; a loss noted now is after that.
        std::thread::sleep(Duration::from_millis(5));
        note_connection_lost();
        assert!(suspect(Duration::from_millis(1)));
        // Released after the loss: used successfully since, not suspect.
        std::thread::sleep(Duration::from_millis(20));
        assert!(!suspect(Duration::from_millis(1)));
    }
}
