//! The user sync against the Auth0 emulator and a real database (issue 6).

use std::time::Duration;

use chrono::{DateTime, Utc};
use quotebook::users::staging::StagingTable;
use quotebook::{
    config::Secret,
    emulator::{Emulator, EmulatorConfig, NewUser, UserPatch},
    users::{
        auth0_api::{ApiOptions, ManagementApi},
        auth0_user::Auth0User,
        foreground, job, store,
        sync::{SyncOptions, Syncer},
        sync_runs::{self, RunStatus, SyncMode, SyncRun, SyncTrigger},
    },
};
use sqlx::{PgPool, postgres::PgPoolOptions};

use crate::helpers::cluster;

/// A database of its own (dropped afterwards) and an emulated tenant.
pub(crate) struct Fixture {
    pub(crate) emulator: Emulator,
    pub(crate) db: PgPool,
    pub(crate) syncer: Syncer,
    db_name: String,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.emulator.shutdown();
        cluster().drop_database(std::mem::take(&mut self.db_name));
    }
}

pub(crate) fn fast_api_options() -> ApiOptions {
    ApiOptions {
        request_timeout: Duration::from_secs(2),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ApiOptions::default()
    }
}

pub(crate) async fn fixture(seed: usize) -> Fixture {
    fixture_with(seed, fast_api_options(), SyncOptions::default()).await
}

/// The incremental search normally re-reads a minute before the watermark (search is eventually
/// consistent); without that overlap, `fetched` counts exactly the changes.
async fn no_overlap_fixture(seed: usize) -> Fixture {
    let options = SyncOptions {
        search_overlap: Duration::ZERO,
        ..SyncOptions::default()
    };
    fixture_with(seed, fast_api_options(), options).await
}

pub(crate) async fn fixture_with(seed: usize, api: ApiOptions, options: SyncOptions) -> Fixture {
    fixture_on(EmulatorConfig::for_tests(), seed, api, options).await
}

/// A tenant holding `profiles` (a users file, written exactly as the Management API returns
/// users) besides `seed` demo users.
async fn fixture_from_file(profiles: String, seed: usize, options: SyncOptions) -> Fixture {
    let path = std::env::temp_dir().join(format!(
        "quotebook-users-{}.json",
        crate::helpers::random_suffix()
    ));
    std::fs::write(&path, profiles).expect("write the users file");
    let config = EmulatorConfig {
        users_file: Some(path.clone()),
        ..EmulatorConfig::for_tests()
    };
    let f = fixture_on(config, seed, fast_api_options(), options).await;
    let _ = std::fs::remove_file(path);
    f
}

async fn fixture_on(
    config: EmulatorConfig,
    seed: usize,
    api: ApiOptions,
    options: SyncOptions,
) -> Fixture {
    quotebook::telemetry::init(false);
    let emulator = Emulator::start(config).await.expect("emulator starts");
    emulator.users().seed(seed);
    let cluster = cluster();
    let db_name = cluster.create_database().await;
    let db = PgPoolOptions::new()
        .max_connections(6)
        .connect_with(cluster.options(&db_name))
        .await
        .expect("test pool");
    job::setup(&db).await.expect("apalis schema");
    let api = ManagementApi::new(
        emulator.issuer(),
        quotebook::config::DEV_CLIENT_ID,
        Secret::new(quotebook::config::DEV_CLIENT_SECRET),
        api,
    )
    .expect("api client");
    Fixture {
        syncer: Syncer::new(db.clone(), api, options),
        emulator,
        db,
        db_name,
    }
}

impl Fixture {
    /// Creates a run and executes it here (as `quotebook sync` does).
    pub(crate) async fn sync(&self, mode: SyncMode) -> SyncRun {
        let run = foreground::sync_in_foreground(&self.syncer, mode, false)
            .await
            .expect("sync runs");
        assert_eq!(
            run.status,
            RunStatus::Succeeded,
            "run failed: {:?}",
            run.error
        );
        run
    }

    pub(crate) async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.db)
            .await
            .expect("count query")
    }

    pub(crate) async fn live_users(&self) -> i64 {
        self.count("SELECT count(*) FROM users WHERE deleted_at IS NULL")
            .await
    }

    /// Every emulator user is in the table with its email and `updated_at`.
    pub(crate) async fn assert_mirrors_tenant(&self) {
        let expected = self.emulator.users().count() as i64;
        assert_eq!(self.live_users().await, expected);
        let rows: Vec<(String, Option<String>, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT user_id, email, auth0_updated_at FROM users WHERE deleted_at IS NULL",
        )
        .fetch_all(&self.db)
        .await
        .expect("rows");
        for (user_id, email, updated_at) in rows {
            let user = self
                .emulator
                .users()
                .get(&user_id)
                .unwrap_or_else(|| panic!("{user_id} is in the table but not in the tenant"));
            assert_eq!(email.as_deref(), Some(user.email.as_str()));
            assert_eq!(
                updated_at.map(|t| t.timestamp_millis()),
                Some(user.updated_at.timestamp_millis())
            );
        }
    }
}

async fn full_sync_of(n: usize) -> (Fixture, SyncRun) {
    let f = fixture(n).await;
    let run = f.sync(SyncMode::Full).await;
    assert_eq!(run.fetched as usize, n);
    assert_eq!(run.upserted as usize, n);
    assert_eq!(run.total, Some(n as i32));
    assert_eq!(run.deleted, 0);
    f.assert_mirrors_tenant().await;
    (f, run)
}

#[tokio::test]
async fn full_sync_of_an_empty_tenant() {
    let (f, run) = full_sync_of(0).await;
    assert_eq!(run.pages, 1);
    assert_eq!(f.live_users().await, 0);
}

#[tokio::test]
async fn full_sync_of_one_user() {
    let (f, _) = full_sync_of(1).await;
    let admin = f
        .emulator
        .users()
        .find_by_email("admin@example.com")
        .unwrap();
    let row = store::get(&f.db, &admin.user_id)
        .await
        .unwrap()
        .expect("the admin user");
    assert_eq!(row.email.as_deref(), Some("admin@example.com"));
    assert!(row.synced_at.is_some());
}

#[tokio::test]
async fn full_sync_of_250_users_pages() {
    let (_, run) = full_sync_of(250).await;
    assert_eq!(run.pages, 3);
}

#[tokio::test]
async fn full_sync_of_1000_users_pages_to_the_cap() {
    let (_, run) = full_sync_of(1000).await;
    assert_eq!(run.pages, 10);
}

#[tokio::test]
async fn full_sync_of_1001_users_uses_an_export() {
    let (f, _) = full_sync_of(1001).await;
    // Paging would need 11 listing calls; the export path needs a handful.
    assert!(f.emulator.faults().management_requests() < 11);
}

#[tokio::test]
async fn full_sync_of_5000_users_uses_an_export() {
    let (f, run) = full_sync_of(5000).await;
    let batch = SyncOptions::default().batch_size;
    assert_eq!(
        run.pages as usize,
        5000_usize.div_ceil(batch),
        "batches of {batch}"
    );
    assert!(f.emulator.faults().management_requests() < 20);
    // Idempotent: a second full sync changes nothing and deletes nobody.
    let again = f.sync(SyncMode::Full).await;
    assert_eq!(again.fetched, 5000);
    assert_eq!(again.deleted, 0);
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn incremental_follows_creates_and_updates_and_full_marks_deletes() {
    let f = fixture(120).await;
    f.sync(SyncMode::Full).await;
    let users = f.emulator.users();
    let ids: Vec<String> = all_ids(&f).await;

    for i in 0..5 {
        users
            .create(NewUser::with_email(format!("new{i}@example.com")))
            .unwrap();
    }
    users
        .update(
            &ids[0],
            UserPatch {
                name: Some("Renamed Person".to_owned()),
                ..UserPatch::default()
            },
        )
        .unwrap();
    assert!(users.delete(&ids[1]));
    assert!(users.delete(&ids[2]));

    let run = f.sync(SyncMode::Incremental).await;
    assert_eq!(run.mode, SyncMode::Incremental);
    assert!(
        run.fetched >= 6 && run.fetched < 120,
        "only the changes: {}",
        run.fetched
    );
    assert_eq!(f.count("SELECT count(*) FROM users").await, 125);
    let renamed = store::get(&f.db, &ids[0]).await.unwrap().unwrap();
    assert_eq!(renamed.name.as_deref(), Some("Renamed Person"));
    // Search cannot return deleted users: only a full sync can notice them.
    assert_eq!(f.live_users().await, 125);

    let full = f.sync(SyncMode::Full).await;
    assert_eq!(full.deleted, 2);
    f.assert_mirrors_tenant().await;
    let deleted = store::get(&f.db, &ids[1]).await.unwrap().unwrap();
    assert!(deleted.deleted_at.is_some());
}

#[tokio::test]
async fn incremental_without_a_watermark_runs_a_full_sync() {
    let f = fixture(30).await;
    let run = f.sync(SyncMode::Incremental).await;
    assert_eq!(run.mode, SyncMode::Full);
    assert_eq!(run.fetched, 30);
    assert!(f.syncer.watermark().await.unwrap().is_some());
}

#[tokio::test]
async fn equal_timestamps_across_page_boundaries_are_neither_lost_nor_doubled() {
    let f = no_overlap_fixture(10).await;
    f.sync(SyncMode::Full).await;
    // 250 users share one updated_at, so pages of 100 split them twice.
    let stamp = Utc::now() + chrono::Duration::seconds(5);
    for i in 0..250 {
        f.emulator
            .users()
            .create(NewUser {
                updated_at: Some(stamp),
                created_at: Some(stamp),
                ..NewUser::with_email(format!("same{i}@example.com"))
            })
            .unwrap();
    }
    let run = f.sync(SyncMode::Incremental).await;
    let same = f
        .count("SELECT count(*) FROM users WHERE email LIKE 'same%'")
        .await;
    assert_eq!(same, 250);
    assert_eq!(run.fetched, 250, "each user counted once");
    assert_eq!(
        f.syncer
            .watermark()
            .await
            .unwrap()
            .map(|t| t.timestamp_millis()),
        Some(stamp.timestamp_millis())
    );
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn an_incremental_walks_past_the_1000_result_cap() {
    let f = no_overlap_fixture(1).await;
    f.sync(SyncMode::Full).await;
    let base = Utc::now() + chrono::Duration::seconds(5);
    for i in 0..1250 {
        f.emulator
            .users()
            .create(NewUser {
                // Pairs share a millisecond: page edges land inside a timestamp too.
                updated_at: Some(base + chrono::Duration::milliseconds(i / 2)),
                ..NewUser::with_email(format!("many{i}@example.com"))
            })
            .unwrap();
    }
    let run = f.sync(SyncMode::Incremental).await;
    assert_eq!(run.mode, SyncMode::Incremental);
    assert_eq!(run.fetched, 1250);
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn deletions_are_marked_and_quotes_kept() {
    let f = fixture(40).await;
    f.sync(SyncMode::Full).await;
    let ids = all_ids(&f).await;
    sqlx::query("INSERT INTO user_messages (user_id, message) VALUES ($1, 'kept')")
        .bind(&ids[3])
        .execute(&f.db)
        .await
        .unwrap();
    for id in &ids[..5] {
        assert!(f.emulator.users().delete(id));
    }
    let run = f.sync(SyncMode::Full).await;
    assert_eq!(run.deleted, 5);
    assert_eq!(f.live_users().await, 35);
    assert_eq!(
        f.count("SELECT count(*) FROM user_messages").await,
        1,
        "the quote stays until the purge"
    );
    // Deleted long enough ago: the purge takes the quote, the row stays as a record.
    sqlx::query(
        "UPDATE users SET deleted_at = now() - interval '31 days' WHERE deleted_at IS NOT NULL",
    )
    .execute(&f.db)
    .await
    .unwrap();
    f.sync(SyncMode::Full).await;
    assert_eq!(f.count("SELECT count(*) FROM user_messages").await, 0);
    assert_eq!(f.count("SELECT count(*) FROM users").await, 40);
}

#[tokio::test]
async fn a_user_who_signed_in_during_a_full_sync_is_not_deleted() {
    let f = fixture(20).await;
    // A row written after the run started (by a sign-in) must survive the deletion pass even
    // though the listing did not include it.
    f.emulator.faults().set_latency(Duration::from_millis(100));
    let syncer = f.syncer.clone();
    let run = tokio::spawn(async move {
        foreground::sync_in_foreground(&syncer, SyncMode::Full, false).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    sqlx::query("INSERT INTO users (user_id, email) VALUES ('auth0|fresh', 'fresh@example.com')")
        .execute(&f.db)
        .await
        .unwrap();
    let run = run.await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Succeeded);
    assert_eq!(run.deleted, 0);
    assert_eq!(f.live_users().await, 21);
}

#[tokio::test]
async fn a_newer_row_is_never_replaced_by_an_older_profile() {
    let f = fixture(0).await;
    let profile = |name: &str, updated: &str| {
        Auth0User::parse(&format!(
            r#"{{"user_id":"auth0|x","name":"{name}","updated_at":"{updated}"}}"#
        ))
        .unwrap()
    };
    store::upsert_batch(&f.db, &[profile("new", "2025-01-02T00:00:00.000Z")])
        .await
        .unwrap();
    sqlx::query("UPDATE users SET deleted_at = now(), synced_at = now() - interval '1 hour'")
        .execute(&f.db)
        .await
        .unwrap();
    let outcome = store::upsert_batch(
        &f.db,
        &[
            profile("old", "2025-01-01T00:00:00.000Z"),
            profile("older", "2024-01-01T00:00:00.000Z"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(outcome.upserted, 0);
    assert_eq!(outcome.kept_newer, 1);
    let row = store::get(&f.db, "auth0|x").await.unwrap().unwrap();
    assert_eq!(row.name.as_deref(), Some("new"));
    assert!(row.deleted_at.is_none(), "seen again: no longer deleted");
    assert!(row.synced_at.unwrap() > Utc::now() - chrono::Duration::minutes(1));
}

#[tokio::test]
async fn a_deletion_that_meets_the_user_being_created_again_sees_the_newer_profile() {
    let f = fixture(0).await;
    let id = "auth0|created-again";
    let deleted_at: DateTime<Utc> = "2025-01-10T00:00:00Z".parse().unwrap();
    // Another worker writes the user created again after the deletion (its `user.created`)
    // and has not committed: the deletion finds no row, and its insert meets this one.
    let mut created = f.db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO users (user_id, name, auth0_updated_at)
         VALUES ($1, 'Again', '2025-01-11T00:00:00Z')",
    )
    .bind(id)
    .execute(&mut *created)
    .await
    .unwrap();
    let db = f.db.clone();
    let deletion = tokio::spawn(async move {
        quotebook::users::streams::apply::deletion(&db, id, None, deleted_at).await
    });
    crate::helpers::wait_for_lock_wait(&f.db, "INSERT INTO users").await;
    created.commit().await.unwrap();
    let outcome = deletion.await.unwrap().unwrap();
    assert_eq!(
        outcome.applied,
        quotebook::users::streams::apply::Applied::DeletionStale
    );
    let row = store::get(&f.db, id).await.unwrap().unwrap();
    assert!(row.deleted_at.is_none(), "the user created again stays");

    // Alone, a deletion whose own profile is stamped a little after it (an event without
    // `updated_at` takes the event's time) deletes the user it stores.
    let id = "auth0|deleted-alone";
    let own = Auth0User::parse(&format!(
        r#"{{"user_id":"{id}","name":"n","updated_at":"2025-01-10T00:00:01Z"}}"#
    ))
    .unwrap();
    let outcome = quotebook::users::streams::apply::deletion(&f.db, id, Some(&own), deleted_at)
        .await
        .unwrap();
    assert_eq!(
        outcome.applied,
        quotebook::users::streams::apply::Applied::Deleted
    );
}

#[tokio::test]
async fn a_deletion_auth0_reported_outlives_older_listings_but_not_the_user_created_again() {
    let f = fixture(0).await;
    let profile = |id: &str, updated: &str| {
        Auth0User::parse(&format!(
            r#"{{"user_id":"{id}","name":"n","updated_at":"{updated}"}}"#
        ))
        .unwrap()
    };
    let deleted_at: DateTime<Utc> = "2025-01-10T00:00:00Z".parse().unwrap();
    let ids = ["auth0|statement", "auth0|staged", "auth0|unreadable"];
    for id in ids {
        store::upsert_batch(&f.db, &[profile(id, "2025-01-01T00:00:00.000Z")])
            .await
            .unwrap();
        // `user.deleted` (or a 404 on a refresh) while an export made before it is under way.
        quotebook::users::streams::apply::deletion(&f.db, id, None, deleted_at)
            .await
            .unwrap();
    }
    let deleted = |id: &'static str| {
        let db = f.db.clone();
        async move {
            let row = store::get(&db, id).await.unwrap().unwrap();
            row.deleted_at.is_some()
        }
    };

    // The export's lines, as old as the row (a stale listing) or older: every write path.
    store::upsert_batch(&f.db, &[profile(ids[0], "2025-01-01T00:00:00.000Z")])
        .await
        .unwrap();
    let mut staging = StagingTable::open(&f.db).await.unwrap();
    staging
        .write(&[profile(ids[1], "2024-06-01T00:00:00.000Z")])
        .await
        .unwrap();
    store::mark_seen(&f.db, &[ids[2].to_owned()]).await.unwrap();
    for id in ids {
        assert!(deleted(id).await, "{id}: a listing older than the deletion");
    }

    // Created again under the same id: a profile newer than the deletion brings them back.
    staging
        .write(&[profile(ids[1], "2025-02-01T00:00:00.000Z")])
        .await
        .unwrap();
    assert!(!deleted(ids[1]).await, "created again");
    let cleared: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT auth0_deleted_at FROM users WHERE user_id = $1")
            .bind(ids[1])
            .fetch_one(&f.db)
            .await
            .unwrap();
    assert_eq!(cleared, None, "the old deletion no longer counts");
    // A deletion only the sync inferred (the user missing from an export) is undone by any
    // sighting, as before (`a_newer_row_is_never_replaced_by_an_older_profile`).
}

#[tokio::test]
async fn a_rate_limit_of_two_requests_per_second_still_completes() {
    let f = fixture(250).await;
    f.emulator.faults().set_rate_limit(Some(2));
    let run = f.sync(SyncMode::Full).await;
    assert_eq!(run.fetched, 250);
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn a_server_error_and_a_hang_mid_run_are_retried() {
    let f = fixture(250).await;
    // Token and first page succeed, then a 500, then a request that hangs past the timeout.
    warm_up_token(&f).await;
    f.emulator.faults().fail_next(1, 500);
    f.emulator.faults().hang_next(1, Duration::from_secs(5));
    let before = f.syncer.api().calls();
    let run = f.sync(SyncMode::Full).await;
    assert_eq!(run.fetched, 250);
    assert_eq!(run.attempts, 1, "retried inside the attempt");
    assert!(f.syncer.api().calls() - before >= 5, "3 pages + 2 retries");
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn persistent_failure_fails_the_run_with_the_reason() {
    let f = fixture_with(
        5,
        ApiOptions {
            max_attempts: 2,
            ..fast_api_options()
        },
        SyncOptions::default(),
    )
    .await;
    warm_up_token(&f).await;
    f.emulator.faults().fail_next(100, 503);
    let run = foreground::sync_in_foreground(&f.syncer, SyncMode::Full, false)
        .await
        .unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap_or_default().contains("503"));
    assert!(sync_runs::in_flight(&f.db).await.unwrap().is_none());
}

#[tokio::test]
async fn two_triggers_at_once_make_one_run() {
    let f = fixture(0).await;
    let (a, b) = tokio::join!(
        job::trigger(&f.db, SyncMode::Full, SyncTrigger::Admin),
        job::trigger(&f.db, SyncMode::Incremental, SyncTrigger::Admin),
    );
    let ((run_a, created_a), (run_b, created_b)) = (a.unwrap(), b.unwrap());
    assert_eq!(run_a.id, run_b.id);
    assert!(created_a ^ created_b, "exactly one trigger created the run");
    assert_eq!(f.count("SELECT count(*) FROM sync_runs").await, 1);
    assert_eq!(
        f.count(&format!(
            "SELECT count(*) FROM apalis.jobs WHERE job_type = '{}'",
            job::QUEUE
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn a_schedule_tick_fired_by_several_instances_makes_one_run() {
    let f = fixture(0).await;
    let tick = 1_800_000_000;
    let (a, b) = tokio::join!(
        job::trigger_scheduled(&f.db, SyncMode::Incremental, tick),
        job::trigger_scheduled(&f.db, SyncMode::Incremental, tick),
    );
    assert_eq!(a.unwrap().0.id, b.unwrap().0.id);
    // The run finishes; an instance whose clock lags fires the same tick late: still no new run.
    sqlx::query("UPDATE sync_runs SET status = 'succeeded'")
        .execute(&f.db)
        .await
        .unwrap();
    let (late, created) = job::trigger_scheduled(&f.db, SyncMode::Incremental, tick)
        .await
        .unwrap();
    assert!(!created);
    assert_eq!(late.status, RunStatus::Succeeded);
    assert_eq!(f.count("SELECT count(*) FROM sync_runs").await, 1);
}

#[tokio::test]
async fn the_worker_runs_a_triggered_sync() {
    let f = fixture(150).await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = spawn_worker(&f, async move {
        let _ = stopped.await;
    });
    let (run, _) = job::trigger(&f.db, SyncMode::Full, SyncTrigger::Admin)
        .await
        .unwrap();
    let run = wait_for_finish(&f, run.id, Duration::from_secs(20)).await;
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
    assert_eq!(run.fetched, 150);
    let _ = stop.send(());
    worker.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_killed_mid_run_is_rerun_to_the_right_state() {
    let f = fixture(900).await;
    // A previous full sync, so a false deletion would show.
    f.sync(SyncMode::Full).await;
    f.emulator.faults().set_latency(Duration::from_millis(150));
    let first = spawn_worker(&f, std::future::pending());
    let (run, _) = job::trigger(&f.db, SyncMode::Full, SyncTrigger::Admin)
        .await
        .unwrap();
    // Kill the worker once the run is part-way through its pages.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = sync_runs::get(&f.db, run.id).await.unwrap().unwrap();
        if now.status == RunStatus::Running && now.pages >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.abort();
    let _ = first.await;
    let midway = sync_runs::get(&f.db, run.id).await.unwrap().unwrap();
    assert_eq!(midway.status, RunStatus::Running);
    f.emulator.faults().set_latency(Duration::ZERO);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = spawn_worker(&f, async move {
        let _ = stopped.await;
    });
    let done = wait_for_finish(&f, run.id, Duration::from_secs(30)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert!(done.attempts >= 2, "rerun after the kill");
    assert_eq!(done.fetched, 900);
    assert_eq!(done.deleted, 0, "no false deletions");
    assert_eq!(f.count("SELECT count(*) FROM users").await, 900);
    f.assert_mirrors_tenant().await;
    assert_eq!(f.count("SELECT count(*) FROM sync_runs").await, 2);
    let _ = stop.send(());
    second.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_worker_shut_down_mid_run_hands_the_run_to_the_next_worker() {
    let f = fixture(300).await;
    f.emulator.faults().set_latency(Duration::from_millis(200));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let first = spawn_worker(&f, async move {
        let _ = stopped.await;
    });
    let (run, _) = job::trigger(&f.db, SyncMode::Full, SyncTrigger::Admin)
        .await
        .unwrap();
    wait_until_running(&f, run.id).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), first)
        .await
        .expect("the worker stops promptly, not after the sync")
        .unwrap()
        .unwrap();
    let paused = sync_runs::get(&f.db, run.id).await.unwrap().unwrap();
    assert_eq!(paused.status, RunStatus::Queued);
    assert!(paused.error.unwrap_or_default().contains("shutdown"));

    f.emulator.faults().set_latency(Duration::ZERO);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let second = spawn_worker(&f, async move {
        let _ = stopped.await;
    });
    let done = wait_for_finish(&f, run.id, Duration::from_secs(20)).await;
    assert_eq!(done.status, RunStatus::Succeeded, "{:?}", done.error);
    assert_eq!(done.fetched, 300);
    assert!(done.error.is_none());
    let _ = stop.send(());
    second.await.unwrap().unwrap();
}

async fn wait_until_running(f: &Fixture, id: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let run = sync_runs::get(&f.db, id).await.unwrap().unwrap();
        if run.status == RunStatus::Running && run.pages >= 1 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn_worker(
    f: &Fixture,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    // Far-off ticks: these tests trigger by hand.
    spawn_scheduled_worker(f, "0 0 0 1 1 * 2099", "0 0 0 1 1 * 2099", shutdown)
}

fn spawn_scheduled_worker(
    f: &Fixture,
    incremental: &str,
    full: &str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let settings = quotebook::config::SyncSettings {
        incremental_schedule: incremental.to_owned(),
        full_schedule: full.to_owned(),
        purge_after_days: 30,
    };
    job::spawn_worker(
        f.syncer.clone(),
        settings,
        job::WorkerOptions {
            heartbeat: Duration::from_secs(1),
            missed_heartbeats: 2,
            retry_base: Duration::from_millis(100),
            ..job::WorkerOptions::default()
        },
        shutdown,
    )
}

async fn wait_for_finish(f: &Fixture, id: i64, within: Duration) -> SyncRun {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let run = sync_runs::get(&f.db, id).await.unwrap().unwrap();
        if run.status.is_finished() {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run {id} did not finish in {within:?}: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Fetches the token first, so injected faults hit the run's API calls.
async fn warm_up_token(f: &Fixture) {
    let query = quotebook::users::auth0_api::UsersQuery {
        per_page: 1,
        ..Default::default()
    };
    f.syncer
        .api()
        .list_users(&query)
        .await
        .expect("warm-up call");
}

async fn all_ids(f: &Fixture) -> Vec<String> {
    sqlx::query_scalar("SELECT user_id FROM users ORDER BY user_id")
        .fetch_all(&f.db)
        .await
        .unwrap()
}

/// Profiles as real tenants hold them: NULs anywhere, a lone surrogate (as JavaScript's
/// `JSON.stringify` writes half an emoji), a `user_id` no database can hold.
fn dirty_profiles() -> String {
    let surrogates = r#"{"user_id": "auth0|surrogate", "email": "surrogate@example.com",
        "name": "half an emoji \ud83d", "user_metadata": {"e": "\udc00"},
        "created_at": "2024-01-05T00:00:00.000Z"}"#;
    let profiles = serde_json::json!([
        // The issue's value: one NUL in user_metadata stored 0 users (22P05).
        {"user_id": "auth0|meta", "email": "meta@example.com", "user_metadata": {"note": "a\u{0}b"},
         "created_at": "2024-01-01T00:00:00.000Z", "updated_at": "2024-01-01T00:00:00.000Z"},
        // A NUL in name failed as 22021.
        {"user_id": "auth0|name", "email": "name@example.com", "name": "Ada\u{0} Lovelace",
         "nickname": "ada\u{0}", "created_at": "2024-01-02T00:00:00.000Z"},
        // And in app_metadata keys, identities (a social provider's profile data).
        {"user_id": "google-oauth2|1234", "email": "social@example.com",
         "app_metadata": {"plan\u{0}": ["gold\u{0}"]},
         "identities": [{"provider": "google-oauth2", "user_id": "1234", "connection": "google-oauth2",
                         "isSocial": true, "profileData": {"locale": "en\u{0}"}}],
         "created_at": "2024-01-03T00:00:00.000Z"},
        // An id that cannot be stored without becoming another user's: skipped.
        {"user_id": "auth0|nul\u{0}id", "email": "nulid@example.com", "created_at": "2024-01-04T00:00:00.000Z"},
    ])
    .to_string();
    format!("{},{surrogates}]", profiles.trim_end_matches(']'))
}

async fn user_json(f: &Fixture, user_id: &str, column: &str) -> Option<serde_json::Value> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {column} FROM users WHERE user_id = $1"
    )))
    .bind(user_id)
    .fetch_one(&f.db)
    .await
    .expect("the user's row")
}

async fn assert_dirty_profiles_stored_clean(f: &Fixture) {
    assert_eq!(
        user_json(f, "auth0|meta", "user_metadata").await,
        Some(serde_json::json!({"note": "ab"}))
    );
    let name = store::get(&f.db, "auth0|name").await.unwrap().unwrap();
    assert_eq!(name.name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(name.nickname.as_deref(), Some("ada"));
    assert_eq!(
        user_json(f, "google-oauth2|1234", "app_metadata").await,
        Some(serde_json::json!({"plan": ["gold"]}))
    );
    let identities = user_json(f, "google-oauth2|1234", "identities")
        .await
        .unwrap();
    assert_eq!(identities[0]["profileData"]["locale"], "en");
    let raw = user_json(f, "auth0|meta", "raw").await.unwrap();
    assert_eq!(
        raw["user_metadata"]["note"], "ab",
        "the raw profile follows the same rule"
    );
    assert_eq!(
        f.count("SELECT count(*) FROM users WHERE email = 'nulid@example.com'")
            .await,
        0
    );
    let surrogate = store::get(&f.db, "auth0|surrogate").await.unwrap().unwrap();
    assert_eq!(surrogate.name.as_deref(), Some("half an emoji \u{fffd}"));
    assert_eq!(
        user_json(f, "auth0|surrogate", "user_metadata").await,
        Some(serde_json::json!({"e": "\u{fffd}"}))
    );
}

#[tokio::test]
async fn dirty_profiles_are_stored_clean_or_skipped_never_failing_a_run() {
    let f = fixture_from_file(dirty_profiles(), 3, SyncOptions::default()).await;
    // The emulator serves the profiles exactly as the file has them.
    let page = f
        .syncer
        .api()
        .list_users(&quotebook::users::auth0_api::UsersQuery {
            per_page: 100,
            q: Some("email:\"meta@example.com\"".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let all = f
        .syncer
        .api()
        .list_users(&quotebook::users::auth0_api::UsersQuery {
            per_page: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        all.users
            .iter()
            .any(|u| u.get().contains(r#""name":"half an emoji \ud83d""#)),
        "the lone surrogate is served as Auth0 sends it"
    );
    assert!(
        page.users[0].get().contains(r#""note":"a\u0000b""#),
        "{}",
        page.users[0].get()
    );

    let full = f.sync(SyncMode::Full).await;
    assert_eq!(full.fetched, 8, "every profile received is counted");
    assert_eq!(full.upserted, 7);
    assert_eq!(full.skipped, 1, "the NUL user_id");
    assert_dirty_profiles_stored_clean(&f).await;

    // Every later run succeeds too, incremental and full: nothing about them is final.
    f.emulator
        .users()
        .update(
            "auth0|meta",
            UserPatch {
                user_metadata: Some(
                    serde_json::from_value(serde_json::json!({"more": "c\u{0}d"})).unwrap(),
                ),
                ..UserPatch::default()
            },
        )
        .unwrap();
    let incremental = f.sync(SyncMode::Incremental).await;
    assert_eq!(incremental.mode, SyncMode::Incremental);
    assert!(incremental.upserted >= 1);
    assert_eq!(
        user_json(&f, "auth0|meta", "user_metadata").await,
        Some(serde_json::json!({"note": "ab", "more": "cd"}))
    );
    let again = f.sync(SyncMode::Full).await;
    assert_eq!((again.skipped, again.deleted), (1, 0));
    assert_eq!(f.live_users().await, 7);
}

#[tokio::test]
async fn dirty_profiles_in_an_export_are_stored_clean_or_skipped() {
    // Paging reaches 2 users here, so the full sync takes the export path (gzipped NDJSON).
    let options = SyncOptions {
        paging_limit: 2,
        ..SyncOptions::default()
    };
    let f = fixture_from_file(dirty_profiles(), 3, options).await;
    let run = f.sync(SyncMode::Full).await;
    assert!(
        f.emulator.faults().management_requests() < 11,
        "an export, not pages"
    );
    assert_eq!((run.fetched, run.upserted, run.skipped), (8, 7, 1));
    assert_dirty_profiles_stored_clean(&f).await;
}

/// A profile whose user is numbered `i`.
pub(crate) fn numbered_user(i: usize) -> Auth0User {
    Auth0User::parse(&format!(r#"{{"user_id":"auth0|{i}","name":"n{i}"}}"#)).unwrap()
}

/// Ten profiles, two of them holding values that reach Postgres unchecked (built by hand, not
/// parsed): a NUL in text (22021) and an id too large for the primary key's index (54000). The
/// first one's user was seen before, so being skipped must not make it look deleted.
pub(crate) async fn batch_with_refused_values(f: &Fixture) -> Vec<Auth0User> {
    let mut batch: Vec<Auth0User> = (0..10).map(numbered_user).collect();
    batch[3].name = Some("bad\0name".into());
    let incompressible: String = (0..2000).map(|_| crate::helpers::random_suffix()).collect();
    // (`z` sorts it after `auth0|3`, which the assertions below expect first.)
    batch[7].user_id = format!("auth0|z{incompressible}");
    sqlx::query(
        "INSERT INTO users (user_id, synced_at) VALUES ('auth0|3', now() - interval '1 day')",
    )
    .execute(&f.db)
    .await
    .unwrap();
    batch
}

/// The two refused profiles of [`batch_with_refused_values`] were skipped, the eight others
/// written, and the skipped user seen before is marked as seen again.
pub(crate) async fn assert_refused_values_isolated(f: &Fixture, outcome: &store::WriteOutcome) {
    assert_eq!(outcome.written.upserted, 8);
    let skipped: Vec<&str> = outcome.skipped.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(skipped.len(), 2);
    // The other one's random id may sort either side of it.
    assert!(skipped.contains(&"auth0|3"), "{skipped:?}");
    assert!(
        outcome.skipped.iter().any(|(_, why)| why.contains("0x00")),
        "{:?}",
        outcome.skipped
    );
    assert_eq!(f.count("SELECT count(*) FROM users").await, 9);
    assert_eq!(
        f.count("SELECT count(*) FROM users WHERE user_id = 'auth0|3' AND synced_at > now() - interval '1 minute'")
            .await,
        1,
        "a skipped user is still marked as seen"
    );
}

#[tokio::test]
async fn a_profile_postgres_refuses_is_isolated_and_its_batch_still_written() {
    let f = fixture(0).await;
    let batch = batch_with_refused_values(&f).await;
    let outcome = store::write_profiles(&f.db, &batch).await.unwrap();
    assert_refused_values_isolated(&f, &outcome).await;
}

#[tokio::test]
async fn a_blocked_user_whose_profile_postgres_refuses_is_still_blocked_and_signed_out() {
    let f = fixture(0).await;
    let blocked_row = "SELECT count(*) FROM users WHERE user_id = 'auth0|3' AND blocked";
    let sessions = "SELECT count(*) FROM sessions WHERE user_id = 'auth0|3'";
    let sign_in = || {
        sqlx::query(
            "INSERT INTO sessions (id, expires_at, data, user_id)
             VALUES ('session-' || gen_random_uuid(), now() + interval '1 hour', '{}', 'auth0|3')",
        )
        .execute(&f.db)
    };

    // A sync's batch: the profile is skipped, its block is not.
    let mut batch = batch_with_refused_values(&f).await;
    batch[3].blocked = Some(true);
    sign_in().await.unwrap();
    let outcome = store::write_profiles(&f.db, &batch).await.unwrap();
    assert_refused_values_isolated(&f, &outcome).await;
    assert_eq!(f.count(blocked_row).await, 1, "the row says blocked");
    let ended =
        quotebook::auth::revocation::end_sessions_of_revoked_users(&f.db, &["auth0|3"]).await;
    assert_eq!(
        ended.unwrap(),
        1,
        "so the sync's revocation ends the session"
    );

    // An event's profile (Event Stream, or a Log Stream refresh).
    sqlx::query("UPDATE users SET blocked = false WHERE user_id = 'auth0|3'")
        .execute(&f.db)
        .await
        .unwrap();
    sign_in().await.unwrap();
    let outcome = quotebook::users::streams::apply::profile(&f.db, &batch[3], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        outcome.applied,
        quotebook::users::streams::apply::Applied::Unstorable
    );
    assert_eq!(outcome.sessions_ended, 1);
    assert_eq!(f.count(blocked_row).await, 1);
    assert_eq!(f.count(sessions).await, 0);
}

#[tokio::test]
async fn string_booleans_are_read_and_unknown_values_never_erase_known_ones() {
    let profiles = serde_json::json!([
        {"user_id": "auth0|t", "email": "t@example.com", "email_verified": "true", "blocked": "false"},
        {"user_id": "auth0|f", "email": "f@example.com", "email_verified": "false", "blocked": "true"},
        {"user_id": "auth0|m", "email": "m@example.com", "email_verified": "maybe", "blocked": "",
         "logins_count": "many"},
    ]);
    let f = fixture_from_file(profiles.to_string(), 0, SyncOptions::default()).await;
    // What the users' sign-ins stored before the sync (the ID tokens said verified).
    sqlx::query(
        "INSERT INTO users (user_id, email, email_verified, blocked, logins_count)
         VALUES ('auth0|t', 't@example.com', true, NULL, NULL),
                ('auth0|m', 'm@example.com', true, false, 4)",
    )
    .execute(&f.db)
    .await
    .unwrap();
    // The emulator hands the strings out as Auth0 does.
    let served = f.syncer.api().get_user("auth0|t").await.unwrap().unwrap();
    assert!(
        served.get().contains(r#""email_verified":"true""#),
        "{}",
        served.get()
    );

    f.sync(SyncMode::Full).await;
    let db = f.db.clone();
    let flags = |id: &'static str| {
        let db = db.clone();
        async move {
            let row = store::get(&db, id).await.unwrap().unwrap();
            (row.email_verified, row.blocked, row.logins_count)
        }
    };
    assert_eq!(flags("auth0|t").await, (Some(true), Some(false), None));
    assert_eq!(flags("auth0|f").await, (Some(false), Some(true), None));
    assert_eq!(
        flags("auth0|m").await,
        (Some(true), Some(false), Some(4)),
        "values of unknown meaning keep what sign-in stored"
    );
    // A known value does replace: Auth0 now says the address is unverified.
    f.emulator
        .users()
        .update(
            "auth0|t",
            UserPatch {
                email_verified: Some(false),
                ..UserPatch::default()
            },
        )
        .unwrap();
    f.sync(SyncMode::Full).await;
    assert_eq!(flags("auth0|t").await.0, Some(false));
}

#[tokio::test]
async fn a_sign_in_with_a_nul_in_the_name_follows_the_same_rule() {
    let app = crate::helpers::spawn_app().await;
    let emulator = app.emulator.as_ref().expect("the in-process emulator");
    let user = emulator
        .users()
        .create(NewUser {
            name: Some("Grace\u{0} Hopper".into()),
            nickname: Some("\u{0}grace".into()),
            ..NewUser::with_email("grace@example.com")
        })
        .unwrap();
    let response = app
        .login_with(&crate::helpers::client(), "grace@example.com")
        .await;
    assert_eq!(
        response.status(),
        reqwest::StatusCode::SEE_OTHER,
        "signed in"
    );
    let row = store::get(&app.db, &user.user_id)
        .await
        .unwrap()
        .expect("the sign-in's row");
    assert_eq!(row.name.as_deref(), Some("Grace Hopper"));
    assert_eq!(row.nickname.as_deref(), Some("grace"));
}

#[tokio::test]
async fn every_full_tick_yields_a_full_run_even_when_both_schedules_fire_together() {
    let f = fixture(5).await;
    // Every second an incremental tick, every even second a full tick as well: the two fire in
    // the same second, and each run (slowed by the tenant) is still under way at the next tick.
    f.emulator.faults().set_latency(Duration::from_millis(1500));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let scheduled = spawn_scheduled_worker(&f, "* * * * * *", "*/2 * * * * *", async move {
        let _ = stopped.await;
    });
    // Three full ticks (about six seconds), however long the worker took to start.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while f
        .count("SELECT count(*) FROM sync_schedule_ticks WHERE schedule_key LIKE 'full:%'")
        .await
        < 3
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the full schedule did not fire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    scheduled.await.unwrap().unwrap();

    // The ticks are over; a worker without schedules finishes what they queued.
    f.emulator.faults().set_latency(Duration::ZERO);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let finisher = spawn_worker(&f, async move {
        let _ = stopped.await;
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sync_runs::in_flight(&f.db).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "runs still in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    finisher.await.unwrap().unwrap();

    let ticks: Vec<(String, i64)> = sqlx::query_as(
        "SELECT schedule_key, run_id FROM sync_schedule_ticks ORDER BY schedule_key",
    )
    .fetch_all(&f.db)
    .await
    .unwrap();
    let full_ticks: Vec<&(String, i64)> = ticks
        .iter()
        .filter(|(key, _)| key.starts_with("full:"))
        .collect();
    assert!(full_ticks.len() >= 3, "{ticks:?}");
    let same_second = full_ticks
        .iter()
        .filter(|(key, _)| {
            let incremental = key.replace("full:", "incremental:");
            ticks.iter().any(|(k, _)| *k == incremental)
        })
        .count();
    assert!(
        same_second >= 2,
        "both schedules fired in the same second: {ticks:?}"
    );
    for (key, run_id) in &full_ticks {
        let second = key.trim_start_matches("full:");
        let run = sync_runs::get(&f.db, *run_id).await.unwrap().unwrap();
        assert_eq!(run.mode, SyncMode::Full, "{key} was served by {run:?}");
        assert_eq!(run.status, RunStatus::Succeeded, "{key}: {run:?}");
        let tick = DateTime::from_timestamp(second.parse().unwrap(), 0).unwrap();
        assert!(
            run.finished_at.is_some_and(|done| done >= tick),
            "{key} was served by a run that ended before it: {run:?}"
        );
    }
    // Each tick made at most one run, and every run is accounted for by a tick.
    let runs = f.count("SELECT count(*) FROM sync_runs").await;
    assert!(
        runs as usize <= ticks.len(),
        "{runs} runs for {} ticks",
        ticks.len()
    );
}
