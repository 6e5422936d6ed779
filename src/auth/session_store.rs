//! async-session's `SessionStore` over the `sessions` table.
//!
//! The row id is async-session's hash of the cookie value (`Session::id_from_cookie_value`), so a
//! leaked table does not hand out live cookies. The whole session (data + expiry) is stored as
//! JSON; expired rows are invisible to `load_session` and removed by [`PgSessionStore::reap`].
//!
//! Sessions read in the last second are served from memory: a signed-in page then costs one
//! query (its own) instead of two. The memory never outlives a session: this instance's deletes
//! forget at once, and sessions ended anywhere else (another instance's logout, a back-channel
//! logout, a blocked user, the sync in the worker) are forgotten when Postgres announces them
//! (`auth::session_events`). The memory is used only while those announcements can arrive; the
//! second is what bounds it should a connection die silently. The reads that do reach the
//! database are batched with those arriving alongside (`batched_lookup`).
//!
//! A session is written back only where it still exists ([`PgSessionStore::update_session`]):
//! a request that read a session just before it was ended elsewhere cannot bring it back.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_session::{Session, SessionStore};
use sqlx::{PgPool, Postgres, pool::PoolConnection};

use crate::batched_lookup::BatchedLookup;

/// How long a session read from the database is served from memory, at most.
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
    /// Whether ended sessions are being announced to this instance (`session_events`): without
    /// that, nothing is served from memory.
    announced: Arc<AtomicBool>,
    /// Counts forgettings, so a read that was in flight while sessions ended is not remembered.
    forgotten: Arc<AtomicU64>,
}

impl PgSessionStore {
    /// Needs a Tokio runtime: it starts the batched reader.
    pub fn new(db: PgPool) -> Self {
        Self {
            reads: BatchedLookup::start(db.clone(), READ_TIMEOUT, unexpired_sessions),
            db,
            recent: Arc::default(),
            announced: Arc::default(),
            forgotten: Arc::default(),
        }
    }

    fn cached(&self, id: &str) -> Option<serde_json::Value> {
        if !self.announced.load(Ordering::Acquire) {
            return None;
        }
        let recent = self.recent.lock().ok()?;
        let (data, at) = recent.get(id)?;
        (at.elapsed() < CACHE_TTL).then(|| data.clone())
    }

    /// Remembers `data` as read when `forgotten` was `as_of`, unless sessions were forgotten
    /// since (the read may predate their end) or ends are not being announced.
    fn remember(&self, id: &str, data: &serde_json::Value, as_of: u64) {
        if !self.announced.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            // Checked under the lock `forget` takes, so no forgetting slips in between.
            if self.forgotten.load(Ordering::Acquire) != as_of {
                return;
            }
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
        let as_of = self.forgotten.load(Ordering::Acquire);
        let data = self.reads.get(id).await?;
        if let Some(data) = &data {
            self.remember(id, data, as_of);
        }
        Ok(data)
    }

    fn forget(&self, id: &str) {
        self.forget_ended(std::iter::once(id));
    }

    /// Drops the memory of sessions that ended (ids as stored in `sessions.id`).
    pub fn forget_ended<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        if let Ok(mut recent) = self.recent.lock() {
            self.forgotten.fetch_add(1, Ordering::AcqRel);
            for id in ids {
                recent.remove(id);
            }
        }
    }

    /// Drops the memory of every session (announcements may have been missed).
    pub fn forget_all(&self) {
        if let Ok(mut recent) = self.recent.lock() {
            self.forgotten.fetch_add(1, Ordering::AcqRel);
            recent.clear();
        }
    }

    /// Whether ended sessions are announced to this instance; while they are not, every read
    /// goes to the database (`session_events` sets this).
    pub fn set_announced(&self, announced: bool) {
        self.announced.store(announced, Ordering::Release);
        // Either way, nothing read before now may be remembered: ends may have gone unheard.
        self.forget_all();
    }

    /// Writes back a session that was read from the store (changed data, a later idle expiry),
    /// only if it still exists: one ended meanwhile (elsewhere, by anyone) stays ended. Returns
    /// whether it still existed.
    pub async fn update_session(&self, session: Session) -> async_session::Result<bool> {
        let updated = self
            .write(
                "UPDATE sessions SET expires_at = $2, data = $3, user_id = $4, sid = $5
                 WHERE id = $1",
                &session,
            )
            .await?;
        if !updated {
            self.forget(session.id());
        }
        Ok(updated)
    }

    /// Runs `statement` (`$1` id, `$2` expiry, `$3` data, `$4` owner's `sub`, `$5` `sid`) for
    /// `session` and remembers the session if a row was written; returns whether one was. The
    /// statement must set the row to one value, so that running it twice is harmless.
    async fn write(
        &self,
        statement: &'static str,
        session: &Session,
    ) -> async_session::Result<bool> {
        let data = serde_json::to_value(session)?;
        let (user_id, sid) = owner(session);
        let written = crate::db::retry_idempotent(|| {
            sqlx::query(statement)
                .bind(session.id())
                .bind(session.expiry().copied())
                .bind(&data)
                .bind(&user_id)
                .bind(&sid)
                .execute(&self.db)
        })
        .await?
        .rows_affected()
            > 0;
        session.reset_data_changed();
        if written {
            let as_of = self.forgotten.load(Ordering::Acquire);
            self.remember(session.id(), &data, as_of);
        }
        Ok(written)
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

/// Whose session this is (`sub`) and its provider session (`sid`), stored beside it so all of a
/// person's sessions, or a provider session's, can be ended at once (`auth::revocation`).
fn owner(session: &Session) -> (Option<String>, Option<String>) {
    match super::current_user::stored_user(session) {
        Some(user) => (Some(user.sub), user.sid),
        None => (None, None),
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

    /// Stores a new session (a sign-in); sessions read from the store are written back with
    /// [`PgSessionStore::update_session`].
    async fn store_session(&self, session: Session) -> async_session::Result<Option<String>> {
        self.write(
            "INSERT INTO sessions (id, expires_at, data, user_id, sid) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at,
                 data = EXCLUDED.data, user_id = EXCLUDED.user_id, sid = EXCLUDED.sid",
            &session,
        )
        .await?;
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
        self.forget_all();
        sqlx::query("DELETE FROM sessions")
            .execute(&self.db)
            .await?;
        Ok(())
    }
}
