//! Bulk writes of profiles through a staging table: each batch is streamed with
//! `COPY sync_staging FROM STDIN (FORMAT binary)` into a temporary table and merged into `users`
//! by one statement ([`super::store::merge_sql`], the same rules as every other write), in one
//! transaction. `COPY` costs Postgres a fraction of what binding and unnesting a dozen arrays
//! does, and its binary format needs no escaping on our side.
//! <https://www.postgresql.org/docs/current/sql-copy.html> (binary format)
//!
//! The table is temporary (no WAL, private to the session) and empties itself at every commit
//! (`ON COMMIT DELETE ROWS`), so a batch that fails leaves nothing behind for the next. Its
//! connection is the staging table's own and is closed, not pooled, when the writer is dropped:
//! the temporary table never follows a pooled connection into other work.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};

use sqlx::{Connection, PgConnection, PgPool, pool::PoolConnection};

use super::{
    auth0_user::Auth0User,
    fields::{COLUMNS, Cell, column_list},
    store::{BatchOutcome, Destination, WriteOutcome, merge_sql, newest_per_user, write_isolating},
};

/// The COPY data is sent in pieces of about this size, so a batch is never held encoded whole.
const SEND_BYTES: usize = 256 * 1024;

/// `PGCOPY\n\377\r\n\0`, then 32-bit flags and header-extension length, both zero.
const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A tuple field count of -1 ends the data.
const BINARY_TRAILER: &[u8] = &(-1i16).to_be_bytes();
/// Postgres timestamps count microseconds from 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

static CREATE_TABLE: LazyLock<String> = LazyLock::new(|| {
    let columns = COLUMNS
        .iter()
        .map(|c| format!("{} {}", c.name, c.sql_type))
        .collect::<Vec<_>>()
        .join(", ");
    format!("CREATE TEMPORARY TABLE IF NOT EXISTS sync_staging ({columns}) ON COMMIT DELETE ROWS")
});

static COPY_IN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY sync_staging ({}) FROM STDIN (FORMAT binary)",
        column_list()
    )
});

static MERGE: LazyLock<String> = LazyLock::new(|| merge_sql("", "sync_staging"));

/// Straight into `users`, for a batch of users it does not hold: what the merge would write
/// for them (the profile, `synced_at` = the transaction's `now()`, the other columns their
/// defaults), without the staging table and the merge's conflict checks.
static COPY_NEW_USERS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "COPY users ({}, synced_at) FROM STDIN (FORMAT binary)",
        column_list()
    )
});

/// A session with the staging table; see the module documentation.
pub struct StagingTable {
    conn: PoolConnection<sqlx::Postgres>,
    direct_copy: DirectCopy,
    batches_copied: u64,
}

impl StagingTable {
    /// Takes a connection of `db` for the table and creates it. Commits on this connection do
    /// not wait for their WAL to reach disk (`synchronous_commit = off`): a crash may lose the
    /// last batches, but never leaves one half-written, and the run they belong to has not
    /// finished then, so it is run again. Any later commit that waits (the run's progress and
    /// outcome are recorded on other connections) makes every earlier one durable as well.
    pub async fn open(db: &PgPool) -> Result<Self, sqlx::Error> {
        let mut conn = db.acquire().await?;
        conn.close_on_drop();
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut *conn)
            .await?;
        sqlx::query(CREATE_TABLE.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(Self {
            conn,
            direct_copy: DirectCopy::Off,
            batches_copied: 0,
        })
    }

    /// For a bulk load (the first sync of a tenant, when most users are new): a batch of new
    /// users only is copied straight into `users` ([`DirectCopy`]).
    pub fn copy_new_users_directly(&mut self, how: DirectCopy) {
        self.direct_copy = how;
    }

    /// Batches copied straight into `users` so far ([`Self::copy_new_users_directly`]).
    pub fn batches_copied(&self) -> u64 {
        self.batches_copied
    }

    pub(crate) fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// [`super::store::write_profiles`] through this table: one `COPY` and one merge per batch,
    /// a profile Postgres refuses isolated and skipped (and its user marked as seen).
    pub async fn write(&mut self, users: &[Auth0User]) -> Result<WriteOutcome, sqlx::Error> {
        write_isolating(&mut Destination::Staging(self), users).await
    }

    /// Merges `users` into `users` in one transaction; returns what it did and the number of
    /// statements sent. Errors are those of a statement: a value Postgres refuses fails the
    /// whole batch ([`super::store::write_profiles`] isolates it).
    pub(crate) async fn merge(
        &mut self,
        users: &[Auth0User],
    ) -> Result<(BatchOutcome, u64), sqlx::Error> {
        let mut users = newest_per_user(users);
        if users.is_empty() {
            return Ok((BatchOutcome::default(), 0));
        }
        // Rows in key order (the merge reads the table in the order it was filled): two writers
        // that share users (an export can repeat one) insert them in the same order, so they
        // wait for each other rather than deadlock. Should they still meet in a cycle, the
        // batch fails as a whole and the download resumes before it.
        users.sort_unstable_by(|a, b| a.user_id.cmp(&b.user_id));
        if self.direct_copy != DirectCopy::Off
            && let Some(copied) = self.copy_if_new(&users).await?
        {
            self.batches_copied += 1;
            let outcome = BatchOutcome {
                upserted: copied,
                kept_newer: 0,
            };
            // BEGIN, the check, COPY, COMMIT.
            return Ok((outcome, 4));
        }
        let mut tx = self.conn.begin().await?;
        copy_rows(&mut tx, COPY_IN.as_str(), &users, None).await?;
        // Planned anew for every batch: a plan kept from the first batch, made while `users` was
        // small, would scan the whole table to join it with each later batch.
        let (upserted, kept_newer): (i64, i64) = sqlx::query_as(MERGE.as_str())
            .persistent(false)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let outcome = BatchOutcome {
            upserted: u64::try_from(upserted).unwrap_or_default(),
            kept_newer: u64::try_from(kept_newer).unwrap_or_default(),
        };
        // BEGIN, COPY, the merge, COMMIT.
        Ok((outcome, 4))
    }

    /// [`Self::copy_new_users_directly`] for one batch: `Ok(None)` when `users` holds one of
    /// them (nothing is written then).
    async fn copy_if_new(&mut self, users: &[&Auth0User]) -> Result<Option<u64>, sqlx::Error> {
        let mut tx = self.conn.begin().await?;
        // The merge's `synced_at`: its transaction's `now()`.
        let now: DateTime<Utc> = if self.direct_copy == DirectCopy::WhenNew {
            let ids: Vec<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
            let (now, known): (DateTime<Utc>, bool) = sqlx::query_as(
                "SELECT now(), EXISTS (SELECT 1 FROM users WHERE user_id = ANY($1))",
            )
            .bind(&ids)
            .fetch_one(&mut *tx)
            .await?;
            if known {
                tx.rollback().await?;
                return Ok(None);
            }
            now
        } else {
            sqlx::query_scalar("SELECT now()")
                .fetch_one(&mut *tx)
                .await?
        };
        match copy_rows(&mut tx, COPY_NEW_USERS.as_str(), users, Some(now)).await {
            Ok(copied) => {
                tx.commit().await?;
                Ok(Some(copied))
            }
            // unique_violation: a sign-in or another writer wrote one of them meanwhile.
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("23505") => {
                tx.rollback().await?;
                self.direct_copy = DirectCopy::WhenNew;
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

/// How a bulk load's writer copies a batch straight into `users`, skipping the staging table
/// and the merge: about 40% of Postgres' work a row (1,000,000 rows on the 2-core machine:
/// 25 s by `COPY` into `users`, 44 s through the staging table). What it writes is what the
/// merge writes for users `users` does not hold: the profile, `synced_at` = the transaction's
/// `now()`, the other columns their defaults. A batch that holds a known user is merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectCopy {
    /// Every batch through the staging table and the merge.
    Off,
    /// After checking that `users` holds none of the batch's users: for a table that held
    /// some when the run began. A user written meanwhile (a unique violation) sends the batch
    /// to the merge.
    WhenNew,
    /// At once, for a table that was empty when the run began: only a user written meanwhile
    /// (a sign-in) or one the export repeats can be known, and its unique violation sends the
    /// batch to the merge and the writer to [`Self::WhenNew`]. Checking costs Postgres a sort
    /// and an index probe per user, about 10% of a row's work.
    Optimistic,
}

/// Streams `users` into `copy_sql` (a binary `COPY ... FROM STDIN`), each row followed by
/// `synced_at` when given; returns the rows copied.
async fn copy_rows(
    conn: &mut PgConnection,
    copy_sql: &str,
    users: &[&Auth0User],
    synced_at: Option<DateTime<Utc>>,
) -> Result<u64, sqlx::Error> {
    let mut copy = conn.copy_in_raw(copy_sql).await?;
    let mut data = Vec::with_capacity(SEND_BYTES + 64 * 1024);
    data.extend_from_slice(BINARY_HEADER);
    for user in users {
        if let Err(err) = encode_row(&mut data, user, synced_at) {
            // Ends the COPY cleanly, so the connection stays usable for the halves.
            copy.abort("a value too large to send").await?;
            return Err(err);
        }
        if data.len() >= SEND_BYTES {
            copy.send(data.as_slice()).await?;
            data.clear();
        }
    }
    data.extend_from_slice(BINARY_TRAILER);
    copy.send(data).await?;
    copy.finish().await
}

/// Appends one tuple of the binary COPY format: the field count, then each field as its length
/// (-1 for NULL) and its value in the type's binary form (`text`: UTF-8; `boolean`: one byte;
/// `integer`: 4 bytes big-endian; `timestamptz`: 8 bytes of microseconds since 2000; `jsonb`:
/// version 1, then the JSON text).
fn encode_row(
    out: &mut Vec<u8>,
    user: &Auth0User,
    then: Option<DateTime<Utc>>,
) -> Result<(), sqlx::Error> {
    let cells = user.cells();
    let count = cells.len() + usize::from(then.is_some());
    out.extend_from_slice(&(count as i16).to_be_bytes());
    for cell in cells.into_iter().chain(then.map(|at| Cell::Time(Some(at)))) {
        match cell {
            Cell::Text(Some(text)) => field(out, &[text.as_bytes()])?,
            Cell::Flag(Some(flag)) => field(out, &[&[u8::from(flag)]])?,
            Cell::Count(Some(count)) => field(out, &[&count.to_be_bytes()])?,
            Cell::Time(Some(at)) => {
                let micros = at.timestamp_micros() - POSTGRES_EPOCH_MICROS;
                field(out, &[&micros.to_be_bytes()])?
            }
            Cell::Json(Some(json)) => field(out, &[&[1], json.as_bytes()])?,
            Cell::Text(None)
            | Cell::Flag(None)
            | Cell::Count(None)
            | Cell::Time(None)
            | Cell::Json(None) => out.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    Ok(())
}

/// One field made of `parts`, behind its length.
fn field(out: &mut Vec<u8>, parts: &[&[u8]]) -> Result<(), sqlx::Error> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = i32::try_from(len).map_err(|_| {
        sqlx::Error::Encode(format!("a value of {len} bytes is more than Postgres stores").into())
    })?;
    out.extend_from_slice(&len.to_be_bytes());
    for part in parts {
        out.extend_from_slice(part);
    }
    Ok(())
}
