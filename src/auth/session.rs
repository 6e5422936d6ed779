//! Server-side sessions: the middleware that loads and saves them, and the typed handle that
//! handlers use.
//!
//! The cookie holds only async-session's opaque random value; everything else lives in Postgres.
//! Anonymous visitors get no session (and no database write): a pending sign-in is kept apart
//! (`login_transaction`), so the session starts at the successful callback. Sessions end after an
//! idle timeout (extended at most once a minute, so reading pages does not write on every
//! request) or an absolute lifetime counted from the sign-in, whichever comes first.
//!
//! A session is read from the store when a handler first asks for it, not before routing:
//! requests that never need it (assets, health checks) never read the store, and a store that is
//! slow or down fails only what needs it, inside its route, where the failure is counted and
//! logged under the route's template.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_session::{Session as StoredSession, SessionStore};
use chrono::Utc;
use poem::{Endpoint, FromRequest, IntoResponse, Request, RequestBody, Response};
use serde::{Serialize, de::DeserializeOwned};

use super::{cookies, session_store::PgSessionStore};
use crate::error::AppError;

const CREATED_AT: &str = "created_at";

/// Cookie and lifetime settings, fixed at start.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub cookie_name: &'static str,
    pub secure: bool,
    pub idle_timeout: Duration,
    pub absolute_lifetime: Duration,
}

impl SessionConfig {
    pub fn new(secure: bool, idle_timeout: Duration, absolute_lifetime: Duration) -> Self {
        Self {
            // `__Host-` pins the cookie to this host, path `/`, https only.
            cookie_name: if secure {
                "__Host-quotebook_session"
            } else {
                "quotebook_session"
            },
            secure,
            idle_timeout,
            absolute_lifetime,
        }
    }
}

#[derive(Debug)]
struct State {
    session: Option<StoredSession>,
    /// The session loaded from the cookie, kept so `renew` and `destroy` can delete its row.
    loaded: Option<StoredSession>,
    renewed: bool,
    destroyed: bool,
    extended: bool,
}

/// The current request's session. Cheap to clone; all clones see the same state.
#[derive(Debug, Clone)]
pub struct Session {
    state: Arc<Mutex<State>>,
    config: Arc<SessionConfig>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a handler panicked mid-update; the data is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        self.lock().session.as_ref().and_then(|s| s.get(key))
    }

    /// Stores a value, creating the session if there is none yet.
    pub fn insert(&self, key: &str, value: impl Serialize) -> Result<(), AppError> {
        let mut state = self.lock();
        let config = self.config.clone();
        let session = state.session.get_or_insert_with(|| new_session(&config));
        session.insert(key, value).map_err(AppError::internal)
    }

    pub fn remove(&self, key: &str) {
        if let Some(session) = self.lock().session.as_mut() {
            session.remove(key);
        }
    }

    pub fn exists(&self) -> bool {
        self.lock().session.is_some()
    }

    /// The stored row's id (`sessions.id`) of the session this request came with, while it is
    /// still the request's session (not renewed or destroyed).
    pub fn stored_id(&self) -> Option<String> {
        let state = self.lock();
        if state.renewed || state.destroyed {
            return None;
        }
        state.loaded.as_ref().map(|loaded| loaded.id().to_owned())
    }

    /// Starts a fresh, empty session with a new id, at sign-in: nothing fixed in advance
    /// survives (no session fixation), and the absolute lifetime counts from now. The old row
    /// is deleted.
    pub fn regenerate(&self) {
        let mut state = self.lock();
        let config = self.config.clone();
        state.session = Some(new_session(&config));
        state.renewed = true;
    }

    /// Ends the session: the row is deleted and the cookie cleared.
    pub fn destroy(&self) {
        let mut state = self.lock();
        state.session = None;
        state.destroyed = true;
    }
}

fn new_session(config: &SessionConfig) -> StoredSession {
    let mut session = StoredSession::new();
    let _ = session.insert(CREATED_AT, Utc::now().timestamp());
    session.expire_in(config.idle_timeout.min(config.absolute_lifetime));
    session
}

impl<'a> FromRequest<'a> for Session {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        let slot = req.extensions().get::<SessionSlot>().ok_or_else(|| {
            AppError::internal(anyhow::anyhow!("session middleware is not installed"))
        })?;
        slot.get().await.map_err(|failed| failed.error().into())
    }
}

/// The request's session, loaded on first use (then shared by every extraction).
#[derive(Clone)]
struct SessionSlot {
    cookie: Option<String>,
    store: PgSessionStore,
    config: Arc<SessionConfig>,
    loaded: Arc<tokio::sync::OnceCell<Result<Session, LoadFailed>>>,
}

impl SessionSlot {
    async fn get(&self) -> Result<Session, LoadFailed> {
        self.loaded
            .get_or_init(|| async {
                let loaded = match &self.cookie {
                    Some(value) => load(&self.store, &self.config, value.clone())
                        .await
                        .map_err(|err| LoadFailed::new(&err))?,
                    None => None,
                };
                let session = Session {
                    state: Arc::new(Mutex::new(State {
                        session: loaded.clone(),
                        loaded,
                        renewed: false,
                        destroyed: false,
                        extended: false,
                    })),
                    config: self.config.clone(),
                };
                extend_if_due(&session);
                Ok(session)
            })
            .await
            .clone()
    }
}

/// The cookie named a session that could not be read (the database is down).
#[derive(Debug, Clone)]
struct LoadFailed {
    unavailable: bool,
    cause: String,
}

impl LoadFailed {
    fn new(err: &AppError) -> Self {
        Self {
            unavailable: poem::error::ResponseError::status(err)
                == poem::http::StatusCode::SERVICE_UNAVAILABLE,
            cause: match err {
                AppError::DatabaseUnavailable(cause) => cause.clone(),
                other => other.to_string(),
            },
        }
    }

    fn error(&self) -> AppError {
        if self.unavailable {
            AppError::DatabaseUnavailable(self.cause.clone())
        } else {
            AppError::internal(anyhow::anyhow!(
                "the session could not be loaded: {}",
                self.cause
            ))
        }
    }
}

/// Offers the session named by the cookie to the endpoint (loaded when first asked for), then
/// saves what changed.
pub struct SessionMiddleware {
    pub store: PgSessionStore,
    pub config: Arc<SessionConfig>,
}

impl SessionMiddleware {
    pub async fn handle<E: Endpoint>(&self, next: E, mut req: Request) -> poem::Result<Response> {
        let slot = SessionSlot {
            cookie: cookies::read(&req, self.config.cookie_name),
            store: self.store.clone(),
            config: self.config.clone(),
            loaded: Arc::default(),
        };
        req.extensions_mut().insert(slot.clone());

        let mut response = next.call(req).await?.into_response();
        // A session nobody asked for was neither read nor changed.
        let Some(Ok(session)) = slot.loaded.get() else {
            return Ok(response);
        };
        if let Some(user) = super::current_user::signed_in_user(session) {
            response
                .extensions_mut()
                .insert(crate::observability::UserTag::of(&user.sub));
        }
        self.save(session, &mut response).await?;
        Ok(response)
    }

    async fn save(&self, session: &Session, response: &mut Response) -> Result<(), AppError> {
        let (current, loaded, renewed, destroyed, extended) = {
            let mut state = session.lock();
            (
                state.session.take(),
                state.loaded.take(),
                state.renewed,
                state.destroyed,
                state.extended,
            )
        };
        let was_stored = loaded.is_some() && !renewed;
        if (renewed || destroyed)
            && let Some(old) = loaded
        {
            self.store.destroy_session(old).await.map_err(store_error)?;
        }
        if destroyed && current.is_none() {
            cookies::set(response, self.config.cookie_name, "", self.config.secure, 0);
            return Ok(());
        }
        let Some(current) = current else {
            return Ok(());
        };
        if !(current.data_changed() || extended || renewed) {
            return Ok(());
        }
        if was_stored {
            // Written back only if it still exists: ended meanwhile (by another device, the
            // provider, a block), it stays ended and this browser is signed out.
            let still_there = self
                .store
                .update_session(current)
                .await
                .map_err(store_error)?;
            if !still_there {
                cookies::set(response, self.config.cookie_name, "", self.config.secure, 0);
            }
            return Ok(());
        }
        let max_age = self.config.absolute_lifetime.as_secs();
        if let Some(cookie_value) = self
            .store
            .store_session(current)
            .await
            .map_err(store_error)?
        {
            cookies::set(
                response,
                self.config.cookie_name,
                &cookie_value,
                self.config.secure,
                max_age,
            );
        }
        Ok(())
    }
}

/// The stored session named by `cookie_value`, unless it has outlived the absolute lifetime (then
/// it is deleted).
async fn load(
    store: &PgSessionStore,
    config: &SessionConfig,
    cookie_value: String,
) -> Result<Option<StoredSession>, AppError> {
    let session = store
        .load_session(cookie_value)
        .await
        .map_err(store_error)?;
    let Some(session) = session else {
        return Ok(None);
    };
    let created = session.get::<i64>(CREATED_AT).unwrap_or(0);
    let age = Utc::now().timestamp().saturating_sub(created);
    if age > config.absolute_lifetime.as_secs() as i64 {
        store.destroy_session(session).await.map_err(store_error)?;
        return Ok(None);
    }
    Ok(Some(session))
}

/// Pushes the idle expiry forward, at most once a minute, never past the absolute lifetime.
fn extend_if_due(session: &Session) {
    let config = session.config.clone();
    let mut state = session.lock();
    let Some(stored) = state.session.as_mut() else {
        return;
    };
    let remaining = stored.expires_in().unwrap_or_default();
    if config.idle_timeout.saturating_sub(remaining) < Duration::from_secs(60) {
        return;
    }
    let created = stored.get::<i64>(CREATED_AT).unwrap_or(0);
    let lifetime_left =
        (created + config.absolute_lifetime.as_secs() as i64 - Utc::now().timestamp()).max(0);
    stored.expire_in(
        config
            .idle_timeout
            .min(Duration::from_secs(lifetime_left as u64)),
    );
    state.extended = true;
}

fn store_error(err: async_session::Error) -> AppError {
    let err = match err.downcast::<sqlx::Error>() {
        Ok(db) => return AppError::Database(db),
        Err(other) => other,
    };
    match err.downcast::<crate::batched_lookup::LookupError>() {
        Ok(lookup) => lookup.into(),
        Err(other) => AppError::Internal(other),
    }
}
