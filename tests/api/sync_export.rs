//! The export path at scale (issue 18): batches streamed with `COPY` into a staging table and
//! merged into `users`, several writers at once, a download resumed halfway, and the deletion
//! pass that follows; against a real Postgres and the emulated tenant.

use chrono::{DateTime, Utc};
use quotebook::{
    emulator::{NewUser, UserPatch},
    users::{
        auth0_user::Auth0User, staging::StagingTable, store, sync::SyncOptions, sync_runs::SyncMode,
    },
};
use serde_json::Value;

use crate::sync::{
    Fixture, assert_refused_values_isolated, batch_with_refused_values, fast_api_options, fixture,
    fixture_with, numbered_user,
};

/// The export path for any tenant of more than 100 users, in small batches written by three
/// writers at once, so batches finish out of order.
fn many_writers() -> SyncOptions {
    SyncOptions {
        paging_limit: 100,
        batch_size: 250,
        writers: 3,
        ..SyncOptions::default()
    }
}

/// Rows as they would be compared: every column but the two the clock writes.
async fn rows(f: &Fixture) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT user_id, to_jsonb(u) - 'synced_at' - 'first_seen_at' FROM users u ORDER BY user_id",
    )
    .fetch_all(&f.db)
    .await
    .expect("rows")
}

/// What sign-ins and earlier syncs left before the batch below arrives.
async fn earlier_rows(f: &Fixture) {
    sqlx::query("TRUNCATE users CASCADE")
        .execute(&f.db)
        .await
        .unwrap();
    sqlx::query(
        r#"INSERT INTO users (user_id, email, email_verified, name, blocked, logins_count,
                              last_login, auth0_updated_at, app_metadata, synced_at, deleted_at)
           VALUES ('auth0|known', 'k@example.com', true, 'Known', false, 4, NULL, NULL,
                   '{"plan":"gold"}', now() - interval '1 day', NULL),
                  ('auth0|newer', 'n@example.com', true, 'Newer', NULL, NULL, NULL,
                   '2025-06-01T00:00:00Z', NULL, now() - interval '1 day', NULL),
                  ('auth0|later-login', NULL, NULL, NULL, NULL, NULL, '2025-05-01T00:00:00Z',
                   NULL, NULL, now() - interval '1 day', NULL),
                  ('auth0|gone', 'g@example.com', NULL, 'Gone', NULL, NULL, NULL, NULL, NULL,
                   now() - interval '40 days', now() - interval '1 day')"#,
    )
    .execute(&f.db)
    .await
    .unwrap();
}

/// One batch with every shape the merge has a rule for.
fn batch() -> Vec<Auth0User> {
    [
        r#"{"user_id":"auth0|full","email":"zoe@example.com","email_verified":true,
            "name":"Zoë 🎉 \"Quoted\"\tTab","nickname":"zoe","picture":"https://example.com/z.png",
            "blocked":false,"logins_count":7,"last_login":"2025-01-02T03:04:05.678Z",
            "created_at":{"$date":"2020-05-06T07:08:09.010Z"},"updated_at":"2025-01-02T03:04:05.679Z",
            "identities":[{"provider":"auth0","user_id":"full","isSocial":false}],
            "app_metadata":{"roles":["admin"]},"user_metadata":{"note":"a\\b\nc","nul":"x\u0000y"},
            "username":"zoe","brand_new_field":[1,2.5,null]}"#,
        r#"{"user_id":"google-oauth2|123","email_verified":"false","blocked":"true",
            "logins_count":"12","updated_at":"2025-02-01T00:00:00.000Z"}"#,
        // Values of unknown meaning keep what the sign-in stored; absent metadata is removed.
        r#"{"user_id":"auth0|known","email_verified":"maybe","blocked":"","logins_count":-3,
            "name":7,"updated_at":"2025-03-01T00:00:00.000Z"}"#,
        // Older than the stored profile: only marked as seen.
        r#"{"user_id":"auth0|newer","name":"Older","updated_at":"2025-01-01T00:00:00.000Z"}"#,
        r#"{"user_id":"auth0|later-login","last_login":"2024-01-01T00:00:00.000Z",
            "updated_at":"2025-01-01T00:00:00.000Z"}"#,
        // Seen again: no longer deleted.
        r#"{"user_id":"auth0|gone","name":"Back","updated_at":"2025-01-01T00:00:00.000Z"}"#,
        // A user twice in one batch (an export can repeat one): the newest wins.
        r#"{"user_id":"auth0|twice","name":"Newest","updated_at":"2025-04-02T00:00:00.000Z"}"#,
        r#"{"user_id":"auth0|twice","name":"Oldest","updated_at":"2025-04-01T00:00:00.000Z"}"#,
        r#"{"user_id":"auth0|bare"}"#,
    ]
    .iter()
    .map(|text| Auth0User::parse(text).expect("a usable profile"))
    .collect()
}

#[tokio::test]
async fn the_staging_merge_writes_the_same_rows_as_the_statement() {
    let f = fixture(0).await;
    earlier_rows(&f).await;
    let mut staging = StagingTable::open(&f.db).await.unwrap();
    let staged = staging.write(&batch()).await.unwrap();
    let staged_rows = rows(&f).await;
    let recent = f
        .count("SELECT count(*) FROM users WHERE synced_at > now() - interval '1 minute' AND deleted_at IS NULL")
        .await;

    earlier_rows(&f).await;
    let direct = store::write_profiles(&f.db, &batch()).await.unwrap();
    assert_eq!(
        staged_rows,
        rows(&f).await,
        "both paths write the same rows"
    );
    assert_eq!(
        (staged.written.upserted, staged.written.kept_newer),
        (direct.written.upserted, direct.written.kept_newer)
    );

    // And those rows are right, not merely alike.
    assert_eq!((staged.written.upserted, staged.written.kept_newer), (7, 1));
    assert_eq!(recent, 8, "every user of the batch is seen, none deleted");
    let row = |id: &str| {
        staged_rows
            .iter()
            .find(|(user_id, _)| user_id == id)
            .map(|(_, row)| row.clone())
            .unwrap_or_else(|| panic!("{id} was written"))
    };
    let full = row("auth0|full");
    assert_eq!(full["name"], "Zoë 🎉 \"Quoted\"\tTab");
    assert_eq!(full["logins_count"], 7);
    let at = |v: &Value| {
        DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .with_timezone(&Utc)
    };
    assert_eq!(
        at(&full["auth0_updated_at"]).to_rfc3339(),
        "2025-01-02T03:04:05.679+00:00",
        "times keep their milliseconds"
    );
    assert_eq!(
        at(&full["auth0_created_at"]).to_rfc3339(),
        "2020-05-06T07:08:09.010+00:00"
    );
    assert_eq!(full["user_metadata"]["note"], "a\\b\nc");
    assert_eq!(
        full["user_metadata"]["nul"], "xy",
        "the storable rule holds"
    );
    assert_eq!(full["identities"][0]["provider"], "auth0");
    assert_eq!(
        full["raw"]["brand_new_field"],
        serde_json::json!([1, 2.5, null])
    );
    assert_eq!(full["raw"]["username"], "zoe");
    let social = row("google-oauth2|123");
    assert_eq!(
        (
            &social["email_verified"],
            &social["blocked"],
            &social["logins_count"]
        ),
        (&Value::Bool(false), &Value::Bool(true), &Value::from(12))
    );
    let known = row("auth0|known");
    assert_eq!(
        (
            &known["email_verified"],
            &known["blocked"],
            &known["logins_count"],
            &known["name"]
        ),
        (
            &Value::Bool(true),
            &Value::Bool(false),
            &Value::from(4),
            &Value::from("Known")
        ),
        "values of unknown meaning keep what was known"
    );
    assert_eq!(
        known["app_metadata"],
        Value::Null,
        "metadata is replaced as sent"
    );
    assert_eq!(
        row("auth0|newer")["name"],
        "Newer",
        "an older profile never wins"
    );
    assert_eq!(
        at(&row("auth0|later-login")["last_login"]).to_rfc3339(),
        "2025-05-01T00:00:00+00:00",
        "last_login only moves forward"
    );
    assert_eq!(row("auth0|gone")["deleted_at"], Value::Null);
    assert_eq!(row("auth0|twice")["name"], "Newest");
    assert_eq!(
        row("auth0|bare")["raw"],
        serde_json::json!({"user_id": "auth0|bare"})
    );
}

#[tokio::test]
async fn a_value_postgres_refuses_is_isolated_in_a_staged_batch() {
    let f = fixture(0).await;
    // The NUL fails the COPY, the long id the merge.
    let batch = batch_with_refused_values(&f).await;
    let mut staging = StagingTable::open(&f.db).await.unwrap();
    let outcome = staging.write(&batch).await.unwrap();
    assert_refused_values_isolated(&f, &outcome).await;
    // The failed batches left nothing in the staging table: the next one merges alone.
    let next = staging.write(&[numbered_user(20)]).await.unwrap();
    assert_eq!((next.written.upserted, next.written.kept_newer), (1, 0));
}

#[tokio::test]
async fn an_export_written_by_several_writers_mirrors_the_tenant_and_marks_deletions() {
    let f = fixture_with(3000, fast_api_options(), many_writers()).await;
    let first = f.sync(SyncMode::Full).await;
    assert_eq!(
        (first.fetched, first.upserted, first.deleted),
        (3000, 3000, 0)
    );
    assert_eq!(first.pages, 12, "batches of 250");
    assert!(
        f.emulator.faults().export_downloads() == 1,
        "an export, not pages"
    );
    f.assert_mirrors_tenant().await;

    // Auth0 changes, and rows a full sync must weigh: one only a sync ever wrote (its user is
    // gone), one a sign-in wrote after the run below started (its user is too new for the
    // file).
    let users = f.emulator.users();
    let ids: Vec<String> = sqlx::query_scalar("SELECT user_id FROM users ORDER BY user_id")
        .fetch_all(&f.db)
        .await
        .unwrap();
    for id in &ids[..7] {
        assert!(users.delete(id));
    }
    for i in 0..5 {
        users
            .create(NewUser::with_email(format!("late{i}@example.com")))
            .unwrap();
    }
    for id in &ids[100..103] {
        users
            .update(
                id,
                UserPatch {
                    name: Some("Renamed".into()),
                    ..UserPatch::default()
                },
            )
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO users (user_id, first_seen_at, synced_at) VALUES
             ('auth0|only-in-the-table', now() - interval '1 day', now() - interval '1 day'),
             ('auth0|signed-in-meanwhile', now() + interval '1 hour', NULL)",
    )
    .execute(&f.db)
    .await
    .unwrap();

    let second = f.sync(SyncMode::Full).await;
    assert_eq!(second.fetched, 2998);
    assert_eq!(
        second.deleted, 8,
        "the seven deleted at Auth0 and the row only we had"
    );
    assert_eq!(
        f.count("SELECT count(*) FROM users WHERE user_id = 'auth0|signed-in-meanwhile' AND deleted_at IS NULL")
            .await,
        1,
        "a row newer than the run is not taken"
    );
    sqlx::query("DELETE FROM users WHERE user_id = 'auth0|signed-in-meanwhile'")
        .execute(&f.db)
        .await
        .unwrap();
    f.assert_mirrors_tenant().await;
    assert_eq!(
        f.count("SELECT count(*) FROM users WHERE name = 'Renamed'")
            .await,
        3
    );
    assert!(f.syncer.watermark().await.unwrap().is_some());
}

#[tokio::test]
async fn a_download_cut_halfway_resumes_after_the_lines_written() {
    let f = fixture_with(4000, fast_api_options(), many_writers()).await;
    // About a third of the gzipped file (some 85 bytes a user).
    f.emulator.faults().cut_next_download(120_000);
    let run = f.sync(SyncMode::Full).await;
    assert_eq!(
        f.emulator.faults().export_downloads(),
        2,
        "cut, then resumed"
    );
    assert_eq!(run.attempts, 1, "resumed inside the attempt");
    assert_eq!(run.fetched, 4000, "no line read twice, none lost");
    assert_eq!((run.upserted, run.deleted), (4000, 0));
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn a_writer_whose_connection_dies_midway_costs_no_user() {
    let f = fixture_with(20_000, fast_api_options(), many_writers()).await;
    let syncer = f.syncer.clone();
    let run = tokio::spawn(async move {
        quotebook::users::foreground::sync_in_foreground(&syncer, SyncMode::Full, false).await
    });
    // A writer is found by its `COPY` (into `users` directly: a first sync of 20,000 users is a
    // bulk load); its backend is ended as an operator (or a restarting compute) would.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let ended = loop {
        let ended: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'COPY %'
             LIMIT 1",
        )
        .fetch_all(&f.db)
        .await
        .unwrap();
        if ended.contains(&true) {
            break true;
        }
        if run.is_finished() || tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    };
    assert!(ended, "a writer was caught at work");
    let run = run.await.unwrap().unwrap();
    assert_eq!(
        run.status,
        quotebook::users::sync_runs::RunStatus::Succeeded,
        "{:?}",
        run.error
    );
    assert!(
        run.fetched >= 20_000,
        "every line read at least once: {}",
        run.fetched
    );
    assert_eq!(run.deleted, 0);
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn an_export_completes_through_a_pool_of_two_or_three_connections() {
    // The run's lock holds one connection and its progress needs another: a small pool gets
    // fewer writers (or none of their own), never a run stuck waiting for a connection.
    let f = fixture_with(8000, fast_api_options(), many_writers()).await;
    for size in [2, 3] {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_with((*f.db.connect_options()).clone())
            .await
            .unwrap();
        let syncer = quotebook::users::sync::Syncer::new(
            pool.clone(),
            f.syncer.api().clone(),
            many_writers(),
        );
        let downloads = f.emulator.faults().export_downloads();
        let run = quotebook::users::foreground::sync_in_foreground(&syncer, SyncMode::Full, false)
            .await
            .unwrap();
        assert_eq!(
            run.status,
            quotebook::users::sync_runs::RunStatus::Succeeded,
            "a pool of {size}: {:?}",
            run.error
        );
        assert_eq!(
            (
                run.attempts,
                f.emulator.faults().export_downloads() - downloads
            ),
            (1, 1),
            "a pool of {size}: one attempt, one download, nothing timed out"
        );
        assert_eq!(run.upserted, 8000, "a pool of {size}");
        pool.close().await;
    }
    f.assert_mirrors_tenant().await;
}

#[tokio::test]
async fn an_export_that_fails_halfway_still_signs_out_the_blocked_users_it_wrote() {
    let f = fixture_with(0, fast_api_options(), many_writers()).await;
    let users = f.emulator.users();
    // Early in the file (created before the crowd), so in the part every download delivers.
    let blocked = users
        .create(NewUser::with_email("blocked-early@example.com"))
        .unwrap();
    users
        .update(
            &blocked.user_id,
            UserPatch {
                blocked: Some(true),
                ..UserPatch::default()
            },
        )
        .unwrap();
    users.seed(3000);
    sqlx::query(
        "INSERT INTO sessions (id, expires_at, data, user_id)
         VALUES ('session-of-the-blocked', now() + interval '1 hour', '{}', $1)",
    )
    .bind(&blocked.user_id)
    .execute(&f.db)
    .await
    .unwrap();
    // Every download breaks off a third of the way: no attempt gets to the run's end.
    f.emulator.faults().cut_next_downloads(120_000, 1_000);
    let run = quotebook::users::foreground::sync_in_foreground(&f.syncer, SyncMode::Full, false)
        .await
        .unwrap();
    assert_eq!(
        run.status,
        quotebook::users::sync_runs::RunStatus::Failed,
        "{:?}",
        run.error
    );
    let stored: Option<bool> = sqlx::query_scalar("SELECT blocked FROM users WHERE user_id = $1")
        .bind(&blocked.user_id)
        .fetch_one(&f.db)
        .await
        .unwrap();
    assert_eq!(stored, Some(true), "the batch holding them was written");
    assert_eq!(
        f.count("SELECT count(*) FROM sessions WHERE id = 'session-of-the-blocked'")
            .await,
        0,
        "signed out by the batch that wrote them, not by a run's end that never came"
    );
}
