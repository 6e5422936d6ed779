//! Quote routes. htmx requests get fragments; plain form posts get a 303 back to `/` (or the
//! full page with the form when validation fails). Every state change is CSRF-checked, and the
//! user id comes only from the session.

use maud::{Markup, html};
use poem::{
    IntoResponse, Request, Response, handler,
    http::{Method, StatusCode},
    web::Data,
};
use serde::Deserialize;

use super::{
    batched_saves::Save,
    queries::{self, Precondition, SaveOutcome, StoredQuote},
    quote::Quote,
    views::{self, FormState},
};
use crate::{
    auth::{csrf, current_user::SignedIn, session::Session, shell_for},
    error::{AppError, AppResult},
    startup::AppState,
    web::{
        form::StrictForm,
        htmx::{self, HxRequest},
    },
};

#[derive(Debug, Deserialize)]
pub struct QuoteForm {
    #[serde(default)]
    message: String,
    version: Option<String>,
    csrf_token: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CsrfOnly {
    csrf_token: Option<String>,
}

/// `/`: the login box, or the quote card.
#[handler]
pub async fn home(Data(state): Data<&AppState>, session: Session) -> AppResult<Response> {
    let shell = shell_for(&session, &state.settings);
    let Some(user) = crate::auth::current_user::signed_in_user(&session) else {
        return Ok(vary(views::home_signed_out(&shell)));
    };
    let token = csrf::token(&session)?;
    let card = match state.quotes.get(&user.sub).await? {
        Some(quote) => views::display(&quote, &token),
        None => views::form(&FormState::default(), &token),
    };
    Ok(vary(views::home_signed_in(&shell, card)))
}

/// `GET /quote`: the display fragment (Cancel), or the empty form when there is no quote.
#[handler]
pub async fn show(
    Data(state): Data<&AppState>,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
) -> AppResult<Response> {
    if !hx.0 {
        return Ok(htmx::redirect(hx, "/"));
    }
    let token = csrf::token(&session)?;
    let card = match state.quotes.get(&user.sub).await? {
        Some(quote) => views::display(&quote, &token),
        None => views::form(&FormState::default(), &token),
    };
    Ok(vary(card))
}

/// `GET /quote/edit`: the edit form, as a fragment or (without JS) a full page.
#[handler]
pub async fn edit(
    Data(state): Data<&AppState>,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
) -> AppResult<Response> {
    let token = csrf::token(&session)?;
    let current = state.quotes.get(&user.sub).await?;
    let form_state = FormState {
        text: current.as_ref().map_or("", |q| q.message.as_str()),
        version: current.as_ref().map(StoredQuote::version),
        ..FormState::default()
    };
    let card = views::form(&form_state, &token);
    Ok(render(state, &session, hx, card, StatusCode::OK))
}

/// `POST /quote` (create or replace; plain forms and htmx) and `PUT /quote` (htmx update).
#[handler]
pub async fn save(
    Data(state): Data<&AppState>,
    req: &Request,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
    StrictForm(form): StrictForm<QuoteForm>,
) -> AppResult<Response> {
    csrf::verify(req, &session, form.csrf_token.as_deref())?;
    let token = csrf::token(&session)?;
    let precondition = match form.version.as_deref().map(queries::parse_version) {
        Some(Some(version)) => Precondition::Version(version),
        Some(None) => {
            return Err(AppError::BadRequest(
                "The form's version is not valid. Reload the page and try again.".into(),
            ));
        }
        None if req.method() == Method::PUT => Precondition::Any,
        None => Precondition::Absent,
    };

    let quote = match Quote::parse(&form.message) {
        Ok(quote) => quote,
        Err(err) => {
            let card = views::form(
                &FormState {
                    text: &form.message,
                    version: form.version.clone(),
                    error: Some(err.to_string()),
                    newer: None,
                },
                &token,
            );
            return Ok(render(
                state,
                &session,
                hx,
                card,
                StatusCode::UNPROCESSABLE_ENTITY,
            ));
        }
    };

    let save = Save {
        user_id: user.sub.clone(),
        quote,
        precondition,
    };
    match state.saves.save(save.clone()).await? {
        SaveOutcome::Saved(saved) if hx.0 => Ok(vary(html! {
            (views::display(&saved, &token))
            (views::status("Your quote was saved."))
        })),
        SaveOutcome::Saved(_) => Ok(htmx::redirect(hx, "/")),
        SaveOutcome::Conflict(latest) => {
            let card = views::form(
                &FormState {
                    text: save.quote.as_str(),
                    version: Some(latest.version()),
                    error: None,
                    newer: Some(&latest.message),
                },
                &token,
            );
            Ok(render(state, &session, hx, card, StatusCode::CONFLICT))
        }
        // The account was removed while this session lived: the session ends, and signing in
        // again (which recreates the `users` row) comes before writing anything.
        SaveOutcome::NoUser => {
            session.destroy();
            Ok(htmx::redirect(hx, "/auth/login?next=%2F"))
        }
    }
}

/// `DELETE /quote` (htmx): deletes and swaps in the empty form.
#[handler]
pub async fn delete(
    Data(state): Data<&AppState>,
    req: &Request,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
) -> AppResult<Response> {
    // htmx 2 sends DELETE parameters in the query string; the header carries the token.
    let form_token = req
        .uri()
        .query()
        .and_then(|q| serde_urlencoded::from_str::<CsrfOnly>(q).ok())
        .and_then(|f| f.csrf_token);
    csrf::verify(req, &session, form_token.as_deref())?;
    delete_and_respond(state, &session, hx, &user.sub).await
}

/// `POST /quote/delete`: the no-JS delete.
#[handler]
pub async fn delete_form(
    Data(state): Data<&AppState>,
    req: &Request,
    hx: HxRequest,
    session: Session,
    SignedIn(user): SignedIn,
    StrictForm(form): StrictForm<CsrfOnly>,
) -> AppResult<Response> {
    csrf::verify(req, &session, form.csrf_token.as_deref())?;
    delete_and_respond(state, &session, hx, &user.sub).await
}

async fn delete_and_respond(
    state: &AppState,
    session: &Session,
    hx: HxRequest,
    user_id: &str,
) -> AppResult<Response> {
    queries::delete(&state.db, user_id).await?;
    if !hx.0 {
        return Ok(htmx::redirect(hx, "/"));
    }
    let token = csrf::token(session)?;
    Ok(vary(html! {
        (views::form(&FormState::default(), &token))
        (views::status("Your quote was deleted."))
    }))
}

/// A fragment for htmx, or the full page around it for a plain request.
fn render(
    state: &AppState,
    session: &Session,
    hx: HxRequest,
    card: Markup,
    status: StatusCode,
) -> Response {
    let mut response = if hx.0 {
        // The status region must not keep announcing an earlier success.
        let note = match status {
            StatusCode::UNPROCESSABLE_ENTITY => "Not saved: see the message under the text box.",
            StatusCode::CONFLICT => "Not saved: this quote was changed elsewhere.",
            _ => "",
        };
        vary(html! { (card) (views::status(note)) })
    } else {
        vary(views::home_signed_in(
            &shell_for(session, &state.settings),
            card,
        ))
    };
    response.set_status(status);
    response
}

fn vary(markup: Markup) -> Response {
    htmx::vary(markup.into_response())
}
