//! Writes and reads of the `users` table.
//!
//! A batch of profiles is written by one statement, so a sync of 100k users costs a hundred
//! round trips, not a hundred thousand. A statement is all-or-nothing, so [`write_profiles`]
//! isolates a profile Postgres refuses by splitting its batch until the refused profile stands
//! alone: the others are still written in batches, and the one is skipped. Large batches (an
//! export) take the same path through a staging table ([`super::staging`]); both merge into
//! `users` with the statement [`merge_sql`] builds from the field list ([`super::fields`]).

use std::{collections::HashMap, sync::LazyLock};

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};

use super::{
    auth0_user::Auth0User,
    fields::{self, COLUMNS, Cell, Merge},
    staging::StagingTable,
};

pub use super::fields::UserRow;

/// What [`write_profiles`] did with a batch.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub written: BatchOutcome,
    /// Profiles Postgres refused as data, with its reason: nothing of them was written, but
    /// their users were marked as seen (they exist at Auth0).
    pub skipped: Vec<(String, String)>,
    /// SQL statements it took.
    pub statements: u64,
}

/// True when Postgres refused a statement because of a value in it rather than the statement
/// or the server: SQLSTATE class 22 (data exception: NUL in text, `\u0000` in jsonb, a number
/// or date out of range), 54000 (a value too large for an index row), 23514 (a check of the
/// row's values: `user_search_fits_its_order_index`), or a value that could not be encoded for
/// Postgres at all. Such an error belongs to one row of a batch, never to the
/// run.
pub fn is_row_data_error(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("22") || c == "54000" || c == "23514"),
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// Upserts `users` as [`upsert_batch`] does, in as few statements as the data allows: a batch
/// Postgres refuses as data ([`is_row_data_error`]) is halved and each half retried, so k bad
/// profiles among n cost about 2k·log2(n) extra statements and every good one is written. Other
/// errors (the database is away, a bug) are returned as they are.
pub async fn write_profiles(db: &PgPool, users: &[Auth0User]) -> Result<WriteOutcome, sqlx::Error> {
    write_isolating(&mut Destination::Statement(db), users).await
}

/// Where [`write_isolating`] writes.
pub(crate) enum Destination<'a> {
    /// [`upsert_batch`]: one statement a batch.
    Statement(&'a PgPool),
    /// `COPY` into a staging table and one merge a batch.
    Staging(&'a mut StagingTable),
}

impl Destination<'_> {
    async fn write(&mut self, users: &[Auth0User]) -> Result<(BatchOutcome, u64), sqlx::Error> {
        match self {
            Destination::Statement(db) => Ok((upsert_batch(*db, users).await?, 1)),
            Destination::Staging(staging) => staging.merge(users).await,
        }
    }

    pub(crate) async fn mark_seen(&mut self, user_ids: &[String]) -> Result<u64, sqlx::Error> {
        match self {
            Destination::Statement(db) => mark_seen(*db, user_ids).await,
            Destination::Staging(staging) => mark_seen(staging.connection(), user_ids).await,
        }
    }

    async fn mark_blocked(&mut self, users: &[&Auth0User]) -> Result<u64, sqlx::Error> {
        match self {
            Destination::Statement(db) => mark_blocked(*db, users).await,
            Destination::Staging(staging) => mark_blocked(staging.connection(), users).await,
        }
    }
}

/// [`write_profiles`] to `destination`.
pub(crate) async fn write_isolating(
    destination: &mut Destination<'_>,
    users: &[Auth0User],
) -> Result<WriteOutcome, sqlx::Error> {
    let mut outcome = WriteOutcome::default();
    let mut refused = Vec::new();
    let mut pending = vec![users];
    while let Some(batch) = pending.pop() {
        if batch.is_empty() {
            continue;
        }
        match destination.write(batch).await {
            Ok((done, statements)) => {
                outcome.written.upserted += done.upserted;
                outcome.written.kept_newer += done.kept_newer;
                outcome.statements += statements;
            }
            Err(err) if is_row_data_error(&err) => {
                outcome.statements += 1;
                if let [user] = batch {
                    outcome
                        .skipped
                        .push((user.user_id.clone(), err.to_string()));
                    refused.push(user);
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
    if !seen.is_empty() {
        destination.mark_seen(&seen).await?;
        outcome.statements += 1;
    }
    if refused.iter().any(|user| user.blocked == Some(true)) {
        destination.mark_blocked(&refused).await?;
        outcome.statements += 1;
    }
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
        // A deletion Auth0 reported stays: without a readable profile there is no version to
        // tell a stale listing from the user created again.
        "UPDATE users SET synced_at = now(),
             deleted_at = CASE WHEN auth0_deleted_at IS NOT NULL THEN deleted_at END
         WHERE user_id = ANY($1)",
    )
    .bind(&ids)
    .execute(db)
    .await?;
    Ok(result.rows_affected())
}

/// Sets `blocked` on the rows of `users`, profiles Auth0 says are blocked but Postgres refused
/// to store whole: the flag is always storable, and it is what ends the user's sessions
/// ([`crate::auth::revocation::end_sessions_of_revoked_users`] reads the row). Only where the
/// profile is not older than the row (the merge's version rule); rows only, since a user
/// without one has no session. Returns the rows changed.
pub async fn mark_blocked(
    db: impl PgExecutor<'_>,
    users: &[&Auth0User],
) -> Result<u64, sqlx::Error> {
    let (ids, versions): (Vec<&str>, Vec<Option<DateTime<Utc>>>) = users
        .iter()
        .filter(|u| u.blocked == Some(true) && !u.user_id.contains('\0'))
        .map(|u| (u.user_id.as_str(), u.updated_at))
        .unzip();
    if ids.is_empty() {
        return Ok(0);
    }
    let result = sqlx::query(
        "UPDATE users AS u SET blocked = true
         FROM unnest($1::text[], $2::timestamptz[]) AS p(user_id, version)
         WHERE u.user_id = p.user_id AND u.blocked IS NOT TRUE
           AND (u.auth0_updated_at IS NULL OR p.version >= u.auth0_updated_at)",
    )
    .bind(&ids)
    .bind(&versions)
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

/// The profiles of `users` with one per `user_id`: the newest (`updated_at`; unknown loses; the
/// later of two equal ones), in the order they first appear. An export can repeat a user, and
/// one statement cannot write a row twice.
pub(crate) fn newest_per_user(users: &[Auth0User]) -> Vec<&Auth0User> {
    let mut at: HashMap<&str, usize> = HashMap::with_capacity(users.len());
    let mut kept: Vec<&Auth0User> = Vec::with_capacity(users.len());
    for user in users {
        match at.get(user.user_id.as_str()) {
            Some(&i) => {
                if user.updated_at >= kept[i].updated_at {
                    kept[i] = user;
                }
            }
            None => {
                at.insert(&user.user_id, kept.len());
                kept.push(user);
            }
        }
    }
    kept
}

/// The statement that merges the rows of `input` (a relation with the columns of [`COLUMNS`],
/// one row per user) into `users`, returning how many were upserted and how many kept a newer
/// profile. `prelude` defines `input` when it is a common table expression (`"input AS
/// (...), "`). The rules, from the field list:
///
/// - Idempotent: replaying a batch changes nothing but `synced_at`.
/// - Never replaces a row with an older profile ([`Merge::Version`]; equal wins so a replay
///   refreshes `synced_at`), yet marks such a row as seen, so the deletion pass after a full sync
///   does not take a user whose row is newer than the export for a deleted one.
/// - A user seen again loses `deleted_at`, unless Auth0 reported the deletion
///   (`auth0_deleted_at`) no earlier than the profile's `updated_at`: a listing made before
///   the deletion (an export under way when `user.deleted` arrived) says nothing against it.
/// - [`Merge::KeepKnown`]: a value the profile leaves unknown keeps the stored one, which a
///   sign-in may have written; [`Merge::Latest`] only moves forward; [`Merge::AsSent`] replaces.
pub(crate) fn merge_sql(prelude: &str, input: &str) -> String {
    let columns = fields::column_list();
    let set = COLUMNS
        .iter()
        .filter_map(|c| {
            let n = c.name;
            match c.merge {
                Merge::Key => None,
                Merge::KeepKnown | Merge::Version => {
                    Some(format!("{n} = coalesce(EXCLUDED.{n}, u.{n})"))
                }
                Merge::Latest => Some(format!("{n} = greatest(EXCLUDED.{n}, u.{n})")),
                Merge::AsSent => Some(format!("{n} = EXCLUDED.{n}")),
            }
        })
        .collect::<Vec<_>>()
        .join(",\n            ");
    let version = fields::version_column();
    format!(
        "WITH {prelude}
        written AS (
            INSERT INTO users AS u ({columns}, synced_at, deleted_at)
            SELECT {columns}, now(), NULL FROM {input}
            ON CONFLICT (user_id) DO UPDATE SET
            {set},
            synced_at = EXCLUDED.synced_at,
            deleted_at = CASE WHEN u.auth0_deleted_at >= EXCLUDED.{version} THEN u.deleted_at END,
            auth0_deleted_at =
                CASE WHEN u.auth0_deleted_at >= EXCLUDED.{version} THEN u.auth0_deleted_at END
            WHERE u.{version} IS NULL OR EXCLUDED.{version} >= u.{version}
            RETURNING u.user_id
        ),
        seen AS (
            -- Rows the INSERT left alone (they hold a newer profile): disjoint from `written`,
            -- so one statement may update them.
            UPDATE users AS u SET synced_at = now(),
                deleted_at = CASE WHEN u.auth0_deleted_at >= input.{version}
                    THEN u.deleted_at END
            FROM {input} AS input
            WHERE u.user_id = input.user_id
              AND NOT EXISTS (SELECT 1 FROM written w WHERE w.user_id = input.user_id)
            RETURNING u.user_id
        )
        SELECT (SELECT count(*) FROM written), (SELECT count(*) FROM seen)"
    )
}

/// [`merge_sql`] over the arrays of [`upsert_batch`], one a column.
static UPSERT_FROM_ARRAYS: LazyLock<String> = LazyLock::new(|| {
    let arrays = COLUMNS
        .iter()
        .enumerate()
        .map(|(i, c)| match c.sql_type {
            // JSON travels as text: the export path already has the text.
            "jsonb" => format!("${}::text[]::jsonb[]", i + 1),
            sql_type => format!("${}::{sql_type}[]", i + 1),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let names = fields::column_list();
    merge_sql(
        &format!("input AS (SELECT * FROM UNNEST({arrays}) AS t({names})),"),
        "input",
    )
});

/// One column of a batch, as the array bound for it.
enum ColumnArray<'a> {
    Text(Vec<Option<&'a str>>),
    Flag(Vec<Option<bool>>),
    Count(Vec<Option<i32>>),
    Time(Vec<Option<DateTime<Utc>>>),
}

impl<'a> ColumnArray<'a> {
    fn of(rows: &[[Cell<'a>; COLUMNS.len()]], column: usize) -> Self {
        let cells = rows.iter().map(|row| row[column]);
        match rows.first().map(|row| row[column]) {
            Some(Cell::Flag(_)) => Self::Flag(
                cells
                    .map(|c| if let Cell::Flag(v) = c { v } else { None })
                    .collect(),
            ),
            Some(Cell::Count(_)) => Self::Count(
                cells
                    .map(|c| if let Cell::Count(v) = c { v } else { None })
                    .collect(),
            ),
            Some(Cell::Time(_)) => Self::Time(
                cells
                    .map(|c| if let Cell::Time(v) = c { v } else { None })
                    .collect(),
            ),
            _ => Self::Text(
                cells
                    .map(|c| match c {
                        Cell::Text(v) | Cell::Json(v) => v,
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

/// Inserts or refreshes `users` rows from Auth0 profiles in one statement, by the rules of
/// [`merge_sql`]. Duplicates inside a batch (an export can repeat a user) keep the newest
/// profile ([`newest_per_user`]).
///
/// One statement: a value Postgres refuses fails the whole batch (see [`write_profiles`]).
pub async fn upsert_batch(
    db: impl PgExecutor<'_>,
    users: &[Auth0User],
) -> Result<BatchOutcome, sqlx::Error> {
    let users = newest_per_user(users);
    if users.is_empty() {
        return Ok(BatchOutcome::default());
    }
    let rows: Vec<_> = users.iter().map(|user| user.cells()).collect();
    let mut query = sqlx::query_as::<_, (i64, i64)>(UPSERT_FROM_ARRAYS.as_str());
    for column in 0..COLUMNS.len() {
        query = match ColumnArray::of(&rows, column) {
            ColumnArray::Text(values) => query.bind(values),
            ColumnArray::Flag(values) => query.bind(values),
            ColumnArray::Count(values) => query.bind(values),
            ColumnArray::Time(values) => query.bind(values),
        };
    }
    let (upserted, kept_newer) = query.fetch_one(db).await?;
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

/// The columns of [`UserRow`], for `SELECT`s.
pub(crate) const USER_COLUMNS: &str = super::fields::USER_ROW_COLUMNS;

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
