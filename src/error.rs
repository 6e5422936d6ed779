//! One error type for the HTTP layer, and the middleware that renders every failure for its
//! audience: an HTML page for browsers, a fragment for htmx, `application/problem+json` (RFC 9457)
//! under `/api`. 5xx causes are logged with the request id and never shown.

use poem::{
    Endpoint, IntoResponse, Request, Response,
    error::ResponseError,
    http::{StatusCode, header},
};
use serde_json::json;

use crate::web::{
    htmx::HxRequest,
    layout::{Shell, message_fragment, page},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("Please sign in to continue.")]
    Unauthorized,
    /// A page or action that needs a signed-in person: browsers are sent to log in.
    #[error("Please sign in to continue.")]
    SignInRequired,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// The database could not be reached; the cause (for the log) is a sqlx error's text, which
    /// never holds a connection string or password.
    #[error("database unavailable: {0}")]
    DatabaseUnavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("internal error: {0:#}")]
    Internal(#[from] anyhow::Error),
}

impl From<crate::users::sync::SyncError> for AppError {
    fn from(err: crate::users::sync::SyncError) -> Self {
        match err {
            crate::users::sync::SyncError::Db(db) => Self::Database(db),
            other => Self::Unavailable(format!("The sync could not be started: {other}.")),
        }
    }
}

impl From<crate::batched_lookup::LookupError> for AppError {
    fn from(err: crate::batched_lookup::LookupError) -> Self {
        use crate::batched_lookup::LookupError;
        match err {
            LookupError::Unavailable(cause) => Self::DatabaseUnavailable(cause),
            failed @ LookupError::Failed(_) => Self::internal(failed),
        }
    }
}

impl AppError {
    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    /// What a person may read; internal causes stay in the log.
    pub fn public_message(&self) -> String {
        match self {
            Self::DatabaseUnavailable(_) => crate::db::UNAVAILABLE_MESSAGE.into(),
            Self::Database(err) if crate::db::is_unavailable(err) => {
                crate::db::UNAVAILABLE_MESSAGE.into()
            }
            Self::Database(err) if crate::db::is_bad_input(err) => {
                crate::db::BAD_INPUT_MESSAGE.into()
            }
            Self::Database(_) | Self::Internal(_) => {
                "Something went wrong on our side. Please try again.".into()
            }
            other => other.to_string(),
        }
    }
}

impl ResponseError for AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::SignInRequired => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(err) if crate::db::is_unavailable(err) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Database(err) if crate::db::is_bad_input(err) => StatusCode::BAD_REQUEST,
            Self::Database(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub type AppResult<T> = Result<T, AppError>;

/// How a failure is shown, decided from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Page,
    Fragment,
    Api,
}

impl Audience {
    pub fn of(req: &Request) -> Self {
        let path = req.uri().path();
        // Machines read the answers of the API, metrics and the provider's deliveries.
        if path.starts_with("/api/")
            || path == "/api"
            || path == "/auth/me"
            || path == "/auth/backchannel-logout"
            || path == "/metrics"
            || path.starts_with("/webhooks/")
        {
            Self::Api
        } else if HxRequest::of(req).0 {
            Self::Fragment
        } else {
            Self::Page
        }
    }
}

/// Renders errors from handlers, extractors and the router. Responses that already carry a
/// rendered body (HTML fragments such as a 422 form, or JSON) pass through untouched.
pub async fn render_errors<E: Endpoint>(next: E, req: Request) -> poem::Result<Response> {
    let audience = Audience::of(&req);
    let request_id = req.header("x-request-id").map(str::to_owned);
    let route = crate::observability::RouteTemplate::of(&req);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // After signing in, a page view returns to the page; an action returns home.
    let next_after_login = if method == poem::http::Method::GET && audience == Audience::Page {
        req.uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string())
    } else {
        "/".to_owned()
    };
    match next.call(req).await {
        Ok(output) => Ok(give_body(
            audience,
            output.into_response(),
            request_id.as_deref(),
        )),
        Err(err)
            if audience != Audience::Api
                && matches!(
                    err.downcast_ref::<AppError>(),
                    Some(AppError::SignInRequired)
                ) =>
        {
            let login = format!(
                "/auth/login?next={}",
                url::form_urlencoded::byte_serialize(next_after_login.as_bytes())
                    .collect::<String>()
            );
            Ok(crate::web::htmx::redirect(
                HxRequest(audience == Audience::Fragment),
                &login,
            ))
        }
        // Already a complete response (e.g. an admin API problem): keep its body.
        Err(err) if err.is_from_response() => Ok(err.into_response()),
        Err(err) => {
            let status = err.status();
            let message = match err.downcast_ref::<AppError>() {
                Some(app) => app.public_message(),
                None if status.is_server_error() => default_message(status),
                None => client_message(status, &err.to_string()),
            };
            if let Some(AppError::Database(db)) = err.downcast_ref::<AppError>()
                && crate::db::is_connection_lost(db)
            {
                // Its neighbours in the pool probably died with it: check them before use.
                crate::db::note_connection_lost();
            }
            if status.is_server_error() {
                tracing::error!(
                    %method, %path, route = route.get(), status = status.as_u16(),
                    request_id = request_id.as_deref().unwrap_or("-"),
                    error = %err,
                    "request failed"
                );
            }
            Ok(render(audience, status, &message, request_id.as_deref()))
        }
    }
}

/// Gives an error status with no body of ours (from a tower layer, the router or a bare status)
/// the page, fragment or problem its audience expects. Other responses pass through.
pub fn give_body(audience: Audience, response: Response, request_id: Option<&str>) -> Response {
    let status = response.status();
    let content_type = response.content_type().unwrap_or("");
    let rendered_already = content_type.starts_with("text/html") || content_type.contains("json");
    if !(status.is_client_error() || status.is_server_error()) || rendered_already {
        return response;
    }
    let mut rendered = render(audience, status, &default_message(status), request_id);
    // Keep headers that matter to the client (`Allow`, `WWW-Authenticate`, request id, ...).
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

pub fn render(
    audience: Audience,
    status: StatusCode,
    message: &str,
    request_id: Option<&str>,
) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let shown_id = status.is_server_error().then_some(request_id).flatten();
    let mut response = match audience {
        Audience::Api => {
            let mut problem = json!({
                "type": "about:blank",
                "title": title,
                "status": status.as_u16(),
                "detail": message,
            });
            if let Some(id) = request_id {
                problem["request_id"] = json!(id);
            }
            Response::builder()
                .content_type("application/problem+json")
                .body(problem.to_string())
        }
        Audience::Fragment => message_fragment(title, message, None, shown_id).into_response(),
        Audience::Page => {
            let action = match status {
                StatusCode::UNAUTHORIZED => Some(("/auth/login", "Log in")),
                _ => Some(("/", "Go to the home page")),
            };
            let body = page(
                title,
                &Shell::default(),
                message_fragment(title, message, action, shown_id),
            );
            body.into_response()
        }
    };
    response.set_status(status);
    response
}

fn default_message(status: StatusCode) -> String {
    match status {
        StatusCode::NOT_FOUND => {
            "There is nothing at this address. Check the link, or start from the home page.".into()
        }
        StatusCode::METHOD_NOT_ALLOWED => {
            "This address does not accept that kind of request.".into()
        }
        StatusCode::PAYLOAD_TOO_LARGE => {
            "The request is too large. Shorten what you sent and try again.".into()
        }
        StatusCode::REQUEST_TIMEOUT => {
            "The request took too long to arrive. Please try again.".into()
        }
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            "The request body is not in a format this page accepts.".into()
        }
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
            "The service is busy or a dependency is not answering. Please try again in a moment."
                .into()
        }
        s if s.is_server_error() => "Something went wrong on our side. Please try again.".into(),
        s => s
            .canonical_reason()
            .unwrap_or("The request could not be handled.")
            .into(),
    }
}

/// Poem's extractor messages are technical but safe; make the common ones readable.
fn client_message(status: StatusCode, detail: &str) -> String {
    match status {
        StatusCode::BAD_REQUEST => {
            format!("The request could not be read ({detail}). Please check it and try again.")
        }
        other => default_message(other),
    }
}
