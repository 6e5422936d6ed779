//! Applying one user's change to `users`, whatever order Auth0 delivered it in.
//!
//! Auth0 does not deliver events in order and may deliver one twice
//! (auth0.com/docs/customize/events/events-best-practices): `user.updated` may arrive after the
//! `user.deleted` that followed it, or a redelivered old update after a newer one. Each change
//! is therefore applied against the row as it stands, under the row's lock:
//!
//! - a profile is written through the sync's upsert (`store::upsert_batch`), which never
//!   replaces a newer profile (`updated_at`);
//! - a profile never brings back a user deleted after it existed (`deleted_at` at or after the
//!   time the profile is known to have existed);
//! - a deletion never takes a user whose stored profile is newer than the deletion (the user was
//!   created again with the same id), and of a user not stored yet it leaves a deleted row, so a
//!   late `user.created` finds the deletion.
//!
//! A change that leaves the user blocked or deleted ends every session they have
//! (`auth::revocation::end_sessions_of`), on every instance.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use crate::users::{auth0_user::Auth0User, store};

/// What applying a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The profile was written.
    Written,
    /// The row already held a newer profile (only marked as seen).
    KeptNewer,
    /// The user was deleted after this profile existed: nothing written.
    DeletedSince,
    /// The user is now marked deleted.
    Deleted,
    /// The user was already deleted, or the deletion is older than the stored profile.
    DeletionStale,
    /// Postgres refused a value of the profile: nothing written (the reason is logged).
    Unstorable,
}

impl Applied {
    /// The ledger's `outcome` and the metric's label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Written => "applied",
            Self::KeptNewer | Self::DeletedSince | Self::DeletionStale => "stale",
            Self::Deleted => "deleted",
            Self::Unstorable => "unusable",
        }
    }
}

/// The outcome, and how many sessions it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub applied: Applied,
    pub sessions_ended: u64,
}

/// Writes `user`'s profile, known to have existed at `existed_at` (an event's `updated_at`, or
/// when a refresh read it).
pub async fn profile(
    db: &PgPool,
    user: &Auth0User,
    existed_at: DateTime<Utc>,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = db.begin().await?;
    let row = lock_row(&mut tx, &user.user_id).await?;
    if row
        .and_then(|r| r.deleted_at)
        .is_some_and(|deleted| deleted >= existed_at)
    {
        tx.commit().await?;
        return Ok(unchanged(Applied::DeletedSince));
    }
    let written = match store::upsert_batch(&mut *tx, std::slice::from_ref(user)).await {
        Ok(written) => written,
        Err(err) if store::is_row_data_error(&err) => {
            tracing::warn!(
                user_id = ?user.user_id,
                reason = %err,
                "user profile from Auth0 skipped: it cannot be stored"
            );
            tx.rollback().await?;
            // Its block still counts: the flag is always storable.
            let sessions_ended = if store::mark_blocked(db, &[user]).await? > 0 {
                crate::auth::revocation::end_sessions_of(db, &user.user_id).await?
            } else {
                0
            };
            return Ok(Outcome {
                applied: Applied::Unstorable,
                sessions_ended,
            });
        }
        Err(err) => return Err(err),
    };
    tx.commit().await?;
    if written.upserted == 0 {
        return Ok(unchanged(Applied::KeptNewer));
    }
    // Only the profile just written decides: a stale one says nothing about the user today.
    let sessions_ended = if user.blocked == Some(true) {
        crate::auth::revocation::end_sessions_of(db, &user.user_id).await?
    } else {
        0
    };
    Ok(Outcome {
        applied: Applied::Written,
        sessions_ended,
    })
}

/// Marks `user_id` deleted at `deleted_at`; `last_profile` is the profile Auth0 sent with the
/// deletion, if any (kept for a user not stored before).
pub async fn deletion(
    db: &PgPool,
    user_id: &str,
    last_profile: Option<&Auth0User>,
    deleted_at: DateTime<Utc>,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = db.begin().await?;
    let mut row = lock_row(&mut tx, user_id).await?;
    // A stored profile newer than this says the user was created again after the deletion.
    let mut newer_than = deleted_at;
    if row.is_none() {
        // Not stored yet: a row to carry the deletion, from the profile Auth0 sent with it if
        // any. Another writer may be inserting the same user right now (its `user.created`, a
        // sign-in): the insert waits for it, and the row is read again, whoever wrote it, so
        // a profile newer than the deletion is seen below.
        match last_profile {
            Some(profile) => {
                if let Err(err) = store::upsert_batch(&mut *tx, std::slice::from_ref(profile)).await
                {
                    if !store::is_row_data_error(&err) {
                        return Err(err);
                    }
                    // The profile cannot be stored, but the deletion must be remembered.
                    tx = db.begin().await?;
                    insert_bare(&mut tx, user_id).await?;
                }
            }
            None => insert_bare(&mut tx, user_id).await?,
        }
        // The profile just written is the deleted user's own, whatever its `updated_at`.
        if let Some(own) = last_profile.and_then(|p| p.updated_at) {
            newer_than = newer_than.max(own);
        }
        row = lock_row(&mut tx, user_id).await?;
    }
    if row.is_some_and(|r| {
        r.auth0_updated_at
            .is_some_and(|updated| updated > newer_than)
    }) {
        // A profile newer than the deletion: the user was created again under the same id.
        tx.commit().await?;
        return Ok(unchanged(Applied::DeletionStale));
    }
    if row.is_some_and(|r| r.deleted_at.is_some()) {
        // Marked deleted already (by an earlier delivery or the sync): the row stays as it is
        // but for the evidence, which a sync's older listing must not overrule, and no session
        // of the user may outlive the news.
        sqlx::query(
            "UPDATE users SET auth0_deleted_at = greatest(auth0_deleted_at, $2)
             WHERE user_id = $1",
        )
        .bind(user_id)
        .bind(deleted_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let sessions_ended = crate::auth::revocation::end_sessions_of(db, user_id).await?;
        return Ok(Outcome {
            applied: Applied::DeletionStale,
            sessions_ended,
        });
    }
    sqlx::query("UPDATE users SET deleted_at = $2, auth0_deleted_at = $2 WHERE user_id = $1")
        .bind(user_id)
        .bind(deleted_at)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let sessions_ended = crate::auth::revocation::end_sessions_of(db, user_id).await?;
    Ok(Outcome {
        applied: Applied::Deleted,
        sessions_ended,
    })
}

fn unchanged(applied: Applied) -> Outcome {
    Outcome {
        applied,
        sessions_ended: 0,
    }
}

#[derive(Debug, Clone, Copy, sqlx::FromRow)]
struct Row {
    deleted_at: Option<DateTime<Utc>>,
    auth0_updated_at: Option<DateTime<Utc>>,
}

/// The user's row, locked until the transaction ends: two changes of one user apply one after
/// the other.
async fn lock_row(conn: &mut PgConnection, user_id: &str) -> Result<Option<Row>, sqlx::Error> {
    sqlx::query_as("SELECT deleted_at, auth0_updated_at FROM users WHERE user_id = $1 FOR UPDATE")
        .bind(user_id)
        .fetch_optional(conn)
        .await
}

/// A row that only says the user existed (to carry a deletion).
async fn insert_bare(conn: &mut PgConnection, user_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO users (user_id) VALUES ($1) ON CONFLICT (user_id) DO NOTHING")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}
