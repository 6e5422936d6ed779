//! The admin search's indexes on `user_search` (its order index and the two `pg_trgm` GIN
//! indexes), set aside while a full sync loads more users than the table holds, and built again
//! after it.
//!
//! Why: a GIN index takes many keys per row (one per trigram), and adding rows to it one
//! statement at a time costs far more than building it once over the finished table. Postgres'
//! docs advise the same for bulk loads: "for bulk insertions into a table it might be advisable
//! to drop the GIN index and recreate it after finishing bulk insertions"
//! (<https://www.postgresql.org/docs/current/gin-tips.html>,
//! <https://www.postgresql.org/docs/current/populate.html#POPULATE-RM-INDEXES>). Measured on the
//! 2-core build machine for the first sync of 1,000,000 users (`examples/sync_bench`): about 22
//! s of Postgres time to keep the indexes up to date row by row, about 12 s to build them.
//!
//! Only the indexes are set aside. `user_search`'s rows are still written by its triggers in
//! the same transactions as `users`, so the search stays right meanwhile and only gets slower
//! (a sequential scan of a narrow table). If a run stops before the indexes are built again,
//! [`ensure`] builds them at the start of the next run.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use sqlx::{Connection, PgPool};
use tokio::{sync::Mutex, task::JoinSet};

/// One index of the admin search: its name and what follows `CREATE INDEX <name>`. These
/// are the definitions of migrations 20261201004003 to 20261201004005, without `CONCURRENTLY`.
/// A test checks that building them gives what the migrations made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchIndex {
    pub name: &'static str,
    pub definition: &'static str,
}

/// The indexes set aside during a bulk load. The longest build comes first: builds share
/// [`BUILDERS`] connections, and this order finishes soonest.
///
/// A B-tree refuses an entry larger than about 2,700 bytes (error 54000), so the order index
/// could refuse a row the load wrote while it was aside, and its build would then fail for
/// good. The `user_search_fits_its_order_index` check (migration 20261203001000) refuses, as
/// it is written, index or no index, any row over a conservative bound (2,600 bytes of id,
/// email and name before compression; the index compresses, so it held some larger rows), and
/// the sync skips its profile like any other Postgres refuses. The GIN indexes hold trigrams
/// and refuse no row.
pub const SEARCH_INDEXES: [SearchIndex; 3] = [
    SearchIndex {
        name: "user_search_email_trgm_idx",
        definition: "ON user_search USING gin (email gin_trgm_ops)",
    },
    SearchIndex {
        name: "user_search_name_trgm_idx",
        definition: "ON user_search USING gin (name gin_trgm_ops)",
    },
    SearchIndex {
        name: "user_search_order_idx",
        definition: "ON user_search (no_email, email, user_id) INCLUDE (name)",
    },
];

/// Indexes built at once, each on a connection of its own. A GIN build uses one core, so two
/// use a 2-core database fully.
pub const BUILDERS: usize = 2;

/// How long a statement here waits for its lock. `DROP INDEX` needs the table to itself and
/// `CREATE INDEX` keeps writers out, so each waits for the transactions using the table. While
/// it waits, later statements on the table (searches, sign-ins) queue behind it: a short wait,
/// tried again, never holds them long.
const LOCK_TIMEOUT: &str = "2s";

/// Builds tried before giving up for this run (the next run tries again).
const BUILD_ATTEMPTS: u32 = 5;

/// `lock_not_available` (a lock wait past `lock_timeout`) or `query_canceled` (a
/// `statement_timeout` the role sets below it).
fn lock_not_granted(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("55P03" | "57014")))
}

/// The rows `user_search` holds (one per `users` row), counted up to `up_to`: the question
/// costs little however large the table.
pub async fn rows_held(db: &PgPool, up_to: u64) -> Result<u64, sqlx::Error> {
    let up_to = i64::try_from(up_to).unwrap_or(i64::MAX);
    let held: i64 =
        sqlx::query_scalar("SELECT count(*) FROM (SELECT 1 FROM user_search LIMIT $1) AS held")
            .bind(up_to)
            .fetch_one(db)
            .await?;
    Ok(u64::try_from(held).unwrap_or_default())
}

/// Whether a full sync expecting `expected_users` (the tenant's count) into a table holding
/// `held` rows is a bulk load: at least `min_users`, and fewer than half of them held. Then the
/// run writes more rows than the table already has, and building the indexes over the whole
/// table costs less than keeping them up to date for the new rows.
pub fn is_bulk_load(held: u64, expected_users: u64, min_users: u64) -> bool {
    expected_users >= min_users.max(1) && held < expected_users / 2
}

/// Drops the indexes, in one transaction. `Ok(false)` when the lock was not granted within
/// [`LOCK_TIMEOUT`] (a search or a write was under way): nothing is dropped, and the load keeps
/// the indexes up to date as any write does.
pub async fn set_aside(db: &PgPool) -> Result<bool, sqlx::Error> {
    let mut conn = db.acquire().await?;
    let mut tx = begin_with_lock_timeout(&mut conn).await?;
    let names = SEARCH_INDEXES.map(|index| index.name).join(", ");
    match sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX IF EXISTS {names}")))
        .execute(&mut *tx)
        .await
    {
        Ok(_) => {
            tx.commit().await?;
            Ok(true)
        }
        Err(err) if lock_not_granted(&err) => Ok(false),
        Err(err) => Err(err),
    }
}

/// Builds every index of [`SEARCH_INDEXES`] that is missing, or invalid (left by a
/// `CREATE INDEX CONCURRENTLY` that failed), [`BUILDERS`] at a time. Returns the names built
/// and the time it took; costs one catalog query when all are there.
///
/// A build is `CREATE INDEX` without `CONCURRENTLY`: one pass over the table, about a third of
/// the time of a concurrent build here. It holds a `SHARE` lock, so writes to `user_search`
/// wait for it: about 8 s at 1,000,000 users on 2 cores, once, after a tenant's first sync.
/// Those are the writes of a new user, or of a changed email or name; the triggers leave the
/// table alone otherwise, so a returning user's sign-in does not wait. Searches go on
/// meanwhile. Each build waits at most [`LOCK_TIMEOUT`] for its lock, [`BUILD_ATTEMPTS`] times.
pub async fn ensure(db: &PgPool) -> Result<(Vec<&'static str>, Duration), sqlx::Error> {
    let clock = std::time::Instant::now();
    let present: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE i.indrelid = 'user_search'::regclass",
    )
    .fetch_all(db)
    .await?;
    let missing: VecDeque<SearchIndex> = SEARCH_INDEXES
        .into_iter()
        .filter(|index| {
            !present
                .iter()
                .any(|(name, valid)| name == index.name && *valid)
        })
        .collect();
    if missing.is_empty() {
        return Ok((Vec::new(), clock.elapsed()));
    }
    // Invalid leftovers first, one short transaction, before any build: a `DROP INDEX` waits
    // for a build under way, and everything on the table would queue behind it.
    let invalid: Vec<&str> = missing
        .iter()
        .filter(|index| present.iter().any(|(name, _)| name == index.name))
        .map(|index| index.name)
        .collect();
    if !invalid.is_empty() {
        with_lock_timeout(db, &format!("DROP INDEX IF EXISTS {}", invalid.join(", "))).await?;
    }
    let built = missing.iter().map(|index| index.name).collect();
    let queue = Arc::new(Mutex::new(missing));
    let mut builders = JoinSet::new();
    for _ in 0..BUILDERS {
        let (db, queue) = (db.clone(), queue.clone());
        builders.spawn(async move {
            loop {
                let Some(index) = queue.lock().await.pop_front() else {
                    return Ok(());
                };
                build(&db, index).await?;
            }
        });
    }
    let mut outcome = Ok(());
    while let Some(done) = builders.join_next().await {
        let done = done.unwrap_or_else(|panic| Err(sqlx::Error::Io(std::io::Error::other(panic))));
        if outcome.is_ok() {
            outcome = done;
        }
    }
    outcome.map(|()| (built, clock.elapsed()))
}

/// One index.
async fn build(db: &PgPool, index: SearchIndex) -> Result<(), sqlx::Error> {
    let clock = std::time::Instant::now();
    with_lock_timeout(
        db,
        &format!(
            "CREATE INDEX IF NOT EXISTS {} {}",
            index.name, index.definition
        ),
    )
    .await?;
    tracing::info!(
        index = index.name,
        elapsed_ms = clock.elapsed().as_millis() as u64,
        "admin search index built"
    );
    Ok(())
}

/// `statement` in a transaction that waits at most [`LOCK_TIMEOUT`] for its lock, tried up to
/// [`BUILD_ATTEMPTS`] times a second apart.
async fn with_lock_timeout(db: &PgPool, statement: &str) -> Result<(), sqlx::Error> {
    let mut attempt = 1;
    loop {
        let mut conn = db.acquire().await?;
        let mut tx = begin_with_lock_timeout(&mut conn).await?;
        match sqlx::query(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&mut *tx)
            .await
        {
            Ok(_) => return tx.commit().await,
            Err(err) if lock_not_granted(&err) && attempt < BUILD_ATTEMPTS => {
                drop(tx.rollback().await);
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// A transaction whose statements wait at most [`LOCK_TIMEOUT`] for a lock.
async fn begin_with_lock_timeout(
    conn: &mut sqlx::PgConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Postgres>, sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"
    )))
    .execute(&mut *tx)
    .await?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    use super::is_bulk_load;

    #[test]
    fn a_bulk_load_is_a_large_tenant_into_a_table_holding_less_than_half_of_it() {
        assert!(is_bulk_load(0, 1_000_000, 10_000));
        assert!(is_bulk_load(499_999, 1_000_000, 10_000));
        assert!(!is_bulk_load(500_000, 1_000_000, 10_000));
        assert!(!is_bulk_load(0, 9_999, 10_000), "a small tenant");
        assert!(!is_bulk_load(0, 0, 0), "an empty tenant");
    }
}
