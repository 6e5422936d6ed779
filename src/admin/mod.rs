//! Admin: the OpenAPI JSON API under `/api/admin` and the htmx page under `/admin`.

pub mod access;
pub mod api;
pub mod page;

use poem::{EndpointExt, IntoEndpoint, Route, get, post};
use poem_openapi::OpenApiService;

use crate::observability::named;

/// Swagger UI ships its bootstrap as an inline script; only this page may run one.
const DOCS_CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                        img-src 'self' data:; frame-ancestors 'none'";

pub fn api_service() -> OpenApiService<api::AdminApi, ()> {
    OpenApiService::new(
        api::AdminApi,
        "quotebook admin API",
        env!("CARGO_PKG_VERSION"),
    )
    .description(
        "Trigger and watch user syncs from Auth0, and browse the synced users. \
             Authenticate with `Authorization: Bearer <ADMIN_API_TOKEN>` or as a signed-in admin \
             (session cookie plus `X-CSRF-Token` on POST).",
    )
    .server("/api/admin")
}

/// `/api/*` routes: the admin API, its spec and Swagger UI.
pub fn api_routes() -> Route {
    let service = api_service();
    let spec = service.spec_endpoint();
    let docs = service
        .swagger_ui()
        .with(poem::middleware::SetHeader::new().overriding("content-security-policy", DOCS_CSP));
    Route::new()
        .nest(
            "/admin",
            named("/api/admin", service.into_endpoint().around(allow_on_405)),
        )
        .at("/openapi.json", named("/api/openapi.json", spec))
        .nest("/docs", named("/api/docs", docs))
}

/// poem answers an unsupported method with 405 but no `Allow`, which RFC 9110 requires: name
/// the methods each API path takes (they mirror `api::AdminApi`).
async fn allow_on_405<E: poem::Endpoint>(
    next: E,
    req: poem::Request,
) -> poem::Result<poem::Response> {
    let path = req.original_uri().path();
    let allowed = if path == "/api/admin/sync" {
        "GET, POST"
    } else if path.starts_with("/api/admin/users/") && path.ends_with("/sessions") {
        "DELETE"
    } else {
        "GET"
    };
    let mut response = match next.call(req).await {
        Ok(output) => poem::IntoResponse::into_response(output),
        Err(err) if err.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED => {
            err.into_response()
        }
        Err(err) => return Err(err),
    };
    if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
        response.headers_mut().insert(
            poem::http::header::ALLOW,
            poem::http::HeaderValue::from_static(allowed),
        );
    }
    Ok(response)
}

/// `/admin/*` pages and fragments.
pub fn page_routes() -> Route {
    Route::new()
        .at("/", named("/admin", get(page::admin_page)))
        .at("/users", named("/admin/users", get(page::users_fragment)))
        .at("/runs", named("/admin/runs", get(page::runs_fragment)))
        .at(
            "/streams",
            named("/admin/streams", get(page::streams_fragment)),
        )
        .at("/sync", named("/admin/sync", post(page::start_sync)))
        .at(
            "/sync/:id/progress",
            named("/admin/sync/:id/progress", get(page::sync_progress)),
        )
}
