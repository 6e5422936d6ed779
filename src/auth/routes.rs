//! `/auth/*`: login, callback, logout and the signed-in profile as JSON.

use poem::{
    IntoResponse, Request, Response, handler,
    http::StatusCode,
    web::{Data, Json, Query},
};
use serde::Deserialize;
use serde_json::json;

use super::{
    cookies, csrf,
    current_user::{SessionUser, signed_in_user, store_user},
    login_request::LoginRequest,
    login_transaction::{self, Begin, Found},
    oidc::{AuthorizationSecrets, OidcError, VerifiedLogin},
    session::Session,
    shell_for, user_row,
    views::{self, Failure, login_link},
};
use crate::{
    error::AppResult, startup::AppState, web::canonical_origin::CanonicalOrigin,
    web::form::StrictForm, web::layout::Shell,
};

/// `GET /auth/login`: starts a sign-in (see `login_request` for what the query may ask).
#[handler]
pub async fn login(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
) -> AppResult<Response> {
    let shell = shell_for(&session, &state.settings);
    let request = match LoginRequest::from_query(req.uri().query().unwrap_or("")) {
        Ok(request) => request,
        Err(err) => {
            return Ok(views::failure(
                &shell,
                Failure {
                    status: StatusCode::BAD_REQUEST,
                    title: "This sign-in link is not valid",
                    message: &err.0,
                    provider_said: None,
                    try_again: Some("/auth/login".into()),
                },
            ));
        }
    };
    if signed_in_user(&session).is_some() && !request.asks_the_provider() {
        return Ok(see_other(&request.next));
    }
    let (url, secrets) = match state.oidc.authorization_url(&request).await {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(error = %err, "sign-in could not start");
            return Ok(provider_failure(&shell, state, &err, &request.next));
        }
    };
    let origin = canonical_origin(state)
        .request_host(req)
        .unwrap_or_default();
    let binding = login_transaction::begin(
        &state.db,
        Begin {
            secrets: &secrets,
            next: &request.next,
            organization: request.organization.as_deref(),
            origin: &origin,
        },
    )
    .await?;
    let mut response = see_other(url.as_str());
    let secure = state.settings.secure_cookies();
    if let Some(name) = login_transaction::cookie_name(&secrets.state, secure) {
        cookies::set(
            &mut response,
            &name,
            &binding,
            secure,
            login_transaction::TTL.as_secs(),
        );
    }
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// The provider's issuer (RFC 9207), sent by some providers.
    iss: Option<String>,
}

/// `GET /auth/callback`: finishes the sign-in its `state` names, if this browser started it.
#[handler]
pub async fn callback(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    Query(query): Query<CallbackQuery>,
) -> AppResult<Response> {
    let secure = state.settings.secure_cookies();
    let cookie = query
        .state
        .as_deref()
        .and_then(|s| login_transaction::cookie_name(s, secure));
    let binding = cookie.as_deref().and_then(|name| cookies::read(req, name));
    let found = match query.state.as_deref() {
        Some(s) => login_transaction::take(&state.db, s, binding.as_deref()).await?,
        None => Found::Unknown,
    };
    let mut response = match found {
        Found::Taken {
            secrets,
            next,
            organization,
        } => {
            let outcome =
                finish_sign_in(state, &session, &query, &secrets, &next, organization).await;
            let sub = outcome.as_ref().ok().and_then(|(_, sub)| sub.clone());
            login_transaction::finish(&state.db, &secrets.state, sub.as_deref()).await?;
            outcome?.0
        }
        other => not_taken(state, req, &session, other),
    };
    // Its sign-in is no longer pending here: the binding cookie has done its job.
    if let (Some(name), Some(_)) = (cookie, binding) {
        cookies::set(&mut response, &name, "", secure, 0);
    }
    Ok(response)
}

/// This browser's own pending sign-in: the provider's error, or the code exchanged and the
/// person signed in. Returns the response and, on success, who signed in.
async fn finish_sign_in(
    state: &AppState,
    session: &Session,
    query: &CallbackQuery,
    secrets: &AuthorizationSecrets,
    next: &str,
    organization: Option<String>,
) -> AppResult<(Response, Option<String>)> {
    let shell = shell_for(session, &state.settings);
    if let Some(error) = query.error.as_deref() {
        let description = query.error_description.as_deref();
        tracing::info!(
            error,
            description = description.unwrap_or(""),
            "provider returned an error to the callback"
        );
        return Ok((provider_error(&shell, error, description, next), None));
    }
    let Some(code) = query.code.clone() else {
        return Ok((
            views::failure(
                &shell,
                Failure {
                    status: StatusCode::BAD_REQUEST,
                    title: "Sign-in could not be completed",
                    message: "The sign-in provider came back without a code. Please start again.",
                    provider_said: None,
                    try_again: Some(login_link(next)),
                },
            ),
            None,
        ));
    };
    let verified = match state
        .oidc
        .exchange(code, secrets, organization.as_deref(), query.iss.as_deref())
        .await
    {
        Ok(verified) => verified,
        Err(err) => {
            tracing::warn!(error = %err, "sign-in could not be completed");
            return Ok((provider_failure(&shell, state, &err, next), None));
        }
    };
    user_row::upsert_from_login(&state.db, &verified).await?;
    sign_in(session, &verified)?;
    Ok((see_other(next), Some(verified.sub)))
}

/// Starts the signed-in session: a fresh one (new id, lifetime from now) holding the person.
fn sign_in(session: &Session, verified: &VerifiedLogin) -> AppResult<()> {
    // The same person signing in again (another tab) keeps the CSRF token their pages carry;
    // anyone else gets a new one.
    let kept_token = signed_in_user(session)
        .filter(|previous| previous.sub == verified.sub)
        .and_then(|_| csrf::existing_token(session));
    session.regenerate();
    store_user(
        session,
        &SessionUser {
            sub: verified.sub.clone(),
            sid: verified.sid.clone(),
            name: verified.profile.name.clone(),
            email: verified.profile.email.clone(),
            email_verified: verified.profile.email_verified,
            picture: verified.profile.picture.clone(),
            roles: verified.roles.clone(),
            id_token: Some(verified.id_token.clone()),
        },
    )?;
    match kept_token {
        Some(token) => csrf::restore(session, &token),
        None => csrf::token(session).map(|_| ()),
    }
}

/// A callback whose sign-in is not this browser's to finish. A signed-in browser replaying a
/// callback (Back, reload) goes where that sign-in went, or home; anyone else gets a page that
/// says why.
fn not_taken(state: &AppState, req: &Request, session: &Session, found: Found) -> Response {
    if let Some(user) = signed_in_user(session) {
        let to = match found {
            Found::Used {
                sub: Some(sub),
                next,
            } if sub == user.sub => next,
            Found::Expired { next } => next,
            _ => "/".to_owned(),
        };
        return see_other(&to);
    }
    let shell = shell_for(session, &state.settings);
    let (title, message, try_again) = match found {
        Found::Expired { next } => (
            "This sign-in took too long".to_owned(),
            "Sign-ins have to finish within an hour of starting. Start again and you will \
             land where you were going."
                .to_owned(),
            login_link(&next),
        ),
        Found::Used { .. } => (
            "This sign-in link was already used".to_owned(),
            "Each sign-in link works once. Log in again to continue.".to_owned(),
            "/auth/login".to_owned(),
        ),
        Found::ElsewhereStarted { origin } => {
            let canonical = canonical_origin(state);
            let here = canonical.request_host(req).unwrap_or_default();
            if origin != here {
                (
                    "This sign-in started at another address".to_owned(),
                    format!(
                        "It began at {origin} but came back to {here}. Browsers keep each \
                         address's sign-ins apart, so start again at {}.",
                        canonical.origin()
                    ),
                    format!("{}/auth/login", canonical.origin()),
                )
            } else {
                (
                    "This sign-in was started in another browser".to_owned(),
                    "For your safety a sign-in can only finish in the browser that started it \
                     (or your browser blocked its cookie). Start again here."
                        .to_owned(),
                    "/auth/login".to_owned(),
                )
            }
        }
        Found::Unknown | Found::Taken { .. } => (
            "This sign-in link is no longer valid".to_owned(),
            "It has expired or was already used. Start again.".to_owned(),
            "/auth/login".to_owned(),
        ),
    };
    views::failure(
        &shell,
        Failure {
            status: StatusCode::BAD_REQUEST,
            title: &title,
            message: &message,
            provider_said: None,
            try_again: Some(try_again),
        },
    )
}

/// The provider's `error` on this browser's own callback (RFC 6749 4.1.2.1, OpenID Connect
/// Core 3.1.2.6, and Auth0's `unauthorized` for blocked users:
/// https://auth0.com/docs/manage-users/user-accounts/block-and-unblock-users), with its
/// description.
fn provider_error(shell: &Shell, error: &str, description: Option<&str>, next: &str) -> Response {
    let retry = Some(login_link(next));
    let (status, title, message, try_again) = match error {
        "access_denied" => (
            StatusCode::FORBIDDEN,
            "The sign-in provider did not let you in",
            "You may have cancelled, or a rule of the provider refused the sign-in.",
            retry,
        ),
        "unauthorized" => (
            StatusCode::FORBIDDEN,
            "This account is blocked",
            "The sign-in provider says this account is blocked. Ask the site's administrator \
             to unblock it.",
            None,
        ),
        "login_required"
        | "interaction_required"
        | "consent_required"
        | "account_selection_required" => (
            StatusCode::UNAUTHORIZED,
            "Please sign in",
            "The sign-in provider needs you to sign in on its page.",
            Some(login_link(next)),
        ),
        "temporarily_unavailable" | "server_error" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable",
            "The sign-in provider had a problem. Please try again in a moment.",
            retry,
        ),
        "invalid_request"
        | "unauthorized_client"
        | "unsupported_response_type"
        | "invalid_scope"
        | "invalid_client" => (
            StatusCode::BAD_REQUEST,
            "Sign-in is not set up correctly",
            "The sign-in provider refused quotebook's request. The site's administrator needs \
             to fix the settings; trying again will not help until then.",
            None,
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "Sign-in failed",
            "The sign-in provider could not complete the sign-in.",
            retry,
        ),
    };
    views::failure(
        shell,
        Failure {
            status,
            title,
            message,
            provider_said: description,
            try_again,
        },
    )
}

/// A sign-in step that could not use the provider.
fn provider_failure(shell: &Shell, state: &AppState, err: &OidcError, next: &str) -> Response {
    let provider = provider_name(state);
    let retry = Some(login_link(next));
    let (status, title, message, try_again) = match err {
        OidcError::Unreachable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in is unavailable".to_owned(),
            format!(
                "The sign-in service ({provider}) is not reachable right now. Please try again in a moment."
            ),
            retry,
        ),
        OidcError::BadResponse(_) => (
            StatusCode::BAD_GATEWAY,
            "The sign-in provider sent something unusable".to_owned(),
            format!(
                "The sign-in provider ({provider}) answered with something quotebook could not \
                 read. Please try again later; if it keeps happening, tell the site's administrator."
            ),
            retry,
        ),
        OidcError::IssuerMismatch { .. } => {
            tracing::error!(error = %err, "sign-in is misconfigured");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "Sign-in is not set up correctly".to_owned(),
                format!(
                    "The sign-in provider ({provider}) does not match quotebook's settings, so \
                     nobody can sign in until the site's administrator fixes them."
                ),
                None,
            )
        }
        OidcError::Rejected(_) => (
            StatusCode::BAD_REQUEST,
            "Sign-in could not be completed".to_owned(),
            "The sign-in provider did not accept this sign-in (it may have taken too long). \
             Please start again."
                .to_owned(),
            retry,
        ),
        OidcError::InvalidIdToken(_) => (
            StatusCode::BAD_REQUEST,
            "Sign-in could not be verified".to_owned(),
            "The sign-in could not be verified. Please start again.".to_owned(),
            retry,
        ),
    };
    views::failure(
        shell,
        Failure {
            status,
            title: &title,
            message: &message,
            provider_said: None,
            try_again,
        },
    )
}

/// The provider as a person can recognise it: its host.
fn provider_name(state: &AppState) -> String {
    let url = state.oidc.issuer().url();
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => url.to_string(),
    }
}

fn canonical_origin(state: &AppState) -> CanonicalOrigin {
    CanonicalOrigin::new(&state.settings.base_url, state.settings.trust_proxy_headers)
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

/// A form whose only field is the CSRF token (log out, sign out the others).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    pub csrf_token: Option<String>,
}

/// `POST /auth/logout`: ends the local session (CSRF-checked), then always sends the browser to
/// the provider's logout, so a shared computer is really signed out even when the local session
/// had already ended (expired, or logged out from another tab). Without a local session there is
/// nothing here to protect, and the provider's logout URL is public anyway.
#[handler]
pub async fn logout(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    StrictForm(form): StrictForm<CsrfForm>,
) -> AppResult<Response> {
    let id_token = match signed_in_user(&session) {
        Some(user) => {
            csrf::verify(req, &session, form.csrf_token.as_deref())?;
            // The local session goes first: even if the provider is unreachable, this cookie is dead.
            session.destroy();
            user.id_token
        }
        None => None,
    };
    let url = state
        .oidc
        .logout_url(id_token.as_deref(), &state.settings.base_url)
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
            "email_verified": user.email_verified,
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

fn see_other(location: &str) -> Response {
    Response::builder()
        .status(StatusCode::SEE_OTHER)
        .header("Location", location)
        .finish()
}
