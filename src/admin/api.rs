//! The admin JSON API (`/api/admin`), described by OpenAPI (`/api/openapi.json`, Swagger UI at
//! `/api/docs`). Every failure is an RFC 9457 problem (`application/problem+json`); bad input is
//! a 4xx, never a 500.

use chrono::{DateTime, Utc};
use poem::{Request, web::Data};
use poem_openapi::{
    ApiResponse, Enum, Object, OpenApi,
    param::{Path, Query},
    payload::Json,
    types::MaybeUndefined,
};

use super::access::{self, Denied};
use crate::{
    auth::{revocation, session::Session},
    startup::AppState,
    users::{
        search::{self, Cursor, Filter, Position},
        store::{self, UserRow},
        sync_runs::{self, SyncMode, SyncRun, SyncTrigger},
    },
};

pub struct AdminApi;

#[derive(Debug, Clone, Copy, Default, Enum)]
#[oai(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Incremental,
    Full,
}

impl From<Mode> for SyncMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Incremental => SyncMode::Incremental,
            Mode::Full => SyncMode::Full,
        }
    }
}

/// Body of `POST /api/admin/sync`.
#[derive(Debug, Object)]
pub struct SyncRequest {
    /// `incremental` (the default when absent) or `full`.
    pub mode: MaybeUndefined<Mode>,
}

/// A sync run and its progress.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct SyncRunView {
    pub id: i64,
    /// `queued`, `running`, `succeeded` or `failed`.
    pub status: String,
    /// `full` or `incremental`.
    pub mode: String,
    /// `schedule`, `admin` or `cli`.
    pub trigger: String,
    pub fetched: i32,
    pub upserted: i32,
    pub deleted: i32,
    /// Profiles received but not stored (each is logged with its `user_id`): no usable
    /// `user_id`, or values Postgres refused even after removing U+0000.
    pub skipped: i32,
    pub pages: i32,
    /// Users the provider reported, when known.
    pub total: Option<i32>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<SyncRun> for SyncRunView {
    fn from(run: SyncRun) -> Self {
        Self {
            id: run.id,
            status: run.status.as_str().to_owned(),
            mode: run.mode.as_str().to_owned(),
            trigger: run.trigger.as_str().to_owned(),
            fetched: run.fetched,
            upserted: run.upserted,
            deleted: run.deleted,
            skipped: run.skipped,
            pages: run.pages,
            total: run.total,
            error: run.error,
            created_at: run.created_at,
            started_at: run.started_at,
            finished_at: run.finished_at,
        }
    }
}

/// A user copied from the identity provider.
// The row as stored, whose fields are listed once (`users::fields`), and whether the user is gone.
#[derive(Debug, Object)]
pub struct UserView {
    #[oai(flatten)]
    pub user: UserRow,
    /// Whether a full sync no longer found the user at the provider (`deleted_at` is set).
    pub deleted: bool,
}

impl From<UserRow> for UserView {
    fn from(user: UserRow) -> Self {
        Self {
            deleted: user.deleted_at.is_some(),
            user,
        }
    }
}

/// A page of users in email order (lowercased; users without an email last), then `user_id`.
#[derive(Debug, Object)]
#[oai(skip_serializing_if_is_none)]
pub struct UsersPage {
    pub users: Vec<UserView>,
    /// The number of this page, from 0 (counted along the cursors).
    pub page: u32,
    pub per_page: u32,
    /// How many users match: exact when `total_exact`, otherwise an estimate rounded to two
    /// significant digits (large results are estimated from a sample rather than counted).
    pub total: i64,
    pub total_exact: bool,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
    /// Pass as `cursor` for the previous page; absent on the first page.
    pub prev_cursor: Option<String>,
}

/// RFC 9457 problem details.
#[derive(Debug, Object)]
pub struct Problem {
    #[oai(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, ApiResponse)]
pub enum ApiProblem {
    /// The request is malformed (bad JSON, unknown mode, out-of-range parameter).
    #[oai(status = 400, content_type = "application/problem+json")]
    BadRequest(Json<Problem>),
    /// No credentials, or a wrong token.
    #[oai(status = 401, content_type = "application/problem+json")]
    Unauthorized(Json<Problem>),
    /// Signed in but not an admin, or a session request without a valid CSRF token.
    #[oai(status = 403, content_type = "application/problem+json")]
    Forbidden(Json<Problem>),
    #[oai(status = 404, content_type = "application/problem+json")]
    NotFound(Json<Problem>),
    /// The request body is too large.
    #[oai(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Json<Problem>),
    /// The body is not JSON (send `Content-Type: application/json`).
    #[oai(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Json<Problem>),
    /// The database is not answering.
    #[oai(status = 503, content_type = "application/problem+json")]
    Unavailable(Json<Problem>),
    #[oai(status = 500, content_type = "application/problem+json")]
    Internal(Json<Problem>),
}

fn problem(status: u16, title: &str, detail: impl Into<String>) -> Json<Problem> {
    Json(Problem {
        kind: "about:blank".into(),
        title: title.into(),
        status,
        detail: detail.into(),
    })
}

fn no_such_user() -> ApiProblem {
    ApiProblem::NotFound(problem(404, "Not Found", "There is no user with that id."))
}

impl From<Denied> for ApiProblem {
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Unauthenticated => {
                Self::Unauthorized(problem(401, "Unauthorized", denied.message()))
            }
            Denied::NotAdmin | Denied::Csrf => {
                Self::Forbidden(problem(403, "Forbidden", denied.message()))
            }
        }
    }
}

impl From<crate::users::sync::SyncError> for ApiProblem {
    fn from(err: crate::users::sync::SyncError) -> Self {
        match err {
            crate::users::sync::SyncError::Db(db) => db.into(),
            other => {
                tracing::error!(error = %other, "could not start a sync");
                Self::Unavailable(problem(
                    503,
                    "Service Unavailable",
                    "The sync could not be queued right now. Try again shortly.",
                ))
            }
        }
    }
}

impl From<sqlx::Error> for ApiProblem {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_bad_input(&err) {
            return Self::BadRequest(problem(400, "Bad Request", crate::db::BAD_INPUT_MESSAGE));
        }
        if crate::db::is_unavailable(&err) {
            // The route is on the request's span (`observability::named`).
            tracing::error!(error = %err, "admin API: the database is unavailable");
            return Self::Unavailable(problem(
                503,
                "Service Unavailable",
                "The database is not answering right now. Try again shortly.",
            ));
        }
        tracing::error!(error = %err, "admin API database error");
        Self::Internal(problem(
            500,
            "Internal Server Error",
            "Something went wrong on our side.",
        ))
    }
}

/// What ending a user's sessions did.
#[derive(Debug, Object)]
pub struct EndedSessions {
    pub user_id: String,
    /// How many sessions (signed-in browsers) were ended.
    pub ended: u64,
}

#[derive(Debug, ApiResponse)]
pub enum TriggerResponse {
    /// The run was queued, or one already in flight is returned.
    #[oai(status = 202)]
    Accepted(Json<SyncRunView>, #[oai(header = "Location")] String),
}

type ApiResult<T> = Result<T, ApiProblem>;

#[OpenApi]
impl AdminApi {
    /// Start a sync (or get the one already in flight).
    #[oai(path = "/sync", method = "post")]
    async fn trigger_sync(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        body: Json<SyncRequest>,
    ) -> ApiResult<TriggerResponse> {
        access::authorize(req, &session, &state.settings, true)?;
        let mode = match body.0.mode {
            MaybeUndefined::Undefined => Mode::default(),
            MaybeUndefined::Value(mode) => mode,
            MaybeUndefined::Null => {
                return Err(ApiProblem::BadRequest(problem(
                    400,
                    "Bad Request",
                    "`mode` must be \"incremental\" or \"full\" (or left out).",
                )));
            }
        };
        let (run, _created) =
            crate::users::job::trigger(&state.db, mode.into(), SyncTrigger::Admin).await?;
        let location = format!("/api/admin/sync/{}", run.id);
        Ok(TriggerResponse::Accepted(Json(run.into()), location))
    }

    /// One sync run.
    #[oai(path = "/sync/:id", method = "get")]
    async fn get_sync(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        id: Path<i64>,
    ) -> ApiResult<Json<SyncRunView>> {
        access::authorize(req, &session, &state.settings, false)?;
        match sync_runs::get(&state.db, id.0).await? {
            Some(run) => Ok(Json(run.into())),
            None => Err(ApiProblem::NotFound(problem(
                404,
                "Not Found",
                format!("There is no sync run {}.", id.0),
            ))),
        }
    }

    /// Recent sync runs, newest first.
    #[oai(path = "/sync", method = "get")]
    async fn list_syncs(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        /// How many runs (1-100, default 20).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        limit: Query<Option<u32>>,
    ) -> ApiResult<Json<Vec<SyncRunView>>> {
        access::authorize(req, &session, &state.settings, false)?;
        let runs = sync_runs::recent(&state.db, limit.0.unwrap_or(20)).await?;
        Ok(Json(runs.into_iter().map(Into::into).collect()))
    }

    /// Users, searchable by email or name.
    ///
    /// Pages are read with cursors: follow `next_cursor` / `prev_cursor` (every page costs the
    /// same however deep it is). `page=N` still works but is deprecated: it skips rows one by
    /// one, so deep pages are slow on a large tenant.
    #[oai(path = "/users", method = "get")]
    // poem-openapi takes each query parameter as an argument of its own.
    #[allow(clippy::too_many_arguments)]
    async fn list_users(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        /// Three or more characters: a case-insensitive substring of the email or name. One or
        /// two: the start of a word of either (words are separated by spaces and punctuation).
        #[oai(validator(max_length = 200))]
        q: Query<Option<String>>,
        /// Page number, from 0 (deprecated: use `cursor`). Ignored when `cursor` is given.
        #[oai(deprecated, validator(minimum(value = "0"), maximum(value = "100000")))]
        page: Query<Option<u32>>,
        /// Users per page (1-100, default 25).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        per_page: Query<Option<u32>>,
        /// `next_cursor` or `prev_cursor` from an earlier page, as received (404 for any other).
        #[oai(validator(max_length = 2000))]
        cursor: Query<Option<String>>,
    ) -> ApiResult<Json<UsersPage>> {
        access::authorize(req, &session, &state.settings, false)?;
        // A cursor names a page; one this API never handed out names none (404, as any
        // well-formed address that leads nowhere).
        let position = match (cursor.0.as_deref(), page.0) {
            (Some(raw), _) => Position::Cursor(Cursor::decode(raw).map_err(|err| {
                ApiProblem::NotFound(problem(404, "Not Found", format!("`cursor`: {err}.")))
            })?),
            (None, Some(page)) => Position::Offset(page),
            (None, None) => Position::First,
        };
        let per_page = per_page.0.unwrap_or(25);
        let filter = Filter::parse(q.0.as_deref());
        let (page, total) = search::search(&state.db, &filter, position, per_page).await?;
        Ok(Json(UsersPage {
            users: page.users.into_iter().map(Into::into).collect(),
            page: page.number,
            per_page,
            total: total.count,
            total_exact: total.exact,
            next_cursor: page.next.map(|c| c.encode()),
            prev_cursor: page.prev.map(|c| c.encode()),
        }))
    }

    /// Sign a user out everywhere: every session of theirs ends at once, on every instance;
    /// their next request is signed out. They can sign in again unless the provider refuses
    /// them (block or delete them there to keep them out).
    #[oai(path = "/users/:user_id/sessions", method = "delete")]
    async fn end_user_sessions(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        /// The provider's user id, e.g. `auth0|abc123` (URL-encoded in the path).
        #[oai(validator(max_length = 300))]
        user_id: Path<String>,
    ) -> ApiResult<Json<EndedSessions>> {
        access::authorize(req, &session, &state.settings, true)?;
        if store::get(&state.db, &user_id.0).await?.is_none() {
            return Err(no_such_user());
        }
        let ended = revocation::end_all_sessions_of(
            &state.db,
            &state.sessions,
            &user_id.0,
            revocation::Reason::Admin,
        )
        .await?;
        Ok(Json(EndedSessions {
            user_id: user_id.0,
            ended: ended.len() as u64,
        }))
    }

    /// One user.
    #[oai(path = "/users/:user_id", method = "get")]
    async fn get_user(
        &self,
        Data(state): Data<&AppState>,
        req: &Request,
        session: Session,
        /// The provider's user id, e.g. `auth0|abc123` (URL-encoded in the path).
        #[oai(validator(max_length = 300))]
        user_id: Path<String>,
    ) -> ApiResult<Json<UserView>> {
        access::authorize(req, &session, &state.settings, false)?;
        match store::get(&state.db, &user_id.0).await? {
            Some(row) => Ok(Json(row.into())),
            None => Err(no_such_user()),
        }
    }
}
