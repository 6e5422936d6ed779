//! `/admin`: the users table (search as you type), the sync runs, and "Sync now" with a
//! progress bar that polls once a second and stops (htmx: status 286) when the run ends.

use maud::{Markup, html};
use poem::{
    IntoResponse, Request, Response, handler,
    http::StatusCode,
    web::{Data, Path, Query},
};
use serde::Deserialize;

use super::access::{self, Denied};
use crate::{
    auth::{csrf, session::Session, shell_for},
    error::{AppError, AppResult},
    startup::AppState,
    users::{
        search::{self, Cursor, Filter, Position},
        store::UserRow,
        streams::status::{self, Received, Waiting},
        sync_runs::{self, SyncMode, SyncRun, SyncTrigger},
    },
    web::{
        form::StrictForm,
        htmx::{self, HxRequest},
        layout::page,
    },
};

const PER_PAGE: u32 = 25;
/// Changes from Auth0 listed on the page.
const RECENT_CHANGES: i64 = 8;
/// htmx stops polling when it sees this status.
const STOP_POLLING: u16 = 286;

#[derive(Debug, Default, Deserialize)]
pub struct UsersQuery {
    q: Option<String>,
    /// Where the page starts (the table's Previous/Next links).
    cursor: Option<String>,
    /// The old page links (`OFFSET`), still honoured for bookmarks.
    page: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct SyncForm {
    mode: Option<String>,
    csrf_token: Option<String>,
}

fn require_admin(
    req: &Request,
    session: &Session,
    state: &AppState,
    changes_state: bool,
) -> AppResult<()> {
    match access::authorize(req, session, &state.settings, changes_state) {
        Ok(_) => Ok(()),
        Err(Denied::Unauthenticated) => Err(AppError::SignInRequired),
        Err(denied) => Err(AppError::Forbidden(denied.message().into())),
    }
}

#[handler]
pub async fn admin_page(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    Query(query): Query<UsersQuery>,
) -> AppResult<Response> {
    require_admin(req, &session, state, false)?;
    let token = csrf::token(&session)?;
    let users = users_table(state, &query).await?;
    let runs = sync_runs::recent(&state.db, 10).await?;
    let in_flight = runs.iter().find(|r| !r.status.is_finished()).cloned();
    let body = html! {
        h1.admin-page { "Admin" }
        section.card aria-labelledby="sync-heading" {
            h2 #sync-heading { "Sync users from Auth0" }
            form.actions method="post" action="/admin/sync" hx-post="/admin/sync" hx-target="#progress" hx-swap="innerHTML" {
                input type="hidden" name="csrf_token" value=(token);
                button type="submit" name="mode" value="incremental" { "Sync now (incremental)" }
                button.secondary type="submit" name="mode" value="full" { "Full sync" }
            }
            div #progress aria-live="polite" {
                @if let Some(run) = &in_flight { (progress(run)) }
            }
            div #runs hx-get="/admin/runs" hx-trigger="sync-finished from:body" hx-swap="innerHTML" {
                (runs_table(&runs))
            }
        }
        section.card aria-labelledby="streams-heading" {
            h2 #streams-heading { "Changes from Auth0" }
            (streams_card(state).await?)
        }
        section.card aria-labelledby="users-heading" {
            h2 #users-heading { "Users" }
            form method="get" action="/admin" role="search" {
                label for="user-search" { "Search by email or name" }
                input #user-search type="search" name="q" value=[query.q.as_deref()]
                    hx-get="/admin/users" hx-trigger="input changed delay:300ms, search"
                    hx-target="#users" hx-swap="innerHTML";
            }
            div #users { (users) }
        }
    };
    Ok(htmx::vary(
        page("Admin", &shell_for(&session, &state.settings), body).into_response(),
    ))
}

#[handler]
pub async fn users_fragment(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    Query(query): Query<UsersQuery>,
) -> AppResult<Markup> {
    require_admin(req, &session, state, false)?;
    users_table(state, &query).await
}

#[handler]
pub async fn runs_fragment(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
) -> AppResult<Markup> {
    require_admin(req, &session, state, false)?;
    Ok(runs_table(&sync_runs::recent(&state.db, 10).await?))
}

/// The streams card, polled every few seconds.
#[handler]
pub async fn streams_fragment(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
) -> AppResult<Markup> {
    require_admin(req, &session, state, false)?;
    streams_card(state).await
}

#[handler]
pub async fn start_sync(
    Data(state): Data<&AppState>,
    req: &Request,
    hx: HxRequest,
    session: Session,
    StrictForm(form): StrictForm<SyncForm>,
) -> AppResult<Response> {
    require_admin(req, &session, state, false)?;
    csrf::verify(req, &session, form.csrf_token.as_deref())?;
    let mode = match form.mode.as_deref() {
        None | Some("incremental") => SyncMode::Incremental,
        Some("full") => SyncMode::Full,
        Some(_) => {
            return Err(AppError::BadRequest(
                "Choose a full or incremental sync.".into(),
            ));
        }
    };
    let (run, _) = crate::users::job::trigger(&state.db, mode, SyncTrigger::Admin).await?;
    if !hx.0 {
        return Ok(htmx::redirect(hx, "/admin"));
    }
    Ok(progress(&run).into_response())
}

#[handler]
pub async fn sync_progress(
    Data(state): Data<&AppState>,
    req: &Request,
    session: Session,
    Path(id): Path<i64>,
) -> AppResult<Response> {
    require_admin(req, &session, state, false)?;
    let run = sync_runs::get(&state.db, id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("There is no sync run {id}.")))?;
    let mut response = progress(&run).into_response();
    if run.status.is_finished() {
        response.set_status(StatusCode::from_u16(STOP_POLLING).unwrap_or(StatusCode::OK));
        response.headers_mut().insert(
            "HX-Trigger",
            poem::http::HeaderValue::from_static("sync-finished"),
        );
    }
    Ok(response)
}

async fn users_table(state: &AppState, query: &UsersQuery) -> AppResult<Markup> {
    let q = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty());
    let position = match (query.cursor.as_deref(), query.page) {
        (Some(raw), _) => Position::Cursor(Cursor::decode(raw).map_err(|_| {
            AppError::BadRequest(
                "This page link is not valid any more. Start from the first page.".into(),
            )
        })?),
        (None, Some(page)) => Position::Offset(page.min(100_000)),
        (None, None) => Position::First,
    };
    let (page, total) = search::search(&state.db, &Filter::parse(q), position, PER_PAGE).await?;
    let pages = search::Total {
        count: ((total.count + i64::from(PER_PAGE) - 1) / i64::from(PER_PAGE)).max(1),
        exact: total.exact,
    };
    let link = |cursor: &Cursor| {
        let mut url = format!("/admin?cursor={}", cursor.encode());
        if let Some(q) = q {
            url.push_str("&q=");
            url.extend(url::form_urlencoded::byte_serialize(q.as_bytes()));
        }
        url
    };
    Ok(html! {
        p.muted {
            (search::describe(total)) @if total.count == 1 && total.exact { " user" } @else { " users" }
            @if let Some(q) = q { " matching “" (q) "”" }
        }
        div.table-wrap {
            table {
                thead { tr { th { "Name" } th { "Email" } th { "Last login" } th { "Synced" } th { "Status" } } }
                tbody {
                    @for user in &page.users { (user_row(user)) }
                    @if page.users.is_empty() { tr { td colspan="5" { "No users." } } }
                }
            }
        }
        nav.actions aria-label="Pages" {
            @if let Some(prev) = &page.prev { a.button.secondary href=(link(prev)) { "Previous" } }
            span.muted { "Page " (search::with_thousands(i64::from(page.number) + 1)) " of " (search::describe(pages)) }
            @if let Some(next) = &page.next { a.button.secondary href=(link(next)) { "Next" } }
        }
    })
}

fn user_row(user: &UserRow) -> Markup {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or("—".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    html! {
        tr {
            td { (user.name.as_deref().unwrap_or("—")) }
            td { (user.email.as_deref().unwrap_or("—")) }
            td { (when(user.last_login)) }
            td { (when(user.synced_at)) }
            td {
                @if user.deleted_at.is_some() { span.badge.deleted { "deleted" } }
                @else if user.blocked == Some(true) { span.badge { "blocked" } }
                @else { span.badge { "active" } }
            }
        }
    }
}

fn runs_table(runs: &[SyncRun]) -> Markup {
    html! {
        div.table-wrap {
            table {
                thead { tr { th { "Run" } th { "Mode" } th { "Trigger" } th { "Status" } th { "Fetched" } th { "Upserted" } th { "Deleted" } th { "Skipped" } th { "Finished" } } }
                tbody {
                    @for run in runs {
                        tr {
                            td { (run.id) }
                            td { (run.mode.as_str()) }
                            td { (run.trigger.as_str()) }
                            td { (run.status.as_str()) @if let Some(e) = &run.error { br; span.muted { (e) } } }
                            td { (run.fetched) }
                            td { (run.upserted) }
                            td { (run.deleted) }
                            td { (run.skipped) }
                            td { (run.finished_at.map_or("—".to_owned(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())) }
                        }
                    }
                    @if runs.is_empty() { tr { td colspan="9" { "No syncs yet." } } }
                }
            }
        }
    }
}

/// The progress bar of one run; polls itself while the run is in flight.
fn progress(run: &SyncRun) -> Markup {
    let url = format!("/admin/sync/{}/progress", run.id);
    let total = run.total.filter(|t| *t > 0);
    let label = format!(
        "Sync {} ({}): {}",
        run.id,
        run.mode.as_str(),
        run.status.as_str()
    );
    html! {
        div.sync-progress hx-get=[(!run.status.is_finished()).then_some(url.as_str())]
            hx-trigger="every 1s" hx-swap="outerHTML" data-status=(run.status.as_str()) {
            p { strong { (label) } }
            @if run.status.is_finished() {
                progress max="100" value="100" aria-label="Sync progress" {}
            } @else if let Some(total) = total {
                progress max=(total) value=(run.fetched.min(total)) aria-label="Sync progress" {}
            } @else {
                progress aria-label="Sync progress" {}
            }
            p.muted {
                (run.fetched) " fetched, " (run.upserted) " saved, " (run.deleted) " marked deleted"
                @if run.skipped > 0 { ", " (run.skipped) " skipped (see the log)" }
            }
            @if let Some(error) = &run.error { p.field-error { (error) } }
        }
    }
}

/// The last changes Auth0's streams delivered, how long each took, and what is waiting; it
/// polls itself, so an edit at Auth0 shows up here within seconds.
async fn streams_card(state: &AppState) -> AppResult<Markup> {
    let recent = status::recent(&state.db, RECENT_CHANGES).await?;
    let waiting = status::waiting(&state.db).await?;
    let streams = &state.settings.streams;
    let configured = [
        ("Event Stream", streams.events_token.is_some()),
        ("Log Stream", streams.log_stream_token.is_some()),
    ];
    Ok(html! {
        div #streams hx-get="/admin/streams" hx-trigger="every 2s" hx-swap="outerHTML" {
            p.muted {
                @for (i, (name, on)) in configured.iter().enumerate() {
                    @if i > 0 { " · " }
                    (name) ": " @if *on { "on" } @else { "off (see the README to set one up)" }
                }
            }
            (waiting_line(&waiting))
            @if let Some(last) = recent.first() {
                p { "Last received " (ago(last.received_at)) ": " strong { (last.r#type) } " for "
                    (user_label(last)) "." }
            } @else {
                p { "Nothing received yet." }
            }
            div.table-wrap {
                table {
                    thead { tr {
                        th { "Received" } th { "Stream" } th { "Change" } th { "User" }
                        th { "Auth0 → app" } th { "App → users" } th { "Outcome" }
                    } }
                    tbody {
                        @for change in &recent {
                            tr {
                                td { (change.received_at.format("%H:%M:%S")) }
                                td { (change.stream) }
                                td { (change.r#type) }
                                td { (user_label(change)) }
                                td { (seconds(change.delivery_lag())) }
                                td { (seconds(change.processing_lag())) }
                                td { (change.outcome.as_deref().unwrap_or("waiting")) }
                            }
                        }
                        @if recent.is_empty() { tr { td colspan="7" { "No changes yet." } } }
                    }
                }
            }
        }
    })
}

fn waiting_line(waiting: &Waiting) -> Markup {
    html! {
        p {
            @if waiting.changes == 0 {
                "Up to date: nothing waiting."
            } @else {
                (waiting.changes) " waiting"
                @if let Some(oldest) = waiting.oldest_received_at {
                    ", the oldest for " (seconds(Some(chrono::Utc::now() - oldest)))
                }
                "."
            }
            @if waiting.refreshes > 0 {
                " " (waiting.refreshes) " user refreshes queued."
            }
        }
    }
}

fn user_label(change: &Received) -> String {
    change
        .email
        .clone()
        .or_else(|| change.name.clone())
        .unwrap_or_else(|| change.user_id.clone())
}

/// `1.23 s`, or `—` when unknown.
fn seconds(duration: Option<chrono::Duration>) -> String {
    duration.map_or("—".to_owned(), |d| {
        format!("{:.2} s", d.num_milliseconds().max(0) as f64 / 1000.0)
    })
}

fn ago(at: chrono::DateTime<chrono::Utc>) -> String {
    let secs = (chrono::Utc::now() - at).num_seconds().max(0);
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        _ => at.format("%Y-%m-%d %H:%M").to_string(),
    }
}
