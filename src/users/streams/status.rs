//! What the admin page shows of the streams: the last changes received, how long each took
//! (Auth0 to the app, the app to `users`), and what is still waiting. Read from the database,
//! so every instance shows the same, whichever received the delivery.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A change received from a stream, with its user as stored now.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Received {
    /// `events` or `logs`.
    pub stream: String,
    /// The CloudEvent `id` or the `log_id`.
    pub id: String,
    /// `user.updated`, or a log event type code.
    pub r#type: String,
    pub user_id: String,
    pub email: Option<String>,
    pub name: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
}

impl Received {
    /// From the change at Auth0 to the app receiving it.
    pub fn delivery_lag(&self) -> Option<chrono::Duration> {
        self.occurred_at.map(|at| self.received_at - at)
    }

    /// From the app receiving it to `users` holding it.
    pub fn processing_lag(&self) -> Option<chrono::Duration> {
        self.processed_at.map(|at| at - self.received_at)
    }
}

/// The `limit` changes received last.
pub async fn recent(db: &PgPool, limit: i64) -> Result<Vec<Received>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.stream, e.id, e.type, e.user_id, u.email, u.name, e.occurred_at,
                e.received_at, e.processed_at, e.outcome
         FROM auth0_stream_events e LEFT JOIN users u USING (user_id)
         ORDER BY e.received_at DESC, e.id
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What the worker has not finished yet.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Waiting {
    /// Changes received and not yet applied.
    pub changes: i64,
    /// When the oldest of them arrived: the lag the worker is running behind.
    pub oldest_received_at: Option<DateTime<Utc>>,
    /// Users whose refresh is queued and not yet started.
    pub refreshes: i64,
}

pub async fn waiting(db: &PgPool) -> Result<Waiting, sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM auth0_stream_events WHERE processed_at IS NULL) AS changes,
                (SELECT min(received_at) FROM auth0_stream_events WHERE processed_at IS NULL)
                    AS oldest_received_at,
                (SELECT count(*) FROM user_refreshes) AS refreshes",
    )
    .fetch_one(db)
    .await
}
