//! Server-side sessions: the middleware that loads and saves them, and the typed handle that
//! handlers use.
//!
//! The cookie holds only async-session's opaque random value; everything else lives in Postgres.
//! Anonymous visitors get no session (and no database write) until something needs one: starting
//! a login. Sessions end after an idle timeout (extended at most once a minute, so reading pages
//! does not write on every request) or an absolute lifetime, whichever comes first.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use async_session::{Session as StoredSession, SessionStore};
use chrono::Utc;
use poem::{Endpoint, FromRequest, IntoResponse, Request, RequestBody, Response, http::header};
use serde::{Serialize, de::DeserializeOwned};

use super::session_store::PgSessionStore;
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

    /// A new session id with the same data (at login: no session fixation). The old row is deleted.
    pub fn renew(&self) {
        let mut state = self.lock();
        let config = self.config.clone();
        let old = state.session.take();
        let mut fresh = new_session(&config);
        if let Some(old) = old {
            for key in session_keys(&old) {
                if let Some(raw) = old.get_raw(&key) {
                    fresh.insert_raw(&key, raw);
                }
            }
        }
        state.session = Some(fresh);
        state.renewed = true;
    }

    /// Ends the session: the row is deleted and the cookie cleared.
    pub fn destroy(&self) {
        let mut state = self.lock();
        state.session = None;
        state.destroyed = true;
    }
}

/// async-session does not list keys; its serialised form does.
fn session_keys(session: &StoredSession) -> Vec<String> {
    serde_json::to_value(session)
        .ok()
        .and_then(|v| {
            v.get("data")
                .and_then(|d| d.as_object())
                .map(|o| o.keys().cloned().collect())
        })
        .unwrap_or_default()
}

fn new_session(config: &SessionConfig) -> StoredSession {
    let mut session = StoredSession::new();
    let _ = session.insert(CREATED_AT, Utc::now().timestamp());
    session.expire_in(config.idle_timeout.min(config.absolute_lifetime));
    session
}

impl<'a> FromRequest<'a> for Session {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        if let Some(failed) = req.extensions().get::<LoadFailed>() {
            return Err(failed.error().into());
        }
        req.extensions().get::<Session>().cloned().ok_or_else(|| {
            AppError::internal(anyhow::anyhow!("session middleware is not installed")).into()
        })
    }
}

/// The cookie named a session that could not be read (the database is down). Only what needs
/// the session fails, inside its route, so the error is counted and logged under the route's
/// template; assets and health checks still answer.
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

/// Loads the session named by the cookie, runs the endpoint, then saves what changed.
pub struct SessionMiddleware {
    pub store: PgSessionStore,
    pub config: Arc<SessionConfig>,
}

impl SessionMiddleware {
    pub async fn handle<E: Endpoint>(&self, next: E, mut req: Request) -> poem::Result<Response> {
        let cookie = read_cookie(&req, self.config.cookie_name);
        let loaded = match cookie {
            Some(value) => match self.load(value).await {
                Ok(loaded) => loaded,
                Err(err) => {
                    req.extensions_mut().insert(LoadFailed::new(&err));
                    return next.call(req).await.map(IntoResponse::into_response);
                }
            },
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
        req.extensions_mut().insert(session.clone());

        let mut response = next.call(req).await?.into_response();
        if let Some(user) = super::current_user::signed_in_user(&session) {
            response
                .extensions_mut()
                .insert(crate::observability::UserTag::of(&user.sub));
        }
        self.save(&session, &mut response).await?;
        Ok(response)
    }

    async fn load(&self, cookie_value: String) -> Result<Option<StoredSession>, AppError> {
        let session = self
            .store
            .load_session(cookie_value)
            .await
            .map_err(store_error)?;
        let Some(session) = session else {
            return Ok(None);
        };
        let created = session.get::<i64>(CREATED_AT).unwrap_or(0);
        let age = Utc::now().timestamp().saturating_sub(created);
        if age > self.config.absolute_lifetime.as_secs() as i64 {
            self.store
                .destroy_session(session)
                .await
                .map_err(store_error)?;
            return Ok(None);
        }
        Ok(Some(session))
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
        if (renewed || destroyed)
            && let Some(old) = loaded
        {
            self.store.destroy_session(old).await.map_err(store_error)?;
        }
        if destroyed && current.is_none() {
            set_cookie(response, &self.config, "", Some(0));
            return Ok(());
        }
        let Some(current) = current else {
            return Ok(());
        };
        if !(current.data_changed() || extended || renewed) {
            return Ok(());
        }
        let max_age = self.config.absolute_lifetime.as_secs();
        if let Some(cookie_value) = self
            .store
            .store_session(current)
            .await
            .map_err(store_error)?
        {
            set_cookie(response, &self.config, &cookie_value, Some(max_age));
        }
        Ok(())
    }
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

fn read_cookie(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

fn set_cookie(response: &mut Response, config: &SessionConfig, value: &str, max_age: Option<u64>) {
    let mut cookie = format!(
        "{}={value}; Path=/; HttpOnly; SameSite=Lax",
        config.cookie_name
    );
    if config.secure {
        cookie.push_str("; Secure");
    }
    if let Some(age) = max_age {
        cookie.push_str(&format!("; Max-Age={age}"));
    }
    if let Ok(value) = header::HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    // Pages that depend on a session must never be cached by a shared cache.
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
}
