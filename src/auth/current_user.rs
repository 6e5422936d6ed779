//! The signed-in person, as stored in the session at login, and the extractor that requires one.

use poem::{FromRequest, Request, RequestBody};
use serde::{Deserialize, Serialize};

use super::session::Session;
use crate::error::AppError;

const KEY: &str = "user";

/// The profile kept in the session (from the verified ID token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionUser {
    pub sub: String,
    /// The provider's session id (the ID token's `sid`), which OpenID Connect Back-Channel
    /// Logout 1.0 tokens name; absent when the provider sends none.
    #[serde(default)]
    pub sid: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
    /// `None` when the provider did not say (or said something that is not a yes or no).
    #[serde(default)]
    pub email_verified: Option<bool>,
    pub picture: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Sent back to the provider at logout (`id_token_hint`).
    pub id_token: Option<String>,
}

impl SessionUser {
    /// What the header greets the person as.
    pub fn display_name(&self) -> &str {
        self.name
            .as_deref()
            .or(self.email.as_deref())
            .unwrap_or(&self.sub)
    }
}

pub fn signed_in_user(session: &Session) -> Option<SessionUser> {
    session.get(KEY)
}

/// The signed-in person of a stored (async-session) session, as the session store writes it.
pub fn stored_user(session: &async_session::Session) -> Option<SessionUser> {
    session.get(KEY)
}

pub fn store_user(session: &Session, user: &SessionUser) -> Result<(), AppError> {
    session.insert(KEY, user)
}

/// Requires a signed-in person; otherwise the request is sent to sign in (see `AppError`).
#[derive(Debug, Clone)]
pub struct SignedIn(pub SessionUser);

impl<'a> FromRequest<'a> for SignedIn {
    async fn from_request(req: &'a Request, body: &mut RequestBody) -> poem::Result<Self> {
        let session = Session::from_request(req, body).await?;
        signed_in_user(&session)
            .map(SignedIn)
            .ok_or_else(|| AppError::SignInRequired.into())
    }
}
