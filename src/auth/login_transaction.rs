//! Sign-ins in flight: one `login_transactions` row per authorization request, keyed by its
//! OAuth `state` and bound to the browser that started it by a cookie of its own
//! (`quotebook_login_<state>`), as @auth0/nextjs-auth0 v4 keeps one transaction cookie per
//! `state`. Two tabs, a double click or a bookmarked `/auth/login` each get their own, none
//! touches the session, and finishing one leaves the others usable. A callback without its
//! browser's cookie cannot finish a sign-in, so nobody can complete theirs in someone else's
//! browser (login CSRF).

use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::{cookies, oidc::AuthorizationSecrets};

/// How long a sign-in may take, from `/auth/login` to the callback (the transaction cookie's
/// lifetime in @auth0/nextjs-auth0 v4).
pub const TTL: Duration = Duration::from_secs(3600);

const COOKIE_PREFIX: &str = "quotebook_login_";

/// The binding cookie's name for `state`, or `None` for a `state` that cannot be a cookie name
/// (ours are base64url; anything else did not come from this app).
pub fn cookie_name(state: &str, secure: bool) -> Option<String> {
    let plausible = !state.is_empty()
        && state.len() <= 128
        && state
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plausible.then(|| cookies::name(&format!("{COOKIE_PREFIX}{state}"), secure))
}

fn hash(binding: &str) -> String {
    Sha256::digest(binding.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new pending sign-in.
pub struct Begin<'a> {
    pub secrets: &'a AuthorizationSecrets,
    pub next: &'a str,
    pub organization: Option<&'a str>,
    /// The `host:port` it started on.
    pub origin: &'a str,
}

/// Stores the pending sign-in; returns the value of its binding cookie.
pub async fn begin(db: &PgPool, new: Begin<'_>) -> Result<String, sqlx::Error> {
    let bytes: [u8; 32] = rand::random();
    let binding: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    sqlx::query(
        "INSERT INTO login_transactions
             (state, browser_hash, origin, nonce, pkce_verifier, next, organization, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))",
    )
    .bind(&new.secrets.state)
    .bind(hash(&binding))
    .bind(new.origin)
    .bind(&new.secrets.nonce)
    .bind(&new.secrets.pkce_verifier)
    .bind(new.next)
    .bind(new.organization)
    .bind(TTL.as_secs_f64())
    .execute(db)
    .await?;
    Ok(binding)
}

/// What a callback's `state` finds.
#[derive(Debug)]
pub enum Found {
    /// This browser's pending sign-in, now spent whatever happens next.
    Taken {
        secrets: AuthorizationSecrets,
        next: String,
        organization: Option<String>,
    },
    /// A callback that was already used; `sub` is who it signed in, if it succeeded.
    Used { sub: Option<String>, next: String },
    /// This browser's, but past its [`TTL`].
    Expired { next: String },
    /// Pending, but this browser does not hold its cookie: it was started in another browser,
    /// or on another host (`origin`).
    ElsewhereStarted { origin: String },
    /// No such sign-in (never started here, or long gone).
    Unknown,
}

/// Takes the pending sign-in `state` if `binding` (this browser's cookie value) is its own; a
/// taken sign-in cannot be taken again, even by a concurrent request.
pub async fn take(db: &PgPool, state: &str, binding: Option<&str>) -> Result<Found, sqlx::Error> {
    let browser_hash = binding.map(hash);
    let taken: Option<(String, String, String, Option<String>)> = sqlx::query_as(
        "UPDATE login_transactions SET completed_at = now()
         WHERE state = $1 AND browser_hash = $2 AND completed_at IS NULL AND expires_at > now()
         RETURNING nonce, pkce_verifier, next, organization",
    )
    .bind(state)
    .bind(&browser_hash)
    .fetch_optional(db)
    .await?;
    if let Some((nonce, pkce_verifier, next, organization)) = taken {
        return Ok(Found::Taken {
            secrets: AuthorizationSecrets {
                state: state.to_owned(),
                nonce,
                pkce_verifier,
            },
            next,
            organization,
        });
    }
    let row: Option<(bool, bool, bool, Option<String>, String, String)> = sqlx::query_as(
        "SELECT completed_at IS NOT NULL, coalesce(browser_hash = $2, false), expires_at <= now(),
                sub, next, origin
         FROM login_transactions WHERE state = $1",
    )
    .bind(state)
    .bind(&browser_hash)
    .fetch_optional(db)
    .await?;
    Ok(match row {
        None => Found::Unknown,
        Some((true, _, _, sub, next, _)) => Found::Used { sub, next },
        Some((false, false, _, _, _, origin)) => Found::ElsewhereStarted { origin },
        Some((false, true, _, _, next, _)) => Found::Expired { next },
    })
}

/// Records how a taken sign-in ended (`sub` when it succeeded) and forgets its secrets.
pub async fn finish(db: &PgPool, state: &str, sub: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE login_transactions SET sub = $2, nonce = NULL, pkce_verifier = NULL
         WHERE state = $1",
    )
    .bind(state)
    .bind(sub)
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes sign-ins past their lifetime; returns how many went.
pub async fn reap(db: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM login_transactions WHERE expires_at < now()")
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::cookie_name;

    #[test]
    fn only_states_this_app_could_have_made_name_a_cookie() {
        assert_eq!(
            cookie_name("Ab-_09", false).as_deref(),
            Some("quotebook_login_Ab-_09")
        );
        assert_eq!(
            cookie_name("Ab-_09", true).as_deref(),
            Some("__Host-quotebook_login_Ab-_09")
        );
        for bad in ["", "a;b", "a=b", "a b", "é", &"a".repeat(129)] {
            assert_eq!(cookie_name(bad, false), None, "{bad:?}");
        }
    }
}
