//! async-session's `SessionStore` over the `sessions` table.
//!
//! The row id is async-session's hash of the cookie value (`Session::id_from_cookie_value`), so a
//! leaked table does not hand out live cookies. The whole session (data + expiry) is stored as
//! JSON; expired rows are invisible to `load_session` and removed by [`PgSessionStore::reap`].
//!
//! Sessions read in the last second are served from memory: a signed-in page then costs one
//! query (its own) instead of two. This instance's writes and deletes update the memory at once;
//! a logout handled by *another* instance reaches this one within that second. The reads that
//! do reach the database are batched with those arriving alongside (`batched_lookup`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_session::{Session, SessionStore};
use sqlx::{PgPool, Postgres, pool::PoolConnection};

use crate::batched_lookup::BatchedLookup;

pub const CACHE_TTL: Duration = Duration::from_secs(1);
/// Bounds one batched read; a request gives up sooner (its own timeout) and answers 503.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds memory: past this many entries the stale ones are dropped (and all, if none is).
const CACHE_MAX: usize = 10_000;

#[derive(Debug, Clone)]
pub struct PgSessionStore {
    db: PgPool,
    reads: BatchedLookup<serde_json::Value>,
    /// The stored JSON, not `Session`s: a `Session` clone shares its data with the original, and
    /// concurrent requests must each get their own copy.
    recent: Arc<Mutex<HashMap<String, (serde_json::Value, Instant)>>>,
}

impl PgSessionStore {
    /// Needs a Tokio runtime: it starts the batched reader.
    pub fn new(db: PgPool) -> Self {
        Self {
            reads: BatchedLookup::start(db.clone(), READ_TIMEOUT, unexpired_sessions),
            db,
            recent: Arc::default(),
        }
    }

    fn cached(&self, id: &str) -> Option<serde_json::Value> {
        let recent = self.recent.lock().ok()?;
        let (data, at) = recent.get(id)?;
        (at.elapsed() < CACHE_TTL).then(|| data.clone())
    }

    fn remember(&self, id: &str, data: &serde_json::Value) {
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= CACHE_MAX {
                recent.retain(|_, (_, at)| at.elapsed() < CACHE_TTL);
                if recent.len() >= CACHE_MAX {
                    recent.clear();
                }
            }
            recent.insert(id.to_owned(), (data.clone(), Instant::now()));
        }
    }

    /// The stored session, unless it has expired (and remembers it for a second).
    async fn fetch(
        &self,
        id: &str,
    ) -> Result<Option<serde_json::Value>, crate::batched_lookup::LookupError> {
        let data = self.reads.get(id).await?;
        if let Some(data) = &data {
            self.remember(id, data);
        }
        Ok(data)
    }

    fn forget(&self, id: &str) {
        if let Ok(mut recent) = self.recent.lock() {
            recent.remove(id);
        }
    }

    /// Deletes expired sessions; returns how many went.
    pub async fn reap(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < now()")
            .execute(&self.db)
            .await?;
        Ok(done.rows_affected())
    }

    /// Sessions that have not expired (for the operator's metrics).
    pub async fn count_active(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE expires_at IS NULL OR expires_at > now()",
        )
        .fetch_one(&self.db)
        .await
    }
}

/// The unexpired sessions among `ids` (one batch of `PgSessionStore::fetch`).
async fn unexpired_sessions(
    mut conn: PoolConnection<Postgres>,
    ids: Vec<String>,
) -> Result<Vec<(String, serde_json::Value)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, data FROM sessions
         WHERE id = ANY($1) AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await
}

#[async_session::async_trait]
impl SessionStore for PgSessionStore {
    async fn load_session(&self, cookie_value: String) -> async_session::Result<Option<Session>> {
        let Ok(id) = Session::id_from_cookie_value(&cookie_value) else {
            // Not base64: a tampered or foreign cookie is simply "no session".
            return Ok(None);
        };
        let data = match self.cached(&id) {
            Some(data) => Some(data),
            None => self.fetch(&id).await?,
        };
        Ok(data
            .and_then(|data| serde_json::from_value::<Session>(data).ok())
            .and_then(Session::validate))
    }

    async fn store_session(&self, session: Session) -> async_session::Result<Option<String>> {
        let data = serde_json::to_value(&session)?;
        // Whose session this is, so all of a person's (or a provider session's) can be ended
        // at once (`auth::revocation`).
        let owner = super::current_user::stored_user(&session);
        let (user_id, sid) = match &owner {
            Some(user) => (Some(user.sub.as_str()), user.sid.as_deref()),
            None => (None, None),
        };
        // Sets the row to one value, so running it twice is harmless.
        crate::db::retry_idempotent(|| {
            sqlx::query(
                "INSERT INTO sessions (id, expires_at, data, user_id, sid) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                     data = EXCLUDED.data, user_id = EXCLUDED.user_id, sid = EXCLUDED.sid",
            )
            .bind(session.id())
            .bind(session.expiry().copied())
            .bind(&data)
            .bind(user_id)
            .bind(sid)
            .execute(&self.db)
        })
        .await?;
        session.reset_data_changed();
        self.remember(session.id(), &data);
        Ok(session.into_cookie_value())
    }

    async fn destroy_session(&self, session: Session) -> async_session::Result {
        self.forget(session.id());
        crate::db::retry_idempotent(|| {
            sqlx::query("DELETE FROM sessions WHERE id = $1")
                .bind(session.id())
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn clear_store(&self) -> async_session::Result {
        if let Ok(mut recent) = self.recent.lock() {
            recent.clear();
        }
        sqlx::query("DELETE FROM sessions")
            .execute(&self.db)
            .await?;
        Ok(())
    }
}
