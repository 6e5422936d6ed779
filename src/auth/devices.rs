//! A person's own sessions: "Signed in on 3 devices. Sign out the others."
//!
//! Every browser a person signs in with is a session of theirs (`sessions.user_id`). The
//! signed-in home page loads the line about them after the page itself (htmx, on `load`), so
//! the page costs no more than before; without JavaScript it links to `/auth/sessions`, the
//! same content as a page. Signing out the others ends every other session of theirs at once,
//! on every instance (`revocation`); the one in hand stays.

use maud::{Markup, html};
use poem::{IntoResponse, Request, Response, handler, web::Data};

use super::{
    csrf, current_user::SignedIn, revocation, routes::CsrfForm, session::Session, shell_for,
};
use crate::{
    error::AppResult,
    startup::AppState,
    web::{
        form::StrictForm,
        htmx::{self, HxRequest},
        layout::page,
    },
};

/// Where the list lives (and the fragment comes from).
pub const PATH: &str = "/auth/sessions";
/// Where the form posts.
pub const SIGN_OUT_OTHERS: &str = "/auth/sessions/others";

/// `GET /auth/sessions`: how many devices the person is signed in on, and the button that signs
/// out the others: a fragment for htmx, a page otherwise.
#[handler]
pub async fn sessions(
    Data(state): Data<&AppState>,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
) -> AppResult<Response> {
    let token = csrf::token(&session)?;
    let devices = revocation::count_sessions_of(&state.db, &user.sub).await?;
    let summary = summary(devices, &token, None);
    Ok(respond(state, &session, hx, summary))
}

/// `POST /auth/sessions/others` (CSRF-checked): ends every other session of the person.
#[handler]
pub async fn sign_out_others(
    Data(state): Data<&AppState>,
    req: &Request,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
    StrictForm(form): StrictForm<CsrfForm>,
) -> AppResult<Response> {
    csrf::verify(req, &session, form.csrf_token.as_deref())?;
    // Only a session read from the store can be told apart from the others; a signed-in
    // request always has one.
    let ended = match session.stored_id() {
        Some(this_one) => {
            revocation::end_other_sessions(&state.db, &state.sessions, &user.sub, &this_one).await?
        }
        None => 0,
    };
    if !hx.0 {
        return Ok(htmx::redirect(hx, PATH));
    }
    let token = csrf::token(&session)?;
    let devices = revocation::count_sessions_of(&state.db, &user.sub).await?;
    Ok(respond(
        state,
        &session,
        hx,
        summary(devices, &token, Some(ended)),
    ))
}

fn respond(state: &AppState, session: &Session, hx: HxRequest, summary: Markup) -> Response {
    let response = if hx.0 {
        summary.into_response()
    } else {
        page(
            "Where you are signed in",
            &shell_for(session, &state.settings),
            html! {
                section.card {
                    h1 { "Where you are signed in" }
                    (summary)
                    p { a href="/" { "Back to your quote" } }
                }
            },
        )
        .into_response()
    };
    htmx::vary(response)
}

/// The home page's placeholder: replaced by [`summary`] once the page has loaded; without
/// JavaScript, a link to the page.
pub fn placeholder() -> Markup {
    html! {
        div #devices.devices hx-get=(PATH) hx-trigger="load" hx-swap="outerHTML" {
            a href=(PATH) { "Where you are signed in" }
        }
    }
}

/// "Signed in on N devices" with the form that signs out the others (when there are others),
/// and what the last sign-out did.
fn summary(devices: i64, csrf_token: &str, ended: Option<u64>) -> Markup {
    html! {
        div #devices.devices role="status" aria-live="polite" {
            @if let Some(ended) = ended {
                p.status {
                    "Signed out of " (ended) " other " (plural(ended, "device", "devices")) "."
                }
            }
            @if devices > 1 {
                p {
                    "Signed in on " (devices) " devices."
                }
                form method="post" action=(SIGN_OUT_OTHERS) hx-post=(SIGN_OUT_OTHERS)
                    hx-target="#devices" hx-swap="outerHTML" {
                    input type="hidden" name="csrf_token" value=(csrf_token);
                    button.secondary type="submit" { "Sign out the others" }
                }
            } @else {
                p.muted { "Signed in on this device only." }
            }
        }
    }
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}
