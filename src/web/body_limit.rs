//! `BODY_LIMIT_BYTES`, however a body arrives.
//!
//! A body is read in full, up to the limit, before any handler or extractor sees it. That makes
//! the limit one rule for every route and every way of sending: with `Content-Length` (refused
//! before a byte is read), chunked (refused as soon as the limit is passed), as a form, as JSON,
//! or through poem-openapi's extractors. A limit enforced inside the body stream instead (as
//! tower-http's `RequestBodyLimitLayer` does for chunked bodies) surfaces as a read error in
//! whichever extractor hits it, and those answer 400. Every body quotebook takes is a small form
//! or JSON document, so reading it up front costs nothing the handler would not spend anyway.
//!
//! Compressed request bodies (`Content-Encoding`, RFC 9110 section 8.4) are refused with 415 and
//! `Accept-Encoding: identity` (RFC 9110 section 15.5.16): no route takes them, and accepting
//! them would need a second limit on the decoded size.
//!
//! The exception: routes listed as [`OwnBodyLimit`]s (Auth0's webhook deliveries) take larger
//! bodies than any form, so they authenticate the caller first and then read the body
//! themselves with [`read_own`], which answers exactly as this layer does. Nobody can make the
//! app buffer a large body without the route's token; an oversized `Content-Length` is still
//! refused here, before anything is read.

use poem::{
    Body, Endpoint, IntoResponse, Request, Response,
    error::ReadBodyError,
    http::{HeaderValue, StatusCode, header},
};

use crate::error::{Audience, render};

/// A route (its exact path) whose handler reads its own body, after authenticating the caller,
/// up to `limit` bytes with [`read_own`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnBodyLimit {
    pub path: &'static str,
    pub limit: usize,
}

/// Runs `next` with the request's body read into memory, or answers 413 (too large), 415
/// (compressed) or 400 (the body broke off) for the request's audience. A route in `own` gets
/// its body unread (its `Content-Length` checked against its own limit).
pub async fn read_within<E: Endpoint>(
    next: E,
    mut req: Request,
    limit: usize,
    own: &[OwnBodyLimit],
) -> poem::Result<Response> {
    let own = own.iter().find(|route| route.path == req.uri().path());
    let limit = own.map_or(limit, |route| route.limit);
    if has_body(&req) && compressed(&req) {
        let mut response = refuse(
            &req,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Compressed request bodies are not accepted. Send the body without Content-Encoding.",
        );
        response.headers_mut().insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        return Ok(response);
    }
    let declared = req
        .header(header::CONTENT_LENGTH)
        .and_then(|n| n.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Ok(too_large(&req, limit));
    }
    if own.is_some() {
        return next.call(req).await.map(IntoResponse::into_response);
    }
    let body = req.take_body();
    match read_own(&req, body, limit).await {
        Ok(bytes) => {
            req.set_body(Body::from(bytes));
            next.call(req).await.map(IntoResponse::into_response)
        }
        Err(refused) => Ok(refused),
    }
}

/// Reads `body` (of `req`) up to `limit` bytes, however it is sent; the answer for a body that is
/// too large (413) or broke off (400) otherwise, as the request's audience expects it.
pub async fn read_own(req: &Request, body: Body, limit: usize) -> Result<bytes::Bytes, Response> {
    match body.into_bytes_limit(limit).await {
        Ok(bytes) => Ok(bytes),
        Err(ReadBodyError::PayloadTooLarge) => Err(too_large(req, limit)),
        Err(_) => Err(refuse(
            req,
            StatusCode::BAD_REQUEST,
            "The request body could not be read completely. Please try again.",
        )),
    }
}

fn has_body(req: &Request) -> bool {
    req.header(header::TRANSFER_ENCODING).is_some()
        || req
            .header(header::CONTENT_LENGTH)
            .is_some_and(|n| n.trim() != "0")
}

fn compressed(req: &Request) -> bool {
    req.headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("unreadable").split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("identity"))
}

fn too_large(req: &Request, limit: usize) -> Response {
    let message = format!(
        "What you sent is too large: this site accepts at most {}. Shorten it and try again.",
        size(limit)
    );
    refuse(req, StatusCode::PAYLOAD_TOO_LARGE, &message)
}

fn refuse(req: &Request, status: StatusCode, message: &str) -> Response {
    render(
        Audience::of(req),
        status,
        message,
        req.header("x-request-id"),
    )
}

/// `65536` → "64 KiB", `4194304` → "4 MiB", `1000` → "1000 bytes".
fn size(bytes: usize) -> String {
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(super::size(65_536), "64 KiB");
        assert_eq!(super::size(4 * 1024 * 1024), "4 MiB");
        assert_eq!(super::size(1000), "1000 bytes");
    }
}
