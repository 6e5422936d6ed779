//! htmx request detection and response helpers.
//!
//! One URL serves a full page to a browser and a fragment to htmx; caches must therefore vary on
//! `HX-Request`, and htmx ignores headers on 3xx, so htmx redirects are 200 + `HX-Redirect`.

use poem::{FromRequest, Request, RequestBody, Response, http::StatusCode};

/// True when the request came from htmx (and is not a history restore, which wants a full page).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HxRequest(pub bool);

impl HxRequest {
    pub fn of(req: &Request) -> Self {
        let is_htmx = req.header("hx-request") == Some("true");
        let history_restore = req.header("hx-history-restore-request") == Some("true");
        Self(is_htmx && !history_restore)
    }
}

impl<'a> FromRequest<'a> for HxRequest {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        Ok(Self::of(req))
    }
}

/// Redirect that works for both: `HX-Redirect` for htmx, 303 See Other for plain requests.
pub fn redirect(hx: HxRequest, location: &str) -> Response {
    let response = if hx.0 {
        Response::builder()
            .status(StatusCode::OK)
            .header("HX-Redirect", location)
    } else {
        Response::builder()
            .status(StatusCode::SEE_OTHER)
            .header("Location", location)
    };
    response.header("Vary", "HX-Request").finish()
}

/// Marks a response as depending on `HX-Request`.
pub fn vary(mut response: Response) -> Response {
    response
        .headers_mut()
        .append("Vary", poem::http::HeaderValue::from_static("HX-Request"));
    response
}
