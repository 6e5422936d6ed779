//! `/auth/*`: login, callback, logout and the signed-in profile as JSON.

use poem::{
    IntoResponse, Request, Response, handler,
    http::StatusCode,
    web::{Data, Json, Query},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    csrf,
    current_user::{SessionUser, signed_in_user, store_user},
    oidc::{OidcError, PendingLogin},
    session::Session,
    shell_for, user_row, views,
};
use crate::{error::AppResult, startup::AppState, web::form::StrictForm};

const PENDING: &str = "pending_logins";
/// Logins started in other tabs stay valid; older ones are dropped.
const MAX_PENDING: usize = 5;

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// A local path to return to after login; anything else (other hosts, `//host`, backslashes,
/// control characters that browsers strip) falls back to `/`. No open redirect.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(|c| c.is_control() || c.is_whitespace()) =>
        {
            path.to_owned()
        }
        _ => "/".to_owned(),
    }
}

#[handler]
pub async fn login(
    Data(state): Data<&AppState>,
    session: Session,
    Query(query): Query<LoginQuery>,
) -> AppResult<Response> {
    let next = safe_next(query.next.as_deref());
    if signed_in_user(&session).is_some() {
        return Ok(see_other(&next));
    }
    let (url, pending) = match state.oidc.authorization_url(next).await {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(error = %err, "login could not start");
            return Ok(provider_unreachable(&session, state));
        }
    };
    let mut pendings: Vec<PendingLogin> = session.get(PENDING).unwrap_or_default();
    pendings.push(pending);
    if pendings.len() > MAX_PENDING {
        pendings.drain(..pendings.len() - MAX_PENDING);
    }
    // A fresh session id before anything is stored: nothing fixed in advance survives.
    session.renew();
    session.insert(PENDING, &pendings)?;
    Ok(see_other(url.as_str()))
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

#[handler]
pub async fn callback(
    Data(state): Data<&AppState>,
    session: Session,
    Query(query): Query<CallbackQuery>,
) -> AppResult<Response> {
    let shell = shell_for(&session, &state.settings);
    let mut pendings: Vec<PendingLogin> = session.get(PENDING).unwrap_or_default();
    let position = query
        .state
        .as_deref()
        .and_then(|s| pendings.iter().position(|p| p.state == s));
    // Single use: whatever happens next, this login attempt is spent.
    let pending = position.map(|i| pendings.remove(i));
    if pending.is_some() {
        session.insert(PENDING, &pendings)?;
    }

    if let Some(error) = query.error.as_deref() {
        tracing::info!(
            error,
            description = query.error_description.as_deref().unwrap_or(""),
            "provider returned an error to the callback"
        );
        return Ok(match error {
            "access_denied" => views::failure(
                &shell,
                StatusCode::FORBIDDEN,
                "Sign-in was cancelled",
                "The sign-in provider did not let you in (you may have cancelled). You can try again.",
            ),
            "temporarily_unavailable" | "server_error" => views::failure(
                &shell,
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in is unavailable",
                "The sign-in provider had a problem. Please try again in a moment.",
            ),
            _ => views::failure(
                &shell,
                StatusCode::BAD_REQUEST,
                "Sign-in failed",
                "The sign-in provider could not complete the sign-in. Please try again.",
            ),
        });
    }

    let (Some(pending), Some(code)) = (pending, query.code) else {
        return Ok(views::failure(
            &shell,
            StatusCode::BAD_REQUEST,
            "This sign-in link is no longer valid",
            "It has expired, was already used, or was started in another browser. Start again.",
        ));
    };

    let verified = match state.oidc.exchange(code, &pending).await {
        Ok(verified) => verified,
        Err(OidcError::Unreachable(detail)) => {
            tracing::warn!(error = %detail, "token exchange failed: provider unreachable");
            return Ok(provider_unreachable(&session, state));
        }
        Err(err) => {
            tracing::warn!(error = %err, "sign-in rejected");
            return Ok(views::failure(
                &shell,
                StatusCode::BAD_REQUEST,
                "Sign-in could not be completed",
                "The sign-in could not be verified. Please start again.",
            ));
        }
    };

    user_row::upsert_from_login(&state.db, &verified).await?;
    session.renew();
    session.remove(PENDING);
    store_user(
        &session,
        &SessionUser {
            sub: verified.sub,
            name: verified.name,
            email: verified.email,
            email_verified: verified.email_verified.unwrap_or(false),
            picture: verified.picture,
            roles: verified.roles,
            id_token: Some(verified.id_token),
        },
    )?;
    // A new token for the signed-in session; the anonymous one must not carry over.
    session.remove("csrf_token");
    csrf::token(&session)?;
    Ok(see_other(&pending.next))
}

#[handler]
pub fn logout_page(Data(state): Data<&AppState>, session: Session) -> AppResult<Response> {
    let shell = shell_for(&session, &state.settings);
    if signed_in_user(&session).is_none() {
        return Ok(views::signed_out(&shell).into_response());
    }
    let token = csrf::token(&session)?;
    Ok(views::logout_confirm(&shell, &token).into_response())
}

#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    csrf_token: Option<String>,
}

#[handler]
pub async fn logout(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    StrictForm(form): StrictForm<CsrfForm>,
) -> AppResult<Response> {
    let Some(user) = signed_in_user(&session) else {
        return Ok(see_other("/"));
    };
    csrf::verify(req, &session, form.csrf_token.as_deref())?;
    // The local session goes first: even if the provider is unreachable, this cookie is dead.
    session.destroy();
    let url = state
        .oidc
        .logout_url(user.id_token.as_deref(), &state.settings.base_url)
        .await;
    Ok(see_other(url.as_str()))
}

#[handler]
pub fn me(session: Session) -> Response {
    match signed_in_user(&session) {
        Some(user) => Json(json!({
            "sub": user.sub,
            "name": user.name,
            "email": user.email,
            "picture": user.picture,
        }))
        .into_response(),
        None => {
            let mut response = Response::builder()
                .content_type("application/problem+json")
                .body(
                    json!({
                        "type": "about:blank",
                        "title": "Unauthorized",
                        "status": 401,
                        "detail": "Not signed in.",
                    })
                    .to_string(),
                );
            response.set_status(StatusCode::UNAUTHORIZED);
            response
        }
    }
}

fn provider_unreachable(session: &Session, state: &AppState) -> Response {
    views::failure(
        &shell_for(session, &state.settings),
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is unavailable",
        "The sign-in service is not reachable right now. Please try again in a moment.",
    )
}

fn see_other(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("Location", location)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_must_be_a_local_path() {
        assert_eq!(safe_next(Some("/admin?x=1")), "/admin?x=1");
        for bad in [
            "//evil.example",
            "https://evil.example/",
            "/\\evil.example",
            "\\\\evil.example",
            "/\t/evil.example",
            "evil",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
