//! Instant revocation (issue 17, item 4): a user the sync finds blocked or deleted, or whom an
//! admin signs out, loses every session at once; and a session that ended while a request was
//! using it is not written back by that request.

use std::time::Duration;

use quotebook::{
    config::Secret,
    emulator::UserPatch,
    users::{
        auth0_api::{ApiOptions, ManagementApi},
        foreground, job,
        sync::{SyncOptions, Syncer},
        sync_runs::{RunStatus, SyncMode},
    },
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, client, csrf_token, signed_in_at, spawn_app, spawn_app_with};

/// Runs a sync of `mode` against the app's emulator, as `quotebook sync` does.
async fn sync(app: &TestApp, mode: SyncMode) {
    job::setup(&app.db).await.expect("apalis schema");
    let api = ManagementApi::new(
        app.emulator().issuer(),
        quotebook::config::DEV_CLIENT_ID,
        Secret::new(quotebook::config::DEV_CLIENT_SECRET),
        ApiOptions::default(),
    )
    .unwrap();
    let syncer = Syncer::new(app.db.clone(), api, SyncOptions::default());
    let run = foreground::sync_in_foreground(&syncer, mode, false)
        .await
        .expect("the sync runs");
    assert_eq!(run.status, RunStatus::Succeeded, "{:?}", run.error);
}

#[tokio::test]
async fn the_sync_ends_the_sessions_of_users_it_finds_blocked_or_deleted() {
    let app = spawn_app().await;
    let blocked = [
        app.signed_in_client("blocked@example.com").await,
        app.signed_in_client("blocked@example.com").await,
    ];
    let deleted = app.signed_in_client("deleted@example.com").await;
    let bystander = app.signed_in_client("bystander@example.com").await;
    sync(&app, SyncMode::Full).await;
    let blocked_sub = app.sub_of("blocked@example.com").await;
    let deleted_sub = app.sub_of("deleted@example.com").await;

    // Changed in the tenant's own store: no logout token is sent, only the sync can tell.
    let users = app.emulator().users();
    users
        .update(
            &blocked_sub,
            UserPatch {
                blocked: Some(true),
                ..UserPatch::default()
            },
        )
        .unwrap();
    assert!(users.delete(&deleted_sub));
    assert!(app.emulator().backchannel_deliveries().is_empty());
    for device in &blocked {
        assert!(signed_in_at(&app.address, device).await, "not known yet");
    }

    sync(&app, SyncMode::Incremental).await;
    for device in &blocked {
        assert!(
            !signed_in_at(&app.address, device).await,
            "blocked: signed out"
        );
    }
    assert!(
        signed_in_at(&app.address, &deleted).await,
        "an incremental sync sees no deletion"
    );

    sync(&app, SyncMode::Full).await;
    assert!(
        !signed_in_at(&app.address, &deleted).await,
        "deleted: signed out"
    );
    assert!(signed_in_at(&app.address, &bystander).await);
}

#[tokio::test]
async fn an_admin_signs_a_user_out_everywhere_through_the_api() {
    let app =
        spawn_app_with(&[("ADMIN_API_TOKEN", "admin-token-for-tests-0123456789abcdef")]).await;
    let devices = [
        app.signed_in_client("noisy@example.com").await,
        app.signed_in_client("noisy@example.com").await,
    ];
    let bystander = app.signed_in_client("bystander@example.com").await;
    let sub = app.sub_of("noisy@example.com").await;
    let path = format!(
        "/api/admin/users/{}/sessions",
        url::form_urlencoded::byte_serialize(sub.as_bytes()).collect::<String>()
    );

    let anonymous = client().delete(app.url(&path)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // A signed-in person who is not an admin.
    let html = bystander
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let not_admin = bystander
        .delete(app.url(&path))
        .header("X-CSRF-Token", csrf_token(&html).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(not_admin.status(), StatusCode::FORBIDDEN);
    let unknown = client()
        .delete(app.url("/api/admin/users/auth0%7Cnobody/sessions"))
        .bearer_auth("admin-token-for-tests-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    for device in &devices {
        assert!(
            signed_in_at(&app.address, device).await,
            "nothing changed yet"
        );
    }

    let done = client()
        .delete(app.url(&path))
        .bearer_auth("admin-token-for-tests-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let body: Value = done.json().await.unwrap();
    assert_eq!(body["user_id"], sub);
    assert_eq!(body["ended"], 2);
    for device in &devices {
        assert!(!signed_in_at(&app.address, device).await);
    }
    assert!(signed_in_at(&app.address, &bystander).await);

    let spec: Value = client()
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/users/{user_id}/sessions"]["delete"].is_object());
}

#[tokio::test]
async fn a_session_ended_while_a_request_was_using_it_is_not_written_back() {
    let app = spawn_app().await;
    let browser = app.signed_in_client("in-flight@example.com").await;
    let sub = app.sub_of("in-flight@example.com").await;
    // The next page must write the session (it creates a CSRF token the session lacks).
    sqlx::query(
        "UPDATE sessions SET data = jsonb_set(data, '{data}', (data -> 'data') - 'csrf_token')
         WHERE user_id = $1",
    )
    .bind(&sub)
    .execute(&app.db)
    .await
    .unwrap();
    crate::helpers::wait_out_the_session_memory().await;

    // Hold the page between reading its session and writing it back: its quote read waits
    // behind this lock.
    let mut lock = app.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE user_messages IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    let page = tokio::spawn({
        let browser = browser.clone();
        let url = app.url("/");
        async move { browser.get(url).send().await.unwrap().status() }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ended = quotebook::auth::revocation::end_sessions_of(&app.db, &sub)
        .await
        .unwrap();
    assert_eq!(ended, 1);
    lock.rollback().await.unwrap();
    assert_eq!(
        page.await.unwrap(),
        StatusCode::OK,
        "the page itself was served"
    );

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(&sub)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(rows, 0, "the ended session did not come back");
    assert!(!signed_in_at(&app.address, &browser).await);
}

/// The backends listening for ended sessions (one per instance).
async fn listeners(app: &TestApp) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = $1",
    )
    .bind(format!(
        "LISTEN \"{}\"",
        quotebook::auth::session_events::CHANNEL
    ))
    .fetch_all(&app.db)
    .await
    .unwrap()
}

/// Waits until `count` instances listen for ended sessions.
async fn until_listening(app: &TestApp, count: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while listeners(app).await.len() != count {
        assert!(
            std::time::Instant::now() < deadline,
            "{count} listeners expected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_instance_that_lost_its_listening_connection_serves_no_ended_session_and_listens_again()
{
    let app = spawn_app().await;
    let (other, _stop_other) = app.another_instance().await;
    until_listening(&app, 2).await;

    let browser = app.signed_in_client("listening@example.com").await;
    let sub = app.sub_of("listening@example.com").await;
    assert!(
        signed_in_at(&other, &browser).await,
        "the other instance remembers it"
    );
    // Both instances' listening connections die (a compute restart, a proxy's idle timeout).
    let dead = listeners(&app).await;
    for pid in &dead {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&app.db)
            .await
            .unwrap();
    }
    while listeners(&app).await.iter().any(|pid| dead.contains(pid)) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Ended while they notice and listen anew: whichever they are doing, neither serves it.
    quotebook::auth::revocation::end_sessions_of(&app.db, &sub)
        .await
        .unwrap();
    assert_signed_out_within(&other, &browser).await;
    assert!(!signed_in_at(&app.address, &browser).await);

    // They listen again, and announcements reach them as before.
    until_listening(&app, 2).await;
    let again = app.signed_in_client("listening@example.com").await;
    assert!(signed_in_at(&other, &again).await);
    quotebook::auth::revocation::end_sessions_of(&app.db, &sub)
        .await
        .unwrap();
    assert_signed_out_within(&other, &again).await;
}

/// `browser` is signed out at `address` within a quarter of a second (an instance may otherwise
/// serve a session it remembers for a whole second).
async fn assert_signed_out_within(address: &str, browser: &reqwest::Client) {
    let started = std::time::Instant::now();
    while signed_in_at(address, browser).await {
        assert!(
            started.elapsed() < Duration::from_millis(250),
            "still signed in at {address}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
