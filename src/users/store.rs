//! Writes and reads of the `users` table.
//!
//! A batch of profiles is written by one statement, so a sync of 100k users costs a hundred
//! round trips, not a hundred thousand. A statement is all-or-nothing, so [`write_profiles`]
//! isolates a profile Postgres refuses by splitting its batch until the refused profile stands
//! alone: the others are still written in batches, and the one is skipped.

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::auth0_user::Auth0User;

/// What [`write_profiles`] did with a batch.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub written: BatchOutcome,
    /// Profiles Postgres refused as data, with its reason: nothing of them was written, but
    /// their users were marked as seen (they exist at Auth0).
    pub skipped: Vec<(String, String)>,
}

/// True when Postgres refused a statement because of a value in it rather than the statement
/// or the server: SQLSTATE class 22 (data exception: NUL in text, `\u0000` in jsonb, a number
/// or date out of range) and 54000 (a value too large for an index row). Such an error belongs
/// to one row of a batch, never to the run.
pub fn is_row_data_error(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db)
        if db.code().is_some_and(|c| c.starts_with("22") || c == "54000"))
}

/// Upserts `users` as [`upsert_batch`] does, in as few statements as the data allows: a batch
/// Postgres refuses as data ([`is_row_data_error`]) is halved and each half retried, so k bad
/// profiles among n cost about 2k·log2(n) extra statements and every good one is written. Other
/// errors (the database is away, a bug) are returned as they are.
pub async fn write_profiles(db: &PgPool, users: &[Auth0User]) -> Result<WriteOutcome, sqlx::Error> {
    let mut outcome = WriteOutcome::default();
    let mut pending = vec![users];
    while let Some(batch) = pending.pop() {
        if batch.is_empty() {
            continue;
        }
        match upsert_batch(db, batch).await {
            Ok(done) => {
                outcome.written.upserted += done.upserted;
                outcome.written.kept_newer += done.kept_newer;
            }
            Err(err) if is_row_data_error(&err) => {
                if let [user] = batch {
                    outcome
                        .skipped
                        .push((user.user_id.clone(), err.to_string()));
                } else {
                    let (a, b) = batch.split_at(batch.len() / 2);
                    pending.push(b);
                    pending.push(a);
                }
            }
            Err(err) => return Err(err),
        }
    }
    let seen: Vec<String> = outcome.skipped.iter().map(|(id, _)| id.clone()).collect();
    mark_seen(db, &seen).await?;
    Ok(outcome)
}

/// Marks users as seen by this sync (`synced_at`, not deleted) without touching their profile:
/// they exist at Auth0 even though their profile could not be stored, so no deletion pass may
/// take them (nor, later, their quote). Ids Postgres could not hold are left out.
pub async fn mark_seen(db: impl PgExecutor<'_>, user_ids: &[String]) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = user_ids
        .iter()
        .map(String::as_str)
        .filter(|id| !id.contains('\0'))
        .collect();
    if ids.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE users SET synced_at = now(), deleted_at = NULL WHERE user_id = ANY($1)",
    )
    .bind(&ids)
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// What a batch write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Rows inserted or whose profile was replaced by a same-or-newer one.
    pub upserted: u64,
    /// Rows already holding a newer profile: only marked as seen (synced_at, deleted_at cleared).
    pub kept_newer: u64,
}

/// Inserts or refreshes `users` rows from Auth0 profiles in one statement.
///
/// - Idempotent: replaying a batch changes nothing but `synced_at`.
/// - Never replaces a row with an older profile (`auth0_updated_at` decides; equal wins so a
///   replay refreshes `synced_at`), yet marks such a row as seen, so the deletion pass after a full
///   sync does not take a user whose row is newer than the export for a deleted one.
/// - A user seen again loses `deleted_at`.
/// - Duplicates inside a batch (an export can repeat a user) keep the newest profile.
/// - A scalar the profile leaves unknown (`None`: absent, or a value of unknown meaning such as
///   `"email_verified": "maybe"`) keeps the stored value, which a sign-in may have written;
///   `last_login` only moves forward. Metadata and identities are replaced as sent.
///
/// One statement: a value Postgres refuses fails the whole batch (see [`write_profiles`]).
pub async fn upsert_batch(
    db: impl PgExecutor<'_>,
    users: &[Auth0User],
) -> Result<BatchOutcome, sqlx::Error> {
    if users.is_empty() {
        return Ok(BatchOutcome::default());
    }
    let n = users.len();
    let mut ids = Vec::with_capacity(n);
    let mut emails = Vec::with_capacity(n);
    let mut verified = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut nicknames = Vec::with_capacity(n);
    let mut pictures = Vec::with_capacity(n);
    let mut blocked = Vec::with_capacity(n);
    let mut logins = Vec::with_capacity(n);
    let mut last_login = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut updated = Vec::with_capacity(n);
    let mut app_metadata = Vec::with_capacity(n);
    let mut user_metadata = Vec::with_capacity(n);
    let mut identities = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    for user in users {
        ids.push(user.user_id.as_str());
        emails.push(user.email.as_deref());
        verified.push(user.email_verified);
        names.push(user.name.as_deref());
        nicknames.push(user.nickname.as_deref());
        pictures.push(user.picture.as_deref());
        blocked.push(user.blocked);
        logins.push(user.logins_count);
        last_login.push(user.last_login);
        created.push(user.created_at);
        updated.push(user.updated_at);
        // JSON travels as text and is cast in SQL: the export path already has the text.
        app_metadata.push(user.app_metadata.as_ref().map(|v| v.to_string()));
        user_metadata.push(user.user_metadata.as_ref().map(|v| v.to_string()));
        identities.push(user.identities.as_ref().map(|v| v.to_string()));
        raw.push(user.raw.as_str());
    }

    let (upserted, kept_newer): (i64, i64) = sqlx::query_as(
        r#"
        WITH input AS (
            SELECT DISTINCT ON (t.user_id) t.*
            FROM UNNEST($1::text[], $2::text[], $3::bool[], $4::text[], $5::text[], $6::text[],
                        $7::bool[], $8::int[], $9::timestamptz[], $10::timestamptz[],
                        $11::timestamptz[], $12::text[], $13::text[], $14::text[], $15::text[])
                 AS t(user_id, email, email_verified, name, nickname, picture, blocked,
                      logins_count, last_login, auth0_created_at, auth0_updated_at,
                      app_metadata, user_metadata, identities, raw)
            ORDER BY t.user_id, t.auth0_updated_at DESC NULLS LAST
        ),
        written AS (
            INSERT INTO users AS u (user_id, email, email_verified, name, nickname, picture,
                                    blocked, logins_count, last_login, auth0_created_at,
                                    auth0_updated_at, app_metadata, user_metadata, identities,
                                    raw, synced_at, deleted_at)
            SELECT user_id, email, email_verified, name, nickname, picture, blocked,
                   logins_count, last_login, auth0_created_at, auth0_updated_at,
                   app_metadata::jsonb, user_metadata::jsonb, identities::jsonb, raw::jsonb,
                   now(), NULL
            FROM input
            ON CONFLICT (user_id) DO UPDATE SET
                email = coalesce(EXCLUDED.email, u.email),
                email_verified = coalesce(EXCLUDED.email_verified, u.email_verified),
                name = coalesce(EXCLUDED.name, u.name),
                nickname = coalesce(EXCLUDED.nickname, u.nickname),
                picture = coalesce(EXCLUDED.picture, u.picture),
                blocked = coalesce(EXCLUDED.blocked, u.blocked),
                logins_count = coalesce(EXCLUDED.logins_count, u.logins_count),
                last_login = greatest(EXCLUDED.last_login, u.last_login),
                auth0_created_at = coalesce(EXCLUDED.auth0_created_at, u.auth0_created_at),
                auth0_updated_at = coalesce(EXCLUDED.auth0_updated_at, u.auth0_updated_at),
                app_metadata = EXCLUDED.app_metadata,
                user_metadata = EXCLUDED.user_metadata,
                identities = EXCLUDED.identities,
                raw = EXCLUDED.raw,
                synced_at = EXCLUDED.synced_at,
                deleted_at = NULL
            WHERE u.auth0_updated_at IS NULL
               OR EXCLUDED.auth0_updated_at >= u.auth0_updated_at
            RETURNING u.user_id
        ),
        seen AS (
            -- Rows the INSERT left alone (they hold a newer profile): disjoint from `written`,
            -- so one statement may update them.
            UPDATE users AS u SET synced_at = now(), deleted_at = NULL
            FROM input
            WHERE u.user_id = input.user_id
              AND NOT EXISTS (SELECT 1 FROM written w WHERE w.user_id = input.user_id)
            RETURNING u.user_id
        )
        SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM seen)
        "#,
    )
    .bind(&ids)
    .bind(&emails)
    .bind(&verified)
    .bind(&names)
    .bind(&nicknames)
    .bind(&pictures)
    .bind(&blocked)
    .bind(&logins)
    .bind(&last_login)
    .bind(&created)
    .bind(&updated)
    .bind(&app_metadata)
    .bind(&user_metadata)
    .bind(&identities)
    .bind(&raw)
    .fetch_one(db)
    .await?;
    Ok(BatchOutcome {
        upserted: u64::try_from(upserted).unwrap_or_default(),
        kept_newer: u64::try_from(kept_newer).unwrap_or_default(),
    })
}

/// Users a full sync that started at `run_started` did not see, and that existed before it.
pub async fn deletion_candidates(
    db: impl PgExecutor<'_>,
    run_started: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT user_id FROM users
         WHERE deleted_at IS NULL AND first_seen_at < $1 AND (synced_at IS NULL OR synced_at < $1)
         ORDER BY user_id LIMIT $2",
    )
    .bind(run_started)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Marks deleted every user a completed full sync (started at `run_started`) did not see.
/// Their quotes stay until [`purge_deleted`].
pub async fn mark_unseen_deleted(
    db: impl PgExecutor<'_>,
    run_started: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE users SET deleted_at = now()
         WHERE deleted_at IS NULL AND first_seen_at < $1 AND (synced_at IS NULL OR synced_at < $1)",
    )
    .bind(run_started)
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Marks the given users deleted (those Auth0 confirmed are gone).
pub async fn mark_deleted(
    db: impl PgExecutor<'_>,
    user_ids: &[String],
) -> Result<u64, sqlx::Error> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE users SET deleted_at = now() WHERE deleted_at IS NULL AND user_id = ANY($1)",
    )
    .bind(user_ids)
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Deletes the quotes of users marked deleted more than `after_days` ago; the user rows stay as
/// a record. Returns the number of quotes removed.
pub async fn purge_deleted(db: impl PgExecutor<'_>, after_days: u32) -> Result<u64, sqlx::Error> {
    let result = sqlx::query(
        "DELETE FROM user_messages m USING users u
         WHERE m.user_id = u.user_id AND u.deleted_at < now() - make_interval(days => $1)",
    )
    .bind(i32::try_from(after_days).unwrap_or(i32::MAX))
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// A row of `users` as the admin page and API read it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub user_id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub name: Option<String>,
    pub nickname: Option<String>,
    pub picture: Option<String>,
    pub blocked: Option<bool>,
    pub logins_count: Option<i32>,
    pub last_login: Option<DateTime<Utc>>,
    pub auth0_created_at: Option<DateTime<Utc>>,
    pub auth0_updated_at: Option<DateTime<Utc>>,
    pub first_seen_at: DateTime<Utc>,
    pub synced_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

/// The columns of [`UserRow`], for `SELECT`s.
pub(crate) const USER_COLUMNS: &str = "user_id, email, email_verified, name, nickname, picture, blocked, \
     logins_count, last_login, auth0_created_at, auth0_updated_at, first_seen_at, synced_at, deleted_at";

pub async fn get(db: &PgPool, user_id: &str) -> Result<Option<UserRow>, sqlx::Error> {
    // Postgres text cannot hold NUL, so no stored id contains one.
    if user_id.contains('\0') {
        return Ok(None);
    }
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE user_id = $1"
    )))
    .bind(user_id)
    .fetch_optional(db)
    .await
}
