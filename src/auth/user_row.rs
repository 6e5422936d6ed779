//! The `users` row a sign-in writes: created on first login, refreshed from the ID token's claims
//! on later ones, without erasing the richer fields the sync copied from the Management API.
//! Claims pass through the same storable rule as synced profiles (`users::storable`): a U+0000
//! in a name never fails a sign-in.

use sqlx::PgPool;

use super::oidc::VerifiedLogin;
use crate::users::{storable, store};

/// Writes the row; a profile Postgres still refuses ([`store::is_row_data_error`]: a claim too
/// large for the search's order index, say) is logged and left out, and the sign-in goes on
/// with the row as it was (or a bare one), as the sync skips such a profile.
pub async fn upsert_from_login(db: &PgPool, login: &VerifiedLogin) -> Result<(), sqlx::Error> {
    match upsert(db, &login.sub, Some(login)).await {
        Err(err) if store::is_row_data_error(&err) => {
            tracing::warn!(
                user_id = ?login.sub,
                reason = %err,
                "the ID token's profile cannot be stored; signed in without it"
            );
            upsert(db, &login.sub, None).await
        }
        done => done,
    }
}

async fn upsert(db: &PgPool, sub: &str, login: Option<&VerifiedLogin>) -> Result<(), sqlx::Error> {
    let profile = login.map(|l| &l.profile);
    sqlx::query(
        "INSERT INTO users (user_id, email, email_verified, name, nickname, picture, last_login)
         VALUES ($1, $2, $3, $4, $5, $6, now())
         ON CONFLICT (user_id) DO UPDATE SET
             email = COALESCE(EXCLUDED.email, users.email),
             -- An unknown answer keeps what was known, unless the address itself changed.
             email_verified = CASE
                 WHEN EXCLUDED.email IS DISTINCT FROM users.email AND EXCLUDED.email IS NOT NULL
                     THEN EXCLUDED.email_verified
                 ELSE COALESCE(EXCLUDED.email_verified, users.email_verified)
             END,
             name = COALESCE(EXCLUDED.name, users.name),
             nickname = COALESCE(EXCLUDED.nickname, users.nickname),
             picture = COALESCE(EXCLUDED.picture, users.picture),
             last_login = now(),
             -- Signing in proves the account exists again.
             deleted_at = NULL,
             auth0_deleted_at = NULL",
    )
    .bind(sub)
    .bind(profile.and_then(|p| p.email.as_deref()).map(storable::text))
    .bind(profile.and_then(|p| p.email_verified))
    .bind(profile.and_then(|p| p.name.as_deref()).map(storable::text))
    .bind(
        profile
            .and_then(|p| p.nickname.as_deref())
            .map(storable::text),
    )
    .bind(
        profile
            .and_then(|p| p.picture.as_deref())
            .map(storable::text),
    )
    .execute(db)
    .await?;
    Ok(())
}
