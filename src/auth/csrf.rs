//! CSRF protection for every state-changing request: a random token kept in the session, sent
//! back as the `X-CSRF-Token` header (htmx, via `hx-headers`) or the `csrf_token` form field
//! (plain forms). Compared in constant time.

use poem::Request;
use subtle::ConstantTimeEq;

use super::session::Session;
use crate::error::AppError;

const KEY: &str = "csrf_token";
pub const HEADER: &str = "x-csrf-token";

/// The session's token, created on first use.
pub fn token(session: &Session) -> Result<String, AppError> {
    if let Some(token) = session.get::<String>(KEY) {
        return Ok(token);
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    session.insert(KEY, &token)?;
    Ok(token)
}

/// Puts a token back after the session was regenerated (the same person signing in again in
/// another tab keeps the token their open pages carry).
pub fn restore(session: &Session, token: &str) -> Result<(), AppError> {
    session.insert(KEY, token)
}

/// The session's token if it has one (never creates a session).
pub fn existing_token(session: &Session) -> Option<String> {
    session.get::<String>(KEY)
}

/// Checks the header first, then the form field; 403 when both are missing or wrong.
pub fn verify(req: &Request, session: &Session, form_token: Option<&str>) -> Result<(), AppError> {
    let expected = session.get::<String>(KEY);
    let sent = req.header(HEADER).or(form_token);
    match (expected, sent) {
        (Some(expected), Some(sent)) if bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) => {
            Ok(())
        }
        _ => Err(AppError::Forbidden(
            "This form has expired or did not come from this site. Reload the page and try again."
                .into(),
        )),
    }
}
