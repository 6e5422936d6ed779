//! The `users` row a sign-in writes: created on first login, refreshed from the ID token's claims
//! on later ones, without erasing the richer fields the sync copied from the Management API.
//! Claims pass through the same storable rule as synced profiles (`users::storable`): a U+0000
//! in a name never fails a sign-in.

use sqlx::PgPool;

use super::oidc::VerifiedLogin;
use crate::users::storable;

pub async fn upsert_from_login(db: &PgPool, login: &VerifiedLogin) -> Result<(), sqlx::Error> {
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
    .bind(&login.sub)
    .bind(login.profile.email.as_deref().map(storable::text))
    .bind(login.profile.email_verified)
    .bind(login.profile.name.as_deref().map(storable::text))
    .bind(login.profile.nickname.as_deref().map(storable::text))
    .bind(login.profile.picture.as_deref().map(storable::text))
    .execute(db)
    .await?;
    Ok(())
}
