//! What both webhooks share: who may call them, reading the body only then, and the answers.
//!
//! Deliveries carry no session and no CSRF token: the shared secret in `Authorization` is what
//! authenticates them, compared in constant time and never logged. A stream whose secret is not
//! configured is off, and its route answers 404 as if it did not exist. Refusals are
//! `application/problem+json` (RFC 9457) with a sentence saying what to fix.

use poem::{
    Body, Request, Response,
    http::{HeaderValue, StatusCode, header},
};
use subtle::{Choice, ConstantTimeEq};

use crate::{
    config::Secret,
    error::{Audience, render},
    web::body_limit,
};

/// A delivery to a stream's webhook, read: the caller authenticated (`secret`, presented as
/// `credential`), then the body read (up to `limit` bytes) and parsed by `read`. Otherwise the
/// complete answer to send: 404 when the stream is off, 401 without its secret, 413/400 for the
/// body, 400 with `read`'s reason (also logged, for `what`).
pub async fn delivery<T>(
    req: &Request,
    body: Body,
    (secret, credential): (Option<&Secret>, Credential),
    limit: usize,
    read: impl FnOnce(&[u8]) -> Result<T, String>,
    what: &'static str,
) -> poem::Result<T> {
    let refused = poem::Error::from_response;
    let body = authenticated_body(req, body, secret, credential, limit)
        .await
        .map_err(refused)?;
    read(&body).map_err(|reason| {
        tracing::warn!(%reason, "{what} delivery refused");
        refused(refuse(req, StatusCode::BAD_REQUEST, &reason))
    })
}

/// How a stream presents its secret in `Authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// Event Streams' "Bearer Token" method: `Bearer <token>`.
    /// https://auth0.com/docs/customize/events/create-an-event-stream
    Bearer,
    /// Log Streams' "Authorization Token": the whole header value, as typed in the dashboard.
    /// `Bearer <token>` is accepted too, so the token can be configured either way round.
    /// https://auth0.com/docs/customize/log-streams/custom-log-streams
    HeaderValue,
}

/// Checks the caller, then reads the body (up to `limit` bytes). The refusal otherwise: 404 when
/// `configured` is `None`, 401 without the right secret, 413/400 for the body.
async fn authenticated_body(
    req: &Request,
    body: Body,
    configured: Option<&Secret>,
    credential: Credential,
    limit: usize,
) -> Result<bytes::Bytes, Response> {
    let Some(secret) = configured else {
        return Err(refuse(
            req,
            StatusCode::NOT_FOUND,
            "There is nothing at this address.",
        ));
    };
    let sent = req.header(header::AUTHORIZATION).unwrap_or("");
    if !accepts(secret, credential, sent) {
        let mut refused = refuse(
            req,
            StatusCode::UNAUTHORIZED,
            unauthorized_message(credential),
        );
        if credential == Credential::Bearer {
            refused
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        return Err(refused);
    }
    body_limit::read_own(req, body, limit).await
}

fn unauthorized_message(credential: Credential) -> &'static str {
    match credential {
        Credential::Bearer => {
            "Send the Event Stream's token as `Authorization: Bearer <token>` (AUTH0_EVENTS_TOKEN)."
        }
        Credential::HeaderValue => {
            "Send the Log Stream's Authorization Token in the `Authorization` header \
             (AUTH0_LOG_STREAM_TOKEN)."
        }
    }
}

/// Whether `sent` (the `Authorization` header) carries `secret`. Each comparison takes the same
/// time whatever the bytes, so an attacker learns nothing from how fast a guess is refused.
fn accepts(secret: &Secret, credential: Credential, sent: &str) -> bool {
    let secret = secret.expose().as_bytes();
    let bearer = match sent.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim().as_bytes(),
        _ => &[][..],
    };
    let matched: Choice = match credential {
        Credential::Bearer => bearer.ct_eq(secret),
        Credential::HeaderValue => sent.trim().as_bytes().ct_eq(secret) | bearer.ct_eq(secret),
    };
    !secret.is_empty() && bool::from(matched)
}

/// A refusal as the problem document machines read.
fn refuse(req: &Request, status: StatusCode, message: &str) -> Response {
    render(Audience::Api, status, message, req.header("x-request-id"))
}

/// What a delivery did, in the 202 answer (Auth0 only looks at the status; people debugging a
/// stream read the body).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Receipt {
    /// Changes recorded and queued.
    pub accepted: usize,
    /// Changes already received before (same `id` / `log_id`): ignored.
    pub duplicates: usize,
    /// Events or log events that cannot change a user, or could not be read.
    pub ignored: usize,
}

impl Receipt {
    /// 202 Accepted: the changes are durably queued and will be applied shortly (logged at
    /// debug, for `what`).
    pub fn answer(self, what: &'static str) -> Response {
        tracing::debug!(
            accepted = self.accepted,
            duplicates = self.duplicates,
            ignored = self.ignored,
            "{what} delivery queued"
        );
        Response::builder()
            .status(StatusCode::ACCEPTED)
            .content_type("application/json")
            .body(serde_json::to_string(&self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_matched_in_either_form_the_stream_sends() {
        let secret = Secret::new("s3cret-token");
        let bearer = |sent| accepts(&secret, Credential::Bearer, sent);
        assert!(bearer("Bearer s3cret-token"));
        assert!(bearer("bearer  s3cret-token "));
        assert!(!bearer("s3cret-token"), "the Event Stream sends a scheme");
        assert!(!bearer("Bearer s3cret-token-and-more"));
        assert!(!bearer("Bearer s3cret"));
        assert!(!bearer("Basic s3cret-token"));
        assert!(!bearer(""));

        let header = |sent| accepts(&secret, Credential::HeaderValue, sent);
        assert!(header("s3cret-token"));
        assert!(header("Bearer s3cret-token"));
        assert!(!header("Bearer wrong"));
        assert!(!header(""));
        let with_scheme = Secret::new("Bearer s3cret-token");
        assert!(accepts(
            &with_scheme,
            Credential::HeaderValue,
            "Bearer s3cret-token"
        ));
        assert!(!accepts(&Secret::new(""), Credential::HeaderValue, ""));
    }
}
