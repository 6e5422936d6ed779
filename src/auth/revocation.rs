//! Ending sessions from outside the browser they belong to: every session of a person (blocked
//! or deleted in Auth0, found by the sync, an event, a refresh or the admin API), one provider
//! session (a back-channel logout), or a person's other devices ("sign out the others").
//!
//! Sessions carry their owner's `sub` and the provider's `sid` (`sessions.user_id`,
//! `sessions.sid`, written by the session store), so each of these is one indexed `DELETE`.
//! A deleted session is gone for every instance on its next request: instances forget the
//! sessions they remember as soon as Postgres announces the deletion (`session_events`), and a
//! request that read the session just before cannot write it back (`session_store`).

use sqlx::{PgExecutor, PgPool};

use super::session_store::PgSessionStore;
use crate::observability;

/// Why sessions were ended: the `reason` label of `sessions_revoked_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The person is blocked or deleted at the provider.
    BlockedOrDeleted,
    /// The provider's logout token named them (OpenID Connect Back-Channel Logout 1.0).
    BackchannelLogout,
    /// The person signed out their other devices.
    OtherDevices,
    /// An admin ended them through the admin API.
    Admin,
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::BlockedOrDeleted,
        Reason::BackchannelLogout,
        Reason::OtherDevices,
        Reason::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlockedOrDeleted => "blocked_or_deleted",
            Self::BackchannelLogout => "backchannel_logout",
            Self::OtherDevices => "other_devices",
            Self::Admin => "admin",
        }
    }
}

/// Counts and logs sessions that were ended (call after the ending committed).
pub fn record(reason: Reason, ended: u64) {
    observability::sessions_revoked(reason.as_str(), ended);
    if ended > 0 {
        tracing::info!(sessions = ended, reason = reason.as_str(), "sessions ended");
    }
}

/// Ends every session of the person whose OIDC `sub` (Auth0 `user_id`, e.g. `auth0|abc`) is
/// `sub`, on every instance, because they are blocked or deleted at the provider; returns how
/// many sessions there were.
///
/// Errors: the database's, unchanged (nothing is half-done: one statement).
pub async fn end_sessions_of(db: &PgPool, sub: &str) -> Result<u64, sqlx::Error> {
    end_sessions_of_for(db, sub, Reason::BlockedOrDeleted).await
}

/// Ends every session of `sub` for `reason`; returns how many there were.
pub async fn end_sessions_of_for(
    db: &PgPool,
    sub: &str,
    reason: Reason,
) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query("DELETE FROM sessions WHERE user_id = $1")
        .bind(sub)
        .execute(db)
        .await?
        .rows_affected();
    record(reason, ended);
    Ok(ended)
}

/// Ends every session of `sub` for `reason` and makes this instance's `store` forget them at
/// once (other instances forget them when Postgres announces the deletion); returns their ids.
pub async fn end_all_sessions_of(
    db: &PgPool,
    store: &PgSessionStore,
    sub: &str,
    reason: Reason,
) -> Result<Vec<String>, sqlx::Error> {
    let ended: Vec<String> =
        sqlx::query_scalar("DELETE FROM sessions WHERE user_id = $1 RETURNING id")
            .bind(sub)
            .fetch_all(db)
            .await?;
    store.forget_ended(ended.iter().map(String::as_str));
    record(reason, ended.len() as u64);
    Ok(ended)
}

/// Ends the sessions a logout token names (OpenID Connect Back-Channel Logout 1.0, section
/// 2.7): with a `sid`, the sessions of that provider session (and of `sub` too, when the token
/// also names one); with only a `sub`, every session of that person. Returns their ids. Not
/// counted: the caller records it once its transaction commits.
pub async fn end_provider_sessions(
    db: impl PgExecutor<'_>,
    sid: Option<&str>,
    sub: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    if sid.is_none() && sub.is_none() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "DELETE FROM sessions
         WHERE ($1::text IS NULL OR sid = $1) AND ($2::text IS NULL OR user_id = $2)
         RETURNING id",
    )
    .bind(sid)
    .bind(sub)
    .fetch_all(db)
    .await
}

/// Ends every session of `sub` except the one whose row id (`sessions.id`) is `keep`, the
/// person's "sign out the others", and makes this instance's `store` forget them at once;
/// returns how many ended.
pub async fn end_other_sessions(
    db: &PgPool,
    store: &PgSessionStore,
    sub: &str,
    keep: &str,
) -> Result<u64, sqlx::Error> {
    let ended: Vec<String> =
        sqlx::query_scalar("DELETE FROM sessions WHERE user_id = $1 AND id <> $2 RETURNING id")
            .bind(sub)
            .bind(keep)
            .fetch_all(db)
            .await?;
    store.forget_ended(ended.iter().map(String::as_str));
    record(Reason::OtherDevices, ended.len() as u64);
    Ok(ended.len() as u64)
}

/// Ends the sessions of those among `user_ids` whose `users` row now says blocked or deleted
/// (after the sync wrote their profiles: the row, not the profile, decides, since a newer row
/// keeps its own state); returns how many ended.
pub async fn end_sessions_of_revoked_users(
    db: &PgPool,
    user_ids: &[&str],
) -> Result<u64, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    let ended = sqlx::query(
        "DELETE FROM sessions s USING users u
         WHERE s.user_id = ANY($1) AND u.user_id = s.user_id
           AND (u.blocked IS TRUE OR u.deleted_at IS NOT NULL)",
    )
    .bind(user_ids)
    .execute(db)
    .await?
    .rows_affected();
    record(Reason::BlockedOrDeleted, ended);
    Ok(ended)
}

/// Ends every session whose owner's `users` row says blocked or deleted (after a full sync has
/// marked the users it no longer found); returns how many ended. One pass over the sessions,
/// each checked against its owner's row.
pub async fn end_sessions_of_all_revoked_users(db: &PgPool) -> Result<u64, sqlx::Error> {
    let ended = sqlx::query(
        "DELETE FROM sessions s
         WHERE s.user_id IS NOT NULL AND EXISTS (
             SELECT 1 FROM users u
             WHERE u.user_id = s.user_id AND (u.blocked IS TRUE OR u.deleted_at IS NOT NULL))",
    )
    .execute(db)
    .await?
    .rows_affected();
    record(Reason::BlockedOrDeleted, ended);
    Ok(ended)
}

/// How many unexpired sessions `sub` has (their devices, as the signed-in page counts them).
pub async fn count_sessions_of(db: &PgPool, sub: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM sessions
         WHERE user_id = $1 AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(sub)
    .fetch_one(db)
    .await
}
