//! async-session's `SessionStore` over the `sessions` table.
//!
//! The row id is async-session's hash of the cookie value (`Session::id_from_cookie_value`), so a
//! leaked table does not hand out live cookies. The whole session (data + expiry) is stored as
//! JSON; expired rows are invisible to `load_session` and removed by [`PgSessionStore::reap`].

use async_session::{Session, SessionStore};
use sqlx::PgPool;

#[derive(Debug, Clone)]
pub struct PgSessionStore {
    db: PgPool,
}

impl PgSessionStore {
    pub fn new(db: PgPool) -> Self {
        Self { db }
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

#[async_session::async_trait]
impl SessionStore for PgSessionStore {
    async fn load_session(&self, cookie_value: String) -> async_session::Result<Option<Session>> {
        let Ok(id) = Session::id_from_cookie_value(&cookie_value) else {
            // Not base64: a tampered or foreign cookie is simply "no session".
            return Ok(None);
        };
        let data: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT data FROM sessions WHERE id = $1 AND (expires_at IS NULL OR expires_at > now())",
        )
        .bind(&id)
        .fetch_optional(&self.db)
        .await?;
        Ok(data
            .and_then(|data| serde_json::from_value::<Session>(data).ok())
            .and_then(Session::validate))
    }

    async fn store_session(&self, session: Session) -> async_session::Result<Option<String>> {
        let data = serde_json::to_value(&session)?;
        sqlx::query(
            "INSERT INTO sessions (id, expires_at, data) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET expires_at = EXCLUDED.expires_at, data = EXCLUDED.data",
        )
        .bind(session.id())
        .bind(session.expiry().copied())
        .bind(data)
        .execute(&self.db)
        .await?;
        session.reset_data_changed();
        Ok(session.into_cookie_value())
    }

    async fn destroy_session(&self, session: Session) -> async_session::Result {
        sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(session.id())
            .execute(&self.db)
            .await?;
        Ok(())
    }

    async fn clear_store(&self) -> async_session::Result {
        sqlx::query("DELETE FROM sessions")
            .execute(&self.db)
            .await?;
        Ok(())
    }
}
