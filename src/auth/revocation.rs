//! Ending sessions from outside the browser: every session of a person (blocked or deleted in
//! Auth0, found by the sync, an event, a refresh or the admin API) at once.
//!
//! Sessions carry their owner's `sub` in `sessions.user_id` (written by the session store), so
//! this is one indexed `DELETE`. Every instance reads sessions from the same table; an instance
//! that read the session within the last second may serve it from its memory for the rest of
//! that second (`session_store::CACHE_TTL`), after which the person is signed out everywhere.

use sqlx::PgPool;

/// Ends every session of the person whose OIDC `sub` (Auth0 `user_id`, e.g. `auth0|abc`) is
/// `sub`, on every instance; returns how many sessions there were.
///
/// Errors: the database's, unchanged (nothing is half-done: one statement).
pub async fn end_sessions_of(db: &PgPool, sub: &str) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(sub)
        .execute(db)
        .await?
        .rows_affected();
    if ended > 0 {
        tracing::info!(sessions = ended, "sessions ended for a revoked user");
    }
    Ok(ended)
}
