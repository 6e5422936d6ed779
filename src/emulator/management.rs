//! The Management API subset the sync uses, under `/api/v2`: users (list, search, get, create,
//! update, delete) and export jobs, behind a bearer token from client credentials, with Auth0's
//! rate-limit headers and error bodies (`{statusCode, error, message, errorCode}`).
//! https://auth0.com/docs/api/management/v2/users/get-users

use std::sync::Arc;

use poem::{
    Endpoint, EndpointExt, IntoResponse, Request, Response, Route, get, handler,
    http::{HeaderValue, Method, StatusCode},
    post,
    web::{Data, Path},
};
use serde_json::{Map, Value, json, value::RawValue};

use super::{
    AccessGrant, Shared,
    backchannel::Initiator,
    exports,
    faults::Injected,
    form_map,
    oidc::bearer,
    rate_limit::Decision,
    search::{self, Filter, Sort},
    users::{CONNECTION, NewUser, StoreError, User, UserPatch},
};

/// Auth0 caps `per_page` at 100 and search results at the first 1000.
const MAX_PER_PAGE: usize = 100;
const DEFAULT_PER_PAGE: usize = 50;
const PAGING_CAP: usize = 1000;
const BODY_LIMIT: usize = 256 * 1024;

pub fn routes() -> impl Endpoint<Output = Response> {
    Route::new()
        .at("/users", get(list_users).post(create_user))
        .at(
            "/users/:id",
            get(get_user).patch(update_user).delete(delete_user),
        )
        .at("/jobs/users-exports", post(exports::create_job))
        .at("/jobs/:id", get(exports::job_status))
        .around(guard)
}

/// A Management API failure, rendered as Auth0's `{statusCode, error, message, errorCode}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    error_code: &'static str,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, error_code: &'static str) -> Self {
        Self {
            status,
            message: message.into(),
            error_code,
        }
    }

    pub fn bad_request(message: impl Into<String>, error_code: &'static str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, error_code)
    }

    pub fn into_response(self) -> Response {
        api_error(self.status, &self.message, self.error_code)
    }
}

/// An error shaped like the Management API's.
pub fn api_error(status: StatusCode, message: &str, error_code: &str) -> Response {
    super::json_response(
        status,
        &json!({
            "statusCode": status.as_u16(),
            "error": status.canonical_reason().unwrap_or("Error"),
            "message": message,
            "errorCode": error_code,
        }),
    )
}

fn with_rate_headers(mut response: Response, decision: &Decision) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-ratelimit-limit", decision.limit.to_string()),
        ("x-ratelimit-remaining", decision.remaining.to_string()),
        ("x-ratelimit-reset", decision.reset.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}

/// The answer for an injected failure; `None` when the request should proceed.
pub(crate) async fn injected_fault(shared: &Shared) -> Option<Response> {
    let (injected, latency) = shared.faults.next();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match injected {
        Some(Injected::Hang(duration)) => {
            tokio::time::sleep(duration).await;
            None
        }
        Some(Injected::Fail(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let response = match status {
                StatusCode::TOO_MANY_REQUESTS => {
                    with_rate_headers(too_many_requests(), &shared.faults.rate_limit.exhausted())
                }
                _ => api_error(
                    status,
                    "Injected failure (emulator fault switch)",
                    "emulated_fault",
                ),
            };
            Some(response)
        }
        None => None,
    }
}

fn too_many_requests() -> Response {
    api_error(
        StatusCode::TOO_MANY_REQUESTS,
        "Global limit has been reached",
        "too_many_requests",
    )
}

/// The scope a Management API request needs.
fn required_scope(method: &Method, path: &str) -> &'static str {
    match *method {
        Method::POST if path.ends_with("/users") => "create:users",
        Method::PATCH => "update:users",
        Method::DELETE => "delete:users",
        _ => "read:users",
    }
}

/// Faults, rate limit and authentication, in that order, for every `/api/v2` request.
async fn guard<E: Endpoint>(next: Arc<E>, req: Request) -> poem::Result<Response> {
    let Some(shared) = req.data::<Arc<Shared>>().cloned() else {
        return Ok(api_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "emulator state missing",
            "internal",
        ));
    };
    shared.faults.count_management_request();
    if let Some(response) = injected_fault(&shared).await {
        // An injected 429 reports an empty budget; other failures still count against it.
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            return Ok(response);
        }
        let decision = shared.faults.rate_limit.check();
        return Ok(with_rate_headers(response, &decision));
    }
    let decision = shared.faults.rate_limit.check();
    if !decision.allowed {
        return Ok(with_rate_headers(too_many_requests(), &decision));
    }
    if let Err(response) = authorize(&shared, &req) {
        return Ok(with_rate_headers(*response, &decision));
    }
    let response = match next.call(req).await {
        Ok(output) => output.into_response(),
        Err(err) => {
            let status = err.status();
            let message = match status {
                StatusCode::NOT_FOUND => "Not Found".to_owned(),
                StatusCode::METHOD_NOT_ALLOWED => "Method Not Allowed".to_owned(),
                _ => err.to_string(),
            };
            api_error(status, &message, "invalid_request")
        }
    };
    Ok(with_rate_headers(response, &decision))
}

/// Checks the bearer token; the failure as a ready response (401 carries `WWW-Authenticate`).
fn authorize(shared: &Shared, req: &Request) -> Result<(), Box<Response>> {
    let unauthorized = |message: &str| {
        let mut response = api_error(StatusCode::UNAUTHORIZED, message, "invalid_token");
        response.headers_mut().insert(
            "www-authenticate",
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        Box::new(response)
    };
    let Some(token) = bearer(req) else {
        return Err(unauthorized("Missing authentication"));
    };
    let grant = shared.grants().tokens.get(token).cloned();
    match grant {
        Some(AccessGrant::Management { scopes, expires }) => {
            if expires <= std::time::Instant::now() {
                return Err(unauthorized(
                    "Expired token received for JSON Web Token validation",
                ));
            }
            let needed = required_scope(req.method(), req.uri().path());
            if scopes.iter().any(|s| s == needed) {
                Ok(())
            } else {
                Err(Box::new(api_error(
                    StatusCode::FORBIDDEN,
                    &format!("Insufficient scope, expected any of: {needed}"),
                    "insufficient_scope",
                )))
            }
        }
        Some(AccessGrant::User { .. }) => Err(unauthorized(&format!(
            "Bad audience: the token is not for {}",
            shared.management_audience()
        ))),
        None => Err(unauthorized("Invalid token")),
    }
}

fn query_error(property: &str, detail: &str) -> ApiError {
    ApiError::bad_request(
        format!("Query validation error: '{detail}' on property {property}."),
        "invalid_query_string",
    )
}

fn parse_number(
    params: &std::collections::HashMap<String, String>,
    name: &str,
) -> Result<Option<usize>, ApiError> {
    match params.get(name) {
        None => Ok(None),
        Some(raw) => raw.parse::<usize>().map(Some).map_err(|_| {
            query_error(
                name,
                &format!("Invalid value \"{raw}\", expected a whole number"),
            )
        }),
    }
}

fn parse_flag(
    params: &std::collections::HashMap<String, String>,
    name: &str,
    default: bool,
) -> Result<bool, ApiError> {
    match params.get(name).map(String::as_str) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(raw) => Err(query_error(
            name,
            &format!("Invalid value \"{raw}\", expected true or false"),
        )),
    }
}

/// Applies `fields` / `include_fields` to a user object.
fn select_fields(mut user: Value, fields: &Option<Vec<String>>, include: bool) -> Value {
    if let Some(object) = user.as_object_mut() {
        object.retain(|key, _| selected(fields, include, key));
    }
    user
}

/// Whether `fields` / `include_fields` keep the top-level field `key`.
fn selected(fields: &Option<Vec<String>>, include: bool, key: &str) -> bool {
    fields
        .as_ref()
        .is_none_or(|fields| fields.iter().any(|f| f == key) == include)
}

fn fields_param(params: &std::collections::HashMap<String, String>) -> Option<Vec<String>> {
    params.get("fields").map(|raw| {
        raw.split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect()
    })
}

/// `GET /api/v2/users`: list or search (v3), paged.
#[handler]
async fn list_users(req: &Request, shared: Data<&Arc<Shared>>) -> Response {
    let params = form_map(req.uri().query().unwrap_or(""));
    const KNOWN: [&str; 10] = [
        "page",
        "per_page",
        "include_totals",
        "sort",
        "connection",
        "fields",
        "include_fields",
        "q",
        "search_engine",
        "primary_order",
    ];
    if let Some(unknown) = params.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return api_error(
            StatusCode::BAD_REQUEST,
            &format!("Query validation error: 'Additional properties not allowed: {unknown}'."),
            "invalid_query_string",
        );
    }
    let result = (|| -> Result<Response, ApiError> {
        let page = parse_number(&params, "page")?;
        let per_page = parse_number(&params, "per_page")?.unwrap_or(DEFAULT_PER_PAGE);
        if per_page > MAX_PER_PAGE {
            return Err(query_error(
                "per_page",
                &format!("Too big value ({per_page}), max {MAX_PER_PAGE}"),
            ));
        }
        // Without `page`, Auth0 returns at most 50 records whatever per_page says.
        let per_page = if page.is_none() {
            per_page.min(DEFAULT_PER_PAGE)
        } else {
            per_page
        };
        let page = page.unwrap_or(0);
        let include_totals = parse_flag(&params, "include_totals", false)?;
        let include_fields = parse_flag(&params, "include_fields", true)?;
        parse_flag(&params, "primary_order", true)?;
        let sort = match params.get("sort").filter(|s| !s.is_empty()) {
            Some(raw) => Sort::parse(raw).map_err(|e| query_error("sort", &e))?,
            None => Sort::DEFAULT,
        };
        match params.get("search_engine").map(String::as_str) {
            None | Some("v3") => {}
            Some(other) => {
                return Err(query_error(
                    "search_engine",
                    &format!("The {other} search engine is not available; use v3"),
                ));
            }
        }
        let filter = match params.get("q").map(|q| q.trim()).filter(|q| !q.is_empty()) {
            Some(q) => search::parse_query(q).map_err(|e| {
                ApiError::bad_request(format!("Invalid query string: {e}"), "invalid_query_string")
            })?,
            None => Filter::default(),
        };
        // https://auth0.com/docs/manage-users/user-search/view-search-results-by-page
        let end = page.checked_add(1).and_then(|p| p.checked_mul(per_page));
        if end.is_none_or(|end| end > PAGING_CAP) {
            return Err(ApiError::bad_request(
                "You can only page through the first 1000 records. See https://auth0.com/docs/users/search/v3/view-search-results-by-page",
                "invalid_paging",
            ));
        }
        let start = page * per_page;
        let found = shared.users.search(&filter, sort, start, per_page);
        let fields = fields_param(&params);
        // As text: a profile may hold values serde_json cannot (`User::as_sent_text`).
        let users: Vec<Box<RawValue>> = found
            .users
            .iter()
            .map(|u| {
                u.to_json_text(select_fields(u.to_json(), &fields, include_fields), |key| {
                    selected(&fields, include_fields, key)
                })
            })
            .collect();
        #[derive(serde::Serialize)]
        struct Page {
            start: usize,
            limit: usize,
            length: usize,
            total: usize,
            users: Vec<Box<RawValue>>,
        }
        let body = if include_totals {
            serde_json::to_string(&Page {
                start,
                limit: per_page,
                length: users.len(),
                total: found.total,
                users,
            })
        } else {
            serde_json::to_string(&users)
        };
        Ok(super::json_text_response(
            StatusCode::OK,
            body.unwrap_or_default(),
        ))
    })();
    result.unwrap_or_else(ApiError::into_response)
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "The user does not exist.",
        "inexistent_user",
    )
}

#[handler]
async fn get_user(req: &Request, Path(id): Path<String>, shared: Data<&Arc<Shared>>) -> Response {
    let params = form_map(req.uri().query().unwrap_or(""));
    let include = match parse_flag(&params, "include_fields", true) {
        Ok(include) => include,
        Err(err) => return err.into_response(),
    };
    match shared.users.get(&id) {
        Some(user) => {
            let fields = fields_param(&params);
            let body = user.to_json_text(select_fields(user.to_json(), &fields, include), |key| {
                selected(&fields, include, key)
            });
            super::json_text_response(StatusCode::OK, body.get().to_owned())
        }
        None => not_found().into_response(),
    }
}

/// Reads a JSON object body, or answers 400 as Auth0 does.
pub async fn json_object(body: poem::Body) -> Result<Map<String, Value>, ApiError> {
    let bytes = body.into_bytes_limit(BODY_LIMIT).await.map_err(|_| {
        ApiError::bad_request(
            "Payload validation error: the body is too large or unreadable",
            "invalid_body",
        )
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request(
            "Payload validation error: 'Expected type object'.",
            "invalid_body",
        )),
        Err(err) => Err(ApiError::bad_request(
            format!("Invalid request payload JSON format: {err}"),
            "invalid_body",
        )),
    }
}

fn payload_error(detail: &str, property: &str) -> ApiError {
    ApiError::bad_request(
        format!("Payload validation error: '{detail}' on property {property}."),
        "invalid_body",
    )
}

/// A metadata object from a body, and the roles split out of `app_metadata.roles`.
type Metadata = (Option<Map<String, Value>>, Option<Vec<String>>);

/// The body's fields, checked for type; unknown properties are refused like Auth0 does.
struct Payload(Map<String, Value>);

impl Payload {
    fn check_known(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.keys().find(|k| !known.contains(&k.as_str())) {
            Some(unknown) => Err(ApiError::bad_request(
                format!(
                    "Payload validation error: 'Additional properties not allowed: {unknown}'."
                ),
                "invalid_body",
            )),
            None => Ok(()),
        }
    }

    fn string(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(payload_error(
                &format!("Expected type string but found type {}", kind(other)),
                name,
            )),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(payload_error(
                &format!("Expected type boolean but found type {}", kind(other)),
                name,
            )),
        }
    }

    /// `app_metadata` or `user_metadata`; `roles` in app_metadata is split out.
    fn metadata(&self, name: &str) -> Result<Metadata, ApiError> {
        let mut map = match self.0.get(name) {
            None => return Ok((None, None)),
            Some(Value::Object(map)) => map.clone(),
            Some(other) => {
                return Err(payload_error(
                    &format!("Expected type object but found type {}", kind(other)),
                    name,
                ));
            }
        };
        let roles = match (name, map.remove("roles")) {
            ("app_metadata", Some(Value::Array(items))) => Some(
                items
                    .iter()
                    .map(|r| r.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        payload_error("roles must be an array of strings", "app_metadata.roles")
                    })?,
            ),
            ("app_metadata", Some(Value::Null)) => Some(Vec::new()),
            ("app_metadata", Some(_)) => {
                return Err(payload_error(
                    "roles must be an array of strings",
                    "app_metadata.roles",
                ));
            }
            (_, Some(value)) => {
                map.insert("roles".into(), value);
                None
            }
            (_, None) => None,
        };
        Ok((Some(map), roles))
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn store_error(err: StoreError) -> ApiError {
    match err {
        StoreError::NotFound => not_found(),
        StoreError::Conflict => ApiError::new(
            StatusCode::CONFLICT,
            "The user already exists.",
            "auth0_idp_error",
        ),
        StoreError::Invalid(message) => ApiError::bad_request(message, "invalid_body"),
    }
}

/// `POST /api/v2/users` (https://auth0.com/docs/api/management/v2/users/post-users).
#[handler]
async fn create_user(shared: Data<&Arc<Shared>>, body: poem::Body) -> Response {
    let result = async {
        let payload = Payload(json_object(body).await?);
        payload.check_known(&[
            "connection",
            "email",
            "email_verified",
            "verify_email",
            "password",
            "user_id",
            "name",
            "nickname",
            "picture",
            "given_name",
            "family_name",
            "blocked",
            "app_metadata",
            "user_metadata",
            "username",
        ])?;
        match payload.string("connection")? {
            Some(connection) if connection == CONNECTION => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "The connection does not exist.",
                    "inexistent_connection",
                ));
            }
            None => {
                return Err(payload_error(
                    "Missing required property: connection",
                    "connection",
                ));
            }
        }
        let Some(email) = payload.string("email")? else {
            return Err(payload_error("Missing required property: email", "email"));
        };
        let (app_metadata, roles) = payload.metadata("app_metadata")?;
        let (user_metadata, _) = payload.metadata("user_metadata")?;
        let new = NewUser {
            email,
            user_id: payload.string("user_id")?,
            name: payload.string("name")?,
            nickname: payload.string("nickname")?,
            picture: payload.string("picture")?,
            given_name: payload.string("given_name")?,
            family_name: payload.string("family_name")?,
            email_verified: payload.bool("email_verified")?.unwrap_or(false),
            blocked: payload.bool("blocked")?.unwrap_or(false),
            roles: roles.unwrap_or_default(),
            app_metadata: app_metadata.unwrap_or_default(),
            user_metadata: user_metadata.unwrap_or_default(),
            ..NewUser::default()
        };
        // Type-check what the emulator does not store, too.
        payload.string("password")?;
        payload.string("username")?;
        payload.bool("verify_email")?;
        let user = shared.users.create(new).map_err(store_error)?;
        let body = user.to_json();
        shared.streams.user_created(&user);
        shared.streams.management_write(
            "Create a User",
            "post",
            "/api/v2/users",
            201,
            Some(body.clone()),
        );
        Ok(super::json_response(StatusCode::CREATED, &body))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

/// `PATCH /api/v2/users/{id}` (https://auth0.com/docs/api/management/v2/users/patch-users-by-id).
#[handler]
async fn update_user(
    Path(id): Path<String>,
    shared: Data<&Arc<Shared>>,
    body: poem::Body,
) -> Response {
    let result = async {
        let payload = Payload(json_object(body).await?);
        payload.check_known(&[
            "email",
            "email_verified",
            "verify_email",
            "password",
            "name",
            "nickname",
            "picture",
            "given_name",
            "family_name",
            "blocked",
            "app_metadata",
            "user_metadata",
            "connection",
            "username",
        ])?;
        let (app_metadata, roles) = payload.metadata("app_metadata")?;
        let (user_metadata, _) = payload.metadata("user_metadata")?;
        let patch = UserPatch {
            email: payload.string("email")?,
            email_verified: payload.bool("email_verified")?,
            name: payload.string("name")?,
            nickname: payload.string("nickname")?,
            picture: payload.string("picture")?,
            given_name: payload.string("given_name")?,
            family_name: payload.string("family_name")?,
            blocked: payload.bool("blocked")?,
            roles,
            app_metadata,
            user_metadata,
        };
        payload.string("password")?;
        payload.string("connection")?;
        payload.string("username")?;
        payload.bool("verify_email")?;
        let user = update(&shared, &id, patch).map_err(store_error)?;
        shared.streams.user_updated(&user);
        shared
            .streams
            .management_write("Update a User", "patch", &user_path(&id), 200, None);
        Ok(super::json_response(StatusCode::OK, &user.to_json()))
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}

/// `DELETE /api/v2/users/{id}`: 204 whether or not the user existed, as Auth0 answers.
#[handler]
async fn delete_user(Path(id): Path<String>, shared: Data<&Arc<Shared>>) -> Response {
    let gone = shared.users.get(&id);
    if delete(&shared, &id)
        && let Some(user) = gone
    {
        shared.streams.user_deleted(&user);
        shared
            .streams
            .management_write("Delete a User", "delete", &user_path(&id), 204, None);
        shared
            .streams
            .log("sdu", "User successfully deleted", Some(&user), json!({}));
    }
    Response::builder().status(StatusCode::NO_CONTENT).finish()
}

/// `/api/v2/users/{id}` as a tenant log records the request: the id percent-encoded, as
/// Auth0's SDKs send it (`auth0%7C5c6b...`).
fn user_path(id: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    format!(
        "/api/v2/users/{}",
        percent_encoding::utf8_percent_encode(id, UNRESERVED)
    )
}

/// Updates a user with what follows at the tenant: blocking one ends their single sign-on
/// sessions, and the application gets a logout token for each (`account-deactivated`).
pub(crate) fn update(
    shared: &Arc<Shared>,
    user_id: &str,
    patch: UserPatch,
) -> Result<User, StoreError> {
    let blocks = patch.blocked == Some(true);
    let user = shared.users.update(user_id, patch)?;
    if blocks {
        super::oidc::end_user_sessions(shared, &user.user_id, Initiator::AccountDeactivated);
    }
    Ok(user)
}

/// Deletes a user with what follows at the tenant: their single sign-on sessions end, and the
/// application gets a logout token for each (`account-deleted`). `false`: there was no such user.
pub(crate) fn delete(shared: &Arc<Shared>, user_id: &str) -> bool {
    let deleted = shared.users.delete(user_id);
    super::oidc::end_user_sessions(shared, user_id, Initiator::AccountDeleted);
    deleted
}
