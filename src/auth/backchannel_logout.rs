//! `POST /auth/backchannel-logout`: OpenID Connect Back-Channel Logout 1.0.
//!
//! The provider posts `logout_token=<JWT>` (section 2.5) when a session of its ends (a logout
//! from any application, a blocked or deleted user, a revoked session). The token is validated
//! (section 2.6, `OidcProvider::verify_logout_token`), its `jti` is remembered so it works once
//! (shared by every instance, forgotten when it could no longer pass the time checks), and the
//! sessions it names end: the provider session's (`sid`), or every session of the person
//! (`sub` alone). The answer is 200 with an empty body, or 400 with an OAuth 2.0 error body
//! (section 2.8); never cached. Nothing changes unless the answer is 200.
//!
//! Configure it at the provider: in Auth0's dashboard, the application's Settings, "OpenID
//! Connect Back-Channel Logout", "Back-Channel Logout URI"
//! (<https://auth0.com/docs/authenticate/login/logout/back-channel-logout/configure-back-channel-logout>).

use poem::{
    Body, Request, Response, handler,
    http::{StatusCode, header},
    web::Data,
};
use serde_json::json;

use super::{
    logout_token::LogoutToken,
    oidc::Unverified,
    revocation::{self, Reason},
};
use crate::{observability, startup::AppState};

/// What became of a valid token.
enum Outcome {
    /// Its sessions ended (their ids; none is fine, section 2.7).
    Ended(Vec<String>),
    /// Its `jti` was seen before.
    Replayed,
}

/// `POST /auth/backchannel-logout` (a form with `logout_token`).
#[handler]
pub async fn backchannel_logout(
    Data(state): Data<&AppState>,
    req: &Request,
    body: Body,
) -> Response {
    let raw = match logout_token_param(req, body).await {
        Ok(raw) => raw,
        Err(why) => return refuse(&why),
    };
    let token = match state.oidc.verify_logout_token(&raw).await {
        Ok(token) => token,
        Err(Unverified::Rejected(why)) => return refuse(&format!("Invalid logout token: {why}")),
        Err(Unverified::Provider(err)) => {
            tracing::warn!(error = %err, "back-channel logout: the provider's keys cannot be read");
            return unavailable("The provider's signing keys cannot be read right now.");
        }
    };
    match act_on(&state.db, &token).await {
        Ok(Outcome::Ended(ended)) => {
            // This instance forgets them now; the others when Postgres announces it.
            state
                .sessions
                .forget_ended(ended.iter().map(String::as_str));
            let ended = ended.len() as u64;
            revocation::record(Reason::BackchannelLogout, ended);
            observability::backchannel_logout("ended");
            tracing::info!(
                sessions = ended,
                by_sid = token.sid.is_some(),
                user = token
                    .sub
                    .as_deref()
                    .map(|sub| observability::UserTag::of(sub).0),
                "back-channel logout"
            );
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CACHE_CONTROL, "no-store")
                .finish()
        }
        Ok(Outcome::Replayed) => {
            observability::backchannel_logout("replayed");
            tracing::info!("back-channel logout refused: the logout token was already used");
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "This logout token was already used (its jti was received before).",
            )
        }
        // Section 2.8 asks for a 400 when "the logout failed"; a database that cannot be
        // reached is the server's trouble, not the token's, so it is told apart as HTTP does
        // (RFC 9110, 15.6.4): monitoring and the provider's logs then show whose it is.
        Err(err) if crate::db::is_unavailable(&err) => {
            tracing::error!(error = %err, "back-channel logout: the database is unavailable");
            unavailable(crate::db::UNAVAILABLE_MESSAGE)
        }
        Err(err) => {
            tracing::error!(error = %err, "back-channel logout failed");
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The logout could not be recorded.",
            )
        }
    }
}

/// The one `logout_token` of an `application/x-www-form-urlencoded` body (section 2.5).
async fn logout_token_param(req: &Request, body: Body) -> Result<String, String> {
    let form = req
        .content_type()
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    if !form {
        return Err(
            "Send the logout token as an application/x-www-form-urlencoded form field \
             named logout_token."
                .into(),
        );
    }
    let bytes = body
        .into_bytes()
        .await
        .map_err(|_| "The request body could not be read.".to_owned())?;
    let mut tokens = url::form_urlencoded::parse(&bytes)
        .filter(|(name, _)| name == "logout_token")
        .map(|(_, value)| value.into_owned());
    match (tokens.next(), tokens.next()) {
        (Some(token), None) if !token.is_empty() => Ok(token),
        (Some(_), Some(_)) => Err("logout_token must be sent once (RFC 6749, section 3.1).".into()),
        _ => Err("The logout_token parameter is missing.".into()),
    }
}

/// Remembers the token's `jti` and ends its sessions, in one transaction: a replay ends
/// nothing, and a failure leaves the token usable for a retry.
async fn act_on(db: &sqlx::PgPool, token: &LogoutToken) -> Result<Outcome, sqlx::Error> {
    let mut tx = db.begin().await?;
    // A row whose token could no longer pass the time checks is only waiting for the reaper;
    // it does not make a new token with the same `jti` a replay.
    let first_use = sqlx::query(
        "INSERT INTO logout_tokens_seen (issuer, jti, expires_at)
         VALUES ($1, $2, to_timestamp($3))
         ON CONFLICT (issuer, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at
         WHERE logout_tokens_seen.expires_at < now()",
    )
    .bind(&token.issuer)
    .bind(&token.jti)
    .bind(token.replayable_until as f64)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !first_use {
        tx.rollback().await?;
        return Ok(Outcome::Replayed);
    }
    let ended =
        revocation::end_provider_sessions(&mut *tx, token.sid.as_deref(), token.sub.as_deref())
            .await?;
    tx.commit().await?;
    Ok(Outcome::Ended(ended))
}

/// Deletes remembered logout tokens that could no longer be accepted; returns how many went.
pub async fn reap(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM logout_tokens_seen WHERE expires_at < now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// A 400 for a request or token that is not valid (section 2.8).
fn refuse(why: &str) -> Response {
    observability::backchannel_logout("rejected");
    tracing::info!(reason = ?why, "back-channel logout refused");
    error_response(StatusCode::BAD_REQUEST, "invalid_request", why)
}

fn unavailable(why: &str) -> Response {
    let mut response = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        why,
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    response
}

/// An OAuth 2.0 error body (RFC 6749, section 5.2), as section 2.8 allows.
fn error_response(status: StatusCode, error: &str, description: &str) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .header(header::CACHE_CONTROL, "no-store")
        .body(json!({ "error": error, "error_description": description }).to_string())
}
