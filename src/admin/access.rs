//! Who may use the admin API and page: a bearer `ADMIN_API_TOKEN` (compared in constant time;
//! no token configured means this path is off), or a signed-in admin (roles claim or
//! `ADMIN_EMAILS`). Session-authenticated state changes are CSRF-checked; bearer requests are not
//! (a browser never attaches the bearer token by itself).

use poem::{Request, http::header};
use subtle::ConstantTimeEq;

use crate::{
    auth::{csrf, current_user::signed_in_user, roles::is_admin, session::Session},
    config::Settings,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Token,
    /// A signed-in admin, by user id.
    Person(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials, or a wrong token.
    Unauthenticated,
    /// Signed in, but not an admin.
    NotAdmin,
    /// A session request that changes state without a valid CSRF token.
    Csrf,
}

impl Denied {
    pub fn message(&self) -> &'static str {
        match self {
            Self::Unauthenticated => {
                "Send `Authorization: Bearer <ADMIN_API_TOKEN>` or sign in as an admin."
            }
            Self::NotAdmin => "Your account is not an admin.",
            Self::Csrf => "Missing or wrong X-CSRF-Token header. Reload the page and try again.",
        }
    }
}

/// Checks the request; `changes_state` adds the CSRF check for session callers.
pub fn authorize(
    req: &Request,
    session: &Session,
    settings: &Settings,
    changes_state: bool,
) -> Result<Admin, Denied> {
    if let Some(sent) = req
        .header(header::AUTHORIZATION)
        .and_then(|h| h.strip_prefix("Bearer "))
    {
        return match &settings.admin.api_token {
            Some(token) if bool::from(sent.trim().as_bytes().ct_eq(token.expose().as_bytes())) => {
                Ok(Admin::Token)
            }
            _ => Err(Denied::Unauthenticated),
        };
    }
    let user = signed_in_user(session).ok_or(Denied::Unauthenticated)?;
    if !is_admin(&user, &settings.admin) {
        return Err(Denied::NotAdmin);
    }
    if changes_state && csrf::verify(req, session, None).is_err() {
        return Err(Denied::Csrf);
    }
    Ok(Admin::Person(user.sub))
}
