//! `user_messages` queries. The user id always comes from the session, never from a request.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, pool::PoolConnection};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredQuote {
    pub message: String,
    pub updated_at: DateTime<Utc>,
}

impl StoredQuote {
    /// The optimistic-concurrency token carried by the edit form (microseconds since the epoch).
    pub fn version(&self) -> String {
        self.updated_at.timestamp_micros().to_string()
    }
}

pub fn parse_version(raw: &str) -> Option<DateTime<Utc>> {
    raw.trim()
        .parse::<i64>()
        .ok()
        .and_then(DateTime::from_timestamp_micros)
}

/// What a save may overwrite.
#[derive(Debug, Clone, Copy)]
pub enum Precondition {
    /// Only create: the first-quote form must not silently replace one saved in another tab.
    Absent,
    /// Replace only the version the edit form was loaded from.
    Version(DateTime<Utc>),
    /// Replace whatever is there (`PUT` without a version: a deliberate overwrite).
    Any,
}

/// What became of a save.
#[derive(Debug, Clone)]
pub enum SaveOutcome {
    Saved(StoredQuote),
    /// Someone (another tab) saved a newer version; nothing was written.
    Conflict(StoredQuote),
    /// The person has no `users` row (it was deleted while they were signed in); nothing was
    /// written.
    NoUser,
}

/// The quotes of several people at once, keyed by user id (for `batched_lookup`).
pub async fn find_many(
    mut conn: PoolConnection<Postgres>,
    user_ids: Vec<String>,
) -> Result<Vec<(String, StoredQuote)>, sqlx::Error> {
    let rows: Vec<(String, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_id, message, updated_at FROM user_messages WHERE user_id = ANY($1)",
    )
    .bind(&user_ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(user_id, message, updated_at)| {
            let quote = StoredQuote {
                message,
                updated_at,
            };
            (user_id, quote)
        })
        .collect())
}

pub async fn delete(db: &PgPool, user_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM user_messages WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
