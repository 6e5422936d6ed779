//! `user_messages` queries. The user id always comes from the session, never from a request.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, pool::PoolConnection};

use super::quote::Quote;

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

pub enum SaveOutcome {
    Saved(StoredQuote),
    /// Someone (another tab) saved a newer version; nothing was written.
    Conflict(StoredQuote),
}

pub async fn find(db: &PgPool, user_id: &str) -> Result<Option<StoredQuote>, sqlx::Error> {
    sqlx::query_as("SELECT message, updated_at FROM user_messages WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db)
        .await
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

/// Creates the quote, or replaces it when `precondition` allows. One statement, so two tabs
/// cannot both win.
pub async fn save(
    db: &PgPool,
    user_id: &str,
    quote: &Quote,
    precondition: Precondition,
) -> Result<SaveOutcome, sqlx::Error> {
    let (any, version) = match precondition {
        Precondition::Absent => (false, None),
        Precondition::Version(version) => (false, Some(version)),
        Precondition::Any => (true, None),
    };
    let saved: Option<StoredQuote> = sqlx::query_as(
        "INSERT INTO user_messages (user_id, message) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE
             SET message = EXCLUDED.message, updated_at = clock_timestamp()
             WHERE $3 OR user_messages.updated_at = $4
         RETURNING message, updated_at",
    )
    .bind(user_id)
    .bind(quote.as_str())
    .bind(any)
    .bind(version)
    .fetch_optional(db)
    .await?;
    if let Some(saved) = saved {
        return Ok(SaveOutcome::Saved(saved));
    }
    match find(db, user_id).await? {
        Some(current) => Ok(SaveOutcome::Conflict(current)),
        // Deleted between the two statements: nothing to overwrite, so create it.
        None => Box::pin(save(db, user_id, quote, Precondition::Absent)).await,
    }
}

pub async fn delete(db: &PgPool, user_id: &str) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM user_messages WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() > 0)
}
