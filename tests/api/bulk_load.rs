//! A tenant's first sync as a bulk load (issue 18): the admin search's indexes set aside and
//! built again after, batches of new users copied straight into `users`, and the same rows as
//! the ordinary merge; against a real Postgres and the emulated tenant.

use quotebook::{
    emulator::{NewUser, UserPatch},
    users::{
        auth0_user::Auth0User,
        foreground, search_indexes,
        staging::{DirectCopy, StagingTable},
        sync::{SyncOptions, Syncer},
        sync_runs::{RunStatus, SyncMode},
    },
};
use serde_json::Value;

use crate::sync::{Fixture, fast_api_options, fixture_with};

/// The export path for any tenant of more than 100 users, and a bulk load from 1000 users.
fn bulk_load_options() -> SyncOptions {
    SyncOptions {
        paging_limit: 100,
        batch_size: 250,
        writers: 2,
        bulk_load_min_users: 1000,
        ..SyncOptions::default()
    }
}

/// Each search index as Postgres describes it, with its oid (new when it was built again) and
/// whether it is valid, in the order of [`search_indexes::SEARCH_INDEXES`].
async fn search_indexes_now(f: &Fixture) -> Vec<(String, u32, bool)> {
    let mut found = Vec::new();
    for index in search_indexes::SEARCH_INDEXES {
        let row: Option<(String, sqlx::postgres::types::Oid, bool)> = sqlx::query_as(
            "SELECT pg_get_indexdef(i.indexrelid), i.indexrelid, i.indisvalid
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = $1",
        )
        .bind(index.name)
        .fetch_optional(&f.db)
        .await
        .unwrap();
        let (definition, oid, valid) = row.unwrap_or_else(|| panic!("{} is missing", index.name));
        found.push((definition, oid.0, valid));
    }
    found
}

/// Every row as it would be compared: every column but the clocks.
async fn rows(f: &Fixture) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT user_id, to_jsonb(u) - 'synced_at' - 'first_seen_at' FROM users u ORDER BY user_id",
    )
    .fetch_all(&f.db)
    .await
    .unwrap()
}

async fn search_rows(f: &Fixture) -> Vec<(String, bool, String, Option<String>)> {
    sqlx::query_as("SELECT user_id, no_email, email, name FROM user_search ORDER BY user_id")
        .fetch_all(&f.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_first_sync_builds_the_search_indexes_the_migrations_made_and_writes_what_a_merge_would()
{
    let f = fixture_with(3000, fast_api_options(), bulk_load_options()).await;
    let before = search_indexes_now(&f).await;
    let run = f.sync(SyncMode::Full).await;
    assert_eq!((run.fetched, run.upserted, run.deleted), (3000, 3000, 0));
    f.assert_mirrors_tenant().await;

    let after = search_indexes_now(&f).await;
    for ((old_def, old_oid, _), (new_def, new_oid, valid)) in before.iter().zip(&after) {
        assert_eq!(old_def, new_def, "built as the migration made it");
        assert_ne!(old_oid, new_oid, "set aside and built again: {new_def}");
        assert!(valid, "{new_def}");
    }
    let bulk_rows = rows(&f).await;
    let bulk_search = search_rows(&f).await;
    assert_eq!(bulk_search.len(), 3000, "the search holds every user");

    // The same tenant through the ordinary path (no bulk load): the same rows, and the indexes
    // are left where they are.
    sqlx::query("TRUNCATE users CASCADE")
        .execute(&f.db)
        .await
        .unwrap();
    let ordinary = Syncer::new(
        f.db.clone(),
        f.syncer.api().clone(),
        SyncOptions {
            bulk_load_min_users: u64::MAX,
            ..bulk_load_options()
        },
    );
    let run = foreground::sync_in_foreground(&ordinary, SyncMode::Full, false)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(
        rows(&f).await,
        bulk_rows,
        "a bulk load writes what a merge writes"
    );
    assert_eq!(search_rows(&f).await, bulk_search);
    assert_eq!(search_indexes_now(&f).await, after, "not rebuilt");
}

#[tokio::test]
async fn a_bulk_load_merges_the_batches_that_hold_users_the_table_has() {
    let f = fixture_with(2000, fast_api_options(), bulk_load_options()).await;
    // A sign-in wrote one user of the tenant with a newer profile than Auth0's listing, and a
    // quote: the bulk load must not fail on it, nor overwrite it.
    let ids = f.emulator.users().user_ids();
    let known = &ids[1234];
    sqlx::query(
        "INSERT INTO users (user_id, email, name, auth0_updated_at, synced_at)
         VALUES ($1, 'signed-in@example.com', 'Signed in', now() + interval '1 day', NULL)",
    )
    .bind(known)
    .execute(&f.db)
    .await
    .unwrap();
    let run = f.sync(SyncMode::Full).await;
    assert_eq!((run.fetched, run.deleted), (2000, 0));
    let (email, seen): (Option<String>, bool) =
        sqlx::query_as("SELECT email, synced_at IS NOT NULL FROM users WHERE user_id = $1")
            .bind(known)
            .fetch_one(&f.db)
            .await
            .unwrap();
    assert_eq!(
        email.as_deref(),
        Some("signed-in@example.com"),
        "the newer row stays"
    );
    assert!(seen, "and is marked as seen, as the merge does");
    assert_eq!(f.count("SELECT count(*) FROM users").await, 2000);
    assert_eq!(f.count("SELECT count(*) FROM user_search").await, 2000);
}

#[tokio::test]
async fn a_user_written_while_its_batch_is_copied_sends_the_batch_through_the_merge() {
    let f = fixture_with(1500, fast_api_options(), bulk_load_options()).await;
    let users = f.emulator.users();
    let late = users
        .create(NewUser::with_email("late@example.com"))
        .unwrap();
    // A sign-in's transaction writes that user and stays open: the sync's check does not see
    // the row, and its `COPY` waits on it, then fails with a unique violation once it commits.
    let mut sign_in = f.db.begin().await.unwrap();
    sqlx::query("INSERT INTO users (user_id, email) VALUES ($1, 'late@example.com')")
        .bind(&late.user_id)
        .execute(&mut *sign_in)
        .await
        .unwrap();
    let syncer = f.syncer.clone();
    let run = tokio::spawn(async move {
        foreground::sync_in_foreground(&syncer, SyncMode::Full, false).await
    });
    crate::helpers::wait_for_lock_wait(&f.db, "COPY users").await;
    sign_in.commit().await.unwrap();
    let run = run.await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!((run.fetched, run.deleted), (1501, 0));
    assert_eq!(
        f.emulator.faults().export_downloads(),
        1,
        "merged in place, not by failing the batch and downloading again"
    );
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn a_bulk_load_that_fails_still_builds_the_search_indexes() {
    let f = fixture_with(3000, fast_api_options(), bulk_load_options()).await;
    let before = search_indexes_now(&f).await;
    // Every download breaks off a third of the way: the run fails.
    f.emulator.faults().cut_next_downloads(80_000, 1_000);
    let run = foreground::sync_in_foreground(&f.syncer, SyncMode::Full, false)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed, "{:?}", run.error);
    let after = search_indexes_now(&f).await;
    for ((old_def, old_oid, _), (new_def, new_oid, valid)) in before.iter().zip(&after) {
        assert_eq!(old_def, new_def);
        assert_ne!(old_oid, new_oid, "it was a bulk load");
        assert!(valid);
    }
}

#[tokio::test]
async fn the_next_run_builds_the_search_indexes_a_stopped_bulk_load_left_aside() {
    let f = fixture_with(50, fast_api_options(), bulk_load_options()).await;
    f.sync(SyncMode::Full).await;
    let before = search_indexes_now(&f).await;
    // What a process killed during a bulk load leaves.
    assert!(search_indexes::set_aside(&f.db).await.unwrap());
    assert_eq!(
        f.count("SELECT count(*) FROM pg_indexes WHERE tablename = 'user_search'")
            .await,
        1,
        "only the primary key is left"
    );
    // And an index of the same name that a failed `CREATE INDEX CONCURRENTLY` left invalid.
    let failed = sqlx::query(
        "CREATE UNIQUE INDEX CONCURRENTLY user_search_name_trgm_idx ON user_search (no_email)",
    )
    .execute(&f.db)
    .await;
    assert!(failed.is_err(), "fifty users share no_email = false");
    assert_eq!(
        f.count(
            "SELECT count(*) FROM pg_index
             WHERE indexrelid = 'user_search_name_trgm_idx'::regclass AND NOT indisvalid"
        )
        .await,
        1
    );
    let run = f.sync(SyncMode::Incremental).await;
    assert_eq!(run.status, RunStatus::Succeeded);
    let after = search_indexes_now(&f).await;
    for ((old_def, _, _), (new_def, _, valid)) in before.iter().zip(&after) {
        assert_eq!(old_def, new_def);
        assert!(valid);
    }
}

#[tokio::test]
async fn search_rows_follow_their_users_out_by_delete_and_truncate() {
    let f = fixture_with(30, fast_api_options(), bulk_load_options()).await;
    f.sync(SyncMode::Full).await;
    assert_eq!(f.count("SELECT count(*) FROM user_search").await, 30);
    sqlx::query("DELETE FROM users WHERE user_id IN (SELECT user_id FROM users LIMIT 10)")
        .execute(&f.db)
        .await
        .unwrap();
    assert_eq!(f.count("SELECT count(*) FROM user_search").await, 20);
    assert_eq!(
        f.count(
            "SELECT count(*) FROM user_search s
             WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.user_id = s.user_id)"
        )
        .await,
        0
    );
    sqlx::query("TRUNCATE users CASCADE")
        .execute(&f.db)
        .await
        .unwrap();
    assert_eq!(f.count("SELECT count(*) FROM user_search").await, 0);
}

#[tokio::test]
async fn the_staging_table_copies_a_batch_of_new_users_and_merges_one_with_a_known_user() {
    let f = fixture_with(0, fast_api_options(), bulk_load_options()).await;
    let profile = |id: &str, name: &str, updated: &str| {
        Auth0User::parse(&format!(
            r#"{{"user_id":"{id}","email":"{id}@example.com","name":"{name}","updated_at":"{updated}"}}"#
        ))
        .unwrap()
    };
    let mut staging = StagingTable::open(&f.db).await.unwrap();
    staging.copy_new_users_directly(DirectCopy::WhenNew);
    let new = [
        profile("auth0|a", "A", "2025-01-01T00:00:00Z"),
        profile("auth0|b", "B", "2025-01-01T00:00:00Z"),
        // Twice in the batch: the newest wins, as in the merge.
        profile("auth0|b", "B newer", "2025-02-01T00:00:00Z"),
    ];
    let written = staging.write(&new).await.unwrap();
    assert_eq!(written.written.upserted, 2);
    assert_eq!(staging.batches_copied(), 1, "new users only: copied");
    // As the merge writes them: seen by this sync now (the transaction's time), not deleted.
    assert_eq!(
        f.count(
            "SELECT count(*) FROM users WHERE synced_at > now() - interval '1 minute'
               AND synced_at <= now() AND first_seen_at = synced_at AND deleted_at IS NULL
               AND auth0_deleted_at IS NULL"
        )
        .await,
        2
    );
    let known = [
        profile("auth0|a", "A older", "2024-01-01T00:00:00Z"),
        profile("auth0|c", "C", "2025-01-01T00:00:00Z"),
    ];
    let written = staging.write(&known).await.unwrap();
    assert_eq!(staging.batches_copied(), 1, "a known user: merged");
    assert_eq!(
        (written.written.upserted, written.written.kept_newer),
        (1, 1)
    );

    // Without the check: the `COPY` meets the known user, and the batch is merged all the same.
    staging.copy_new_users_directly(DirectCopy::Optimistic);
    let known = [
        profile("auth0|b", "B newest", "2025-03-01T00:00:00Z"),
        profile("auth0|d", "D", "2025-01-01T00:00:00Z"),
    ];
    let written = staging.write(&known).await.unwrap();
    assert_eq!(staging.batches_copied(), 1, "merged");
    assert_eq!(
        (written.written.upserted, written.written.kept_newer),
        (2, 0)
    );
    let names: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT user_id, name, synced_at > now() - interval '1 minute' FROM users ORDER BY user_id",
    )
    .fetch_all(&f.db)
    .await
    .unwrap();
    let expected = [
        ("auth0|a", "A"),
        ("auth0|b", "B newest"),
        ("auth0|c", "C"),
        ("auth0|d", "D"),
    ]
    .map(|(id, name)| (id.to_owned(), name.to_owned(), true));
    assert_eq!(names, expected);
    assert_eq!(f.count("SELECT count(*) FROM user_search").await, 4);
}

#[tokio::test]
async fn a_sign_in_that_changes_no_email_or_name_does_not_wait_for_an_index_build() {
    let f = fixture_with(20, fast_api_options(), bulk_load_options()).await;
    f.sync(SyncMode::Full).await;
    let id: String = sqlx::query_scalar("SELECT user_id FROM users LIMIT 1")
        .fetch_one(&f.db)
        .await
        .unwrap();
    // What `CREATE INDEX` holds while it builds.
    let mut build = f.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_search IN SHARE MODE")
        .execute(&mut *build)
        .await
        .unwrap();
    let write = |sql: &'static str| {
        let (db, id) = (f.db.clone(), id.clone());
        async move {
            let mut tx = db.begin().await.unwrap();
            sqlx::query("SET LOCAL lock_timeout = '500ms'")
                .execute(&mut *tx)
                .await
                .unwrap();
            let done = sqlx::query(sql).bind(&id).execute(&mut *tx).await;
            done.map(|_| ())
        }
    };
    // A returning user's sign-in: an upsert that only moves `last_login`.
    write(
        "INSERT INTO users (user_id, last_login) VALUES ($1, now())
         ON CONFLICT (user_id) DO UPDATE SET last_login = EXCLUDED.last_login",
    )
    .await
    .expect("a sign-in that changes no email or name goes on during a build");
    let renamed = write("UPDATE users SET name = 'Renamed' WHERE user_id = $1").await;
    assert!(
        renamed.is_err(),
        "a new name is written to user_search, and waits for the build"
    );
    build.rollback().await.unwrap();
}

#[tokio::test]
async fn a_profile_too_large_for_the_order_index_is_skipped_with_the_index_aside_or_not() {
    let f = fixture_with(1500, fast_api_options(), bulk_load_options()).await;
    let id = f.emulator.users().user_ids()[700].clone();
    f.emulator
        .users()
        .update(
            &id,
            UserPatch {
                name: Some("x".repeat(3000)),
                ..UserPatch::default()
            },
        )
        .unwrap();
    let before = search_indexes_now(&f).await;
    let run = f.sync(SyncMode::Full).await;
    assert_eq!((run.fetched, run.skipped), (1500, 1), "{run:?}");
    let after = search_indexes_now(&f).await;
    for ((_, old_oid, _), (new_def, new_oid, valid)) in before.iter().zip(&after) {
        assert_ne!(old_oid, new_oid, "a bulk load: {new_def}");
        assert!(valid, "built: {new_def}");
    }
    // Marked as seen, not deleted; and a sync with the indexes in place skips it the same way.
    let run = f.sync(SyncMode::Full).await;
    assert_eq!((run.skipped, run.deleted), (1, 0));
    assert_eq!(f.count("SELECT count(*) FROM users").await, 1499);
}
