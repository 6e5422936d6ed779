//! Auth0 Event Streams and Log Streams (issue 17, items 1, 2, 4's trigger, 6 and 7): a change
//! made in the emulator (through its Management API or its login page) reaches `users`, and a
//! blocked or deleted user's sessions, within seconds, in whatever order and however often the
//! emulator delivers it; bad deliveries are refused and change nothing.

use std::{
    future::Future,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use quotebook::emulator::{
    Emulator, EmulatorConfig, EventStreamDestination, LogStreamDestination, LogStreamFormat,
    StreamDestinations,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, client, local_cluster, pgbouncer::PgBouncer, random_suffix, spawn_app_against,
    spawn_app_with_worker, spawn_on, tenant::Tenant, test_vars, wait_out_the_session_memory,
};

const EVENTS_TOKEN: &str = "events-token-for-the-tests-0123456789";
const LOGS_TOKEN: &str = "log-stream-token-for-the-tests-0123456789";
const EVENTS: &str = "/webhooks/auth0/events";
const LOGS: &str = "/webhooks/auth0/logs";
/// How long a change may take to reach `users` in these tests (the figure is measured by
/// `examples/streams_bench.rs`; this only bounds a slow, busy test machine).
const WITHIN: Duration = Duration::from_secs(30);
/// A schedule that never fires during a test: a scheduled sync would add Management API calls.
const NEVER: &str = "0 0 0 1 1 * 2100";

/// Which of the emulator's streams deliver to the app.
#[derive(Debug, Clone, Copy)]
enum Feeds {
    Events,
    Logs(LogStreamFormat),
}

fn destinations(app: &TestApp, feeds: Feeds) -> StreamDestinations {
    let url = |path: &str| url::Url::parse(&app.url(path)).unwrap();
    match feeds {
        Feeds::Events => StreamDestinations {
            events: Some(EventStreamDestination {
                url: url(EVENTS),
                token: EVENTS_TOKEN.into(),
            }),
            logs: None,
        },
        Feeds::Logs(format) => StreamDestinations {
            events: None,
            logs: Some(LogStreamDestination {
                url: url(LOGS),
                authorization: Some(LOGS_TOKEN.into()),
                format,
            }),
        },
    }
}

/// The app with its worker, as `cargo run` runs it, with known stream tokens; the emulator
/// delivers only `feeds`.
async fn app_fed_by(feeds: Feeds) -> TestApp {
    let app = spawn_app_with_worker(&[
        ("AUTH0_EVENTS_TOKEN", EVENTS_TOKEN),
        ("AUTH0_LOG_STREAM_TOKEN", LOGS_TOKEN),
        ("SYNC_SCHEDULE", NEVER),
        ("SYNC_FULL_SCHEDULE", NEVER),
    ])
    .await;
    emulator(&app).deliver_streams_to(destinations(&app, feeds));
    // Only the streams may change users and end sessions here: the emulator's back-channel
    // logout on a block (development's default registration) would end them first.
    emulator(&app).set_backchannel_logout(None);
    app
}

fn emulator(app: &TestApp) -> &Emulator {
    app.emulator.as_ref().expect("the in-process emulator")
}

/// The in-process emulator's Management API.
async fn tenant_of(app: &TestApp) -> Tenant {
    Tenant::of(emulator(app).issuer()).await.unwrap()
}

/// Polls `check` until it yields something, failing the test after [`WITHIN`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WITHIN;
    loop {
        if let Some(done) = check().await {
            return done;
        }
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    name: Option<String>,
    email: Option<String>,
    blocked: Option<bool>,
    logins_count: Option<i32>,
    deleted_at: Option<DateTime<Utc>>,
    raw: Option<Value>,
}

async fn row(app: &TestApp, user_id: &str) -> Option<Row> {
    sqlx::query_as(
        "SELECT name, email, blocked, logins_count, deleted_at, raw FROM users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

/// Waits until `user_id`'s row satisfies `done`.
async fn row_where(app: &TestApp, user_id: &str, what: &str, done: impl Fn(&Row) -> bool) -> Row {
    eventually(what, || async {
        row(app, user_id).await.filter(|r| done(r))
    })
    .await
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn sessions_of(app: &TestApp, user_id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// The ledger, oldest first: (stream, type, outcome).
async fn ledger(app: &TestApp) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("SELECT stream, type, outcome FROM auth0_stream_events ORDER BY received_at, id")
        .fetch_all(&app.db)
        .await
        .unwrap()
}

/// Waits until the worker has finished every change received.
async fn all_processed(app: &TestApp) {
    eventually("every change processed", || async {
        (count(
            app,
            "SELECT count(*) FROM auth0_stream_events WHERE processed_at IS NULL",
        )
        .await
            == 0
            && count(app, "SELECT count(*) FROM user_refreshes").await == 0)
            .then_some(())
    })
    .await;
}

/// Management API requests the emulator has received.
fn api_requests(app: &TestApp) -> u64 {
    emulator(app).faults().management_requests()
}

fn user_id_of(app: &TestApp, email: &str) -> String {
    emulator(app)
        .users()
        .find_by_email(email)
        .expect("the user exists")
        .user_id
}

#[tokio::test]
async fn an_event_stream_update_reaches_users_without_a_management_api_call() {
    let app = app_fed_by(Feeds::Events).await;
    let tenant = tenant_of(&app).await;
    let created = tenant.create("grace@example.com").await.unwrap();
    let user_id = created["user_id"].as_str().unwrap().to_owned();
    let created = row_where(&app, &user_id, "user.created applied", |_| true).await;
    assert_eq!(created.email.as_deref(), Some("grace@example.com"));
    assert_eq!(
        created.raw.as_ref().unwrap()["identities"][0]["provider"],
        "auth0",
        "the whole profile came with the event"
    );

    let before = api_requests(&app);
    tenant
        .patch(
            &user_id,
            json!({"name": "Grace Hopper", "user_metadata": {"ship": "USS"}}),
        )
        .await
        .unwrap();
    let updated = row_where(&app, &user_id, "user.updated applied", |r| {
        r.name.as_deref() == Some("Grace Hopper")
    })
    .await;
    assert_eq!(updated.raw.unwrap()["user_metadata"]["ship"], "USS");
    all_processed(&app).await;
    assert_eq!(
        api_requests(&app) - before,
        1,
        "only the PATCH itself: the event carried the profile"
    );
    assert_eq!(
        ledger(&app).await,
        [
            (
                "events".into(),
                "user.created".into(),
                Some("applied".into())
            ),
            (
                "events".into(),
                "user.updated".into(),
                Some("applied".into())
            ),
        ]
    );
}

#[tokio::test]
async fn repeated_and_reversed_deliveries_leave_the_newest_profile() {
    let app = app_fed_by(Feeds::Events).await;
    let tenant = tenant_of(&app).await;
    let user_id = user_id_of(&app, "admin@example.com");
    let deliveries = emulator(&app).deliveries();
    deliveries.repeat_each(true);
    deliveries.reverse_next(3);
    for name in ["First", "Second", "Third"] {
        tenant
            .patch(&user_id, json!({ "name": name }))
            .await
            .unwrap();
    }
    eventually("six deliveries", || async {
        (deliveries.events_delivered() >= 6).then_some(())
    })
    .await;
    all_processed(&app).await;
    let stored = row(&app, &user_id).await.unwrap();
    assert_eq!(stored.name.as_deref(), Some("Third"));
    let outcomes: Vec<Option<String>> = ledger(&app)
        .await
        .into_iter()
        .map(|(_, _, outcome)| outcome)
        .collect();
    // Three changes, not six: every repeat was recognised. The newest was delivered first and
    // applied; the older two changed nothing, unless the worker (four jobs at a time) applied
    // one of them before the newest: either way the row ends with the newest.
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert_eq!(outcomes[0].as_deref(), Some("applied"), "{outcomes:?}");
    assert!(
        outcomes[1..]
            .iter()
            .all(|o| matches!(o.as_deref(), Some("applied" | "stale"))),
        "{outcomes:?}"
    );
}

/// The emulator delivers the deletion first; the worker may still apply the two in either
/// order (four jobs run at once), and either way the user ends deleted. (That a late update
/// changes nothing is pinned down in order below, with deliveries posted one at a time.)
#[tokio::test]
async fn an_update_and_a_deletion_delivered_out_of_order_leave_the_user_deleted() {
    let app = app_fed_by(Feeds::Events).await;
    let tenant = tenant_of(&app).await;
    let created = tenant.create("ephemeral@example.com").await.unwrap();
    let user_id = created["user_id"].as_str().unwrap().to_owned();
    row_where(&app, &user_id, "created", |_| true).await;

    emulator(&app).deliveries().reverse_next(2);
    tenant
        .patch(&user_id, json!({"name": "Last words"}))
        .await
        .unwrap();
    tenant.delete(&user_id).await.unwrap();
    all_processed_after(&app, 3).await;
    let stored = row(&app, &user_id).await.unwrap();
    assert!(stored.deleted_at.is_some(), "{stored:?}");
    let outcomes: Vec<(String, Option<String>)> = ledger(&app)
        .await
        .into_iter()
        .map(|(_, ty, outcome)| (ty, outcome))
        .collect();
    assert!(
        outcomes.contains(&("user.deleted".into(), Some("deleted".into()))),
        "{outcomes:?}"
    );
}

/// Waits until `n` changes were received and all of them processed.
async fn all_processed_after(app: &TestApp, n: i64) {
    eventually("changes received", || async {
        (count(app, "SELECT count(*) FROM auth0_stream_events").await >= n).then_some(())
    })
    .await;
    all_processed(app).await;
}

#[tokio::test]
async fn a_user_blocked_at_auth0_loses_every_session_through_either_stream() {
    for feeds in [Feeds::Events, Feeds::Logs(LogStreamFormat::JsonLines)] {
        let app = app_fed_by(feeds).await;
        let tenant = tenant_of(&app).await;
        let phone = app.signed_in_client("blocked-soon@example.com").await;
        let laptop = app.signed_in_client("blocked-soon@example.com").await;
        let bystander = app.signed_in_client("bystander@example.com").await;
        let user_id = user_id_of(&app, "blocked-soon@example.com");
        assert_eq!(sessions_of(&app, &user_id).await, 2, "{feeds:?}");
        // The sign-ins' own changes are done (two sign-ups; with the Log Stream also three
        // logins): only the block can end the sessions.
        let sign_in_changes = match feeds {
            Feeds::Events => 2,
            Feeds::Logs(_) => 5,
        };
        all_processed_after(&app, sign_in_changes).await;

        tenant
            .patch(&user_id, json!({"blocked": true}))
            .await
            .unwrap();
        eventually("the sessions ended", || async {
            (sessions_of(&app, &user_id).await == 0).then_some(())
        })
        .await;
        let stored = row(&app, &user_id).await.unwrap();
        assert_eq!(stored.blocked, Some(true), "{feeds:?}");
        wait_out_the_session_memory().await;
        for device in [&phone, &laptop] {
            let me = device.get(app.url("/auth/me")).send().await.unwrap();
            assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "{feeds:?}");
        }
        let other = bystander.get(app.url("/auth/me")).send().await.unwrap();
        assert_eq!(other.status(), StatusCode::OK, "nobody else is signed out");

        // Unblocked: the profile Auth0 sends no longer says blocked, and the row follows.
        tenant
            .patch(&user_id, json!({"blocked": false}))
            .await
            .unwrap();
        row_where(&app, &user_id, "unblocked", |r| r.blocked == Some(false)).await;
    }
}

#[tokio::test]
async fn a_user_deleted_at_auth0_is_marked_deleted_and_signed_out_by_a_refresh() {
    let app = app_fed_by(Feeds::Logs(LogStreamFormat::JsonArray)).await;
    let tenant = tenant_of(&app).await;
    let browser = app
        .signed_in_with_quote("leaving@example.com", "Goodbye.")
        .await;
    let user_id = user_id_of(&app, "leaving@example.com");
    tenant.delete(&user_id).await.unwrap();
    let stored = row_where(&app, &user_id, "marked deleted", |r| r.deleted_at.is_some()).await;
    assert!(stored.deleted_at.is_some());
    assert_eq!(sessions_of(&app, &user_id).await, 0);
    wait_out_the_session_memory().await;
    let me = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);
    let quotes: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages WHERE user_id = $1")
        .bind(&user_id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        quotes, 1,
        "the quote stays until the purge, as with the sync"
    );
}

#[tokio::test]
async fn sign_ups_and_logins_reach_users_through_the_log_stream_in_every_format() {
    for format in [
        LogStreamFormat::JsonLines,
        LogStreamFormat::JsonArray,
        LogStreamFormat::JsonObject,
    ] {
        let app = app_fed_by(Feeds::Logs(format)).await;
        let email = format!("new-{}@example.com", random_suffix());
        app.signed_in_client(&email).await;
        let user_id = user_id_of(&app, &email);
        // The sign-in wrote the row from the ID token; the refresh adds what only the
        // Management API knows.
        let stored = row_where(&app, &user_id, "refreshed after the sign-up", |r| {
            r.logins_count == Some(1) && r.raw.is_some()
        })
        .await;
        assert_eq!(stored.email.as_deref(), Some(email.as_str()), "{format:?}");
        app.signed_in_client(&email).await;
        row_where(&app, &user_id, "refreshed after the login", |r| {
            r.logins_count == Some(2)
        })
        .await;
        all_processed(&app).await;
        let mut types: Vec<String> = ledger(&app).await.into_iter().map(|(_, t, _)| t).collect();
        types.sort();
        assert_eq!(types, ["s", "s", "ss"], "{format:?}");
    }
}

/// A Log Stream batch as Auth0 sends it: `n` log events of `user_id` (logins).
fn login_batch(user_id: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"log_id": format!("9002024{i:050}"), "data": {
                "type": "s", "date": "2024-01-15T10:30:00.000Z", "user_id": user_id,
                "description": "Successful login", "log_id": format!("9002024{i:050}")}})
            .to_string()
                + "\n"
        })
        .collect()
}

async fn post_logs(app: &TestApp, body: String) -> (StatusCode, Value) {
    let response = client()
        .post(app.url(LOGS))
        .header("authorization", LOGS_TOKEN)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn refreshes_coalesce_per_user_and_a_redelivered_batch_changes_nothing() {
    let app = app_fed_by(Feeds::Events).await;
    let user_id = user_id_of(&app, "admin@example.com");
    let before = api_requests(&app);
    let (status, receipt) = post_logs(&app, login_batch(&user_id, 10)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        receipt,
        json!({"accepted": 10, "duplicates": 0, "ignored": 0})
    );
    all_processed(&app).await;
    assert_eq!(api_requests(&app) - before, 1, "ten logins, one read");
    row_where(&app, &user_id, "refreshed", |r| r.raw.is_some()).await;

    let jobs = count(&app, "SELECT count(*) FROM apalis.jobs").await;
    let (status, receipt) = post_logs(&app, login_batch(&user_id, 10)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        receipt,
        json!({"accepted": 0, "duplicates": 10, "ignored": 0})
    );
    assert_eq!(count(&app, "SELECT count(*) FROM apalis.jobs").await, jobs);
    assert_eq!(count(&app, "SELECT count(*) FROM user_refreshes").await, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        api_requests(&app) - before,
        1,
        "the redelivery read nothing"
    );
}

#[tokio::test]
async fn a_refresh_waits_out_auth0_failures_and_then_applies() {
    let app = app_fed_by(Feeds::Events).await;
    let user_id = user_id_of(&app, "admin@example.com");
    // The Management API client retries 5xx itself (6 attempts); more failures than that make
    // the worker queue the refresh again, with a delay.
    emulator(&app).faults().fail_next(6, 503);
    let (status, _) = post_logs(&app, login_batch(&user_id, 1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stored = eventually("the refresh applied after a retry", || async {
        row(&app, &user_id).await.filter(|r| r.raw.is_some())
    })
    .await;
    assert!(stored.deleted_at.is_none());
    all_processed(&app).await;
    assert_eq!(
        ledger(&app).await,
        [("logs".into(), "s".into(), Some("applied".into()))]
    );
}

/// Every way a delivery can be wrong, for both webhooks: each answer is a 4xx problem document
/// with `no-store`, and nothing is recorded or queued.
#[tokio::test]
async fn bad_deliveries_are_refused_and_change_nothing() {
    let app = spawn_app_with_worker(&[
        ("AUTH0_EVENTS_TOKEN", EVENTS_TOKEN),
        ("AUTH0_LOG_STREAM_TOKEN", LOGS_TOKEN),
    ])
    .await;
    emulator(&app).deliver_streams_to(StreamDestinations::default());
    let good_event = json!({"id": "evt_1", "source": "urn:auth0:t", "specversion": "1.0",
        "type": "user.updated", "data": {"object": {"user_id": "auth0|x"}}})
    .to_string();
    let good_logs = login_batch("auth0|x", 1);
    let huge = |limit: usize| format!("[{}]", " ".repeat(limit));
    struct Case {
        path: &'static str,
        authorization: Option<&'static str>,
        body: String,
        status: StatusCode,
    }
    let case = |path, authorization, body: &str, status| Case {
        path,
        authorization,
        body: body.to_owned(),
        status,
    };
    let bearer = "Bearer events-token-for-the-tests-0123456789";
    let cases = [
        case(EVENTS, None, &good_event, StatusCode::UNAUTHORIZED),
        case(
            EVENTS,
            Some("Bearer wrong"),
            &good_event,
            StatusCode::UNAUTHORIZED,
        ),
        case(
            EVENTS,
            Some(EVENTS_TOKEN),
            &good_event,
            StatusCode::UNAUTHORIZED,
        ),
        case(
            EVENTS,
            Some("Basic ZXZlbnRz"),
            &good_event,
            StatusCode::UNAUTHORIZED,
        ),
        case(EVENTS, Some(bearer), "{\"id\": ", StatusCode::BAD_REQUEST),
        case(EVENTS, Some(bearer), "", StatusCode::BAD_REQUEST),
        case(
            EVENTS,
            Some(bearer),
            "{\"id\": \"evt_1\"}",
            StatusCode::BAD_REQUEST,
        ),
        case(
            EVENTS,
            Some(bearer),
            &good_event.replace("auth0|x", ""),
            StatusCode::BAD_REQUEST,
        ),
        Case {
            path: EVENTS,
            authorization: Some(bearer),
            body: huge(1024 * 1024),
            status: StatusCode::PAYLOAD_TOO_LARGE,
        },
        case(LOGS, None, &good_logs, StatusCode::UNAUTHORIZED),
        case(LOGS, Some("wrong"), &good_logs, StatusCode::UNAUTHORIZED),
        case(
            LOGS,
            Some(LOGS_TOKEN),
            "not json at all",
            StatusCode::BAD_REQUEST,
        ),
        case(LOGS, Some(LOGS_TOKEN), "", StatusCode::BAD_REQUEST),
        case(LOGS, Some(LOGS_TOKEN), "42", StatusCode::BAD_REQUEST),
        Case {
            path: LOGS,
            authorization: Some(LOGS_TOKEN),
            body: huge(4 * 1024 * 1024),
            status: StatusCode::PAYLOAD_TOO_LARGE,
        },
    ];
    for case in cases {
        let mut request = client()
            .post(app.url(case.path))
            .header("content-type", "application/json")
            .body(case.body.clone());
        if let Some(authorization) = case.authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await.unwrap();
        let what = format!("{} {:?} {:.40}", case.path, case.authorization, case.body);
        assert_eq!(response.status(), case.status, "{what}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/problem+json"),
            "{what}"
        );
        if case.status == StatusCode::UNAUTHORIZED && case.path == EVENTS {
            assert_eq!(response.headers()["www-authenticate"], "Bearer", "{what}");
        }
        // A 413 is answered before the body is read, and the connection closed under the
        // client still sending: its own body may not arrive whole.
        if case.status != StatusCode::PAYLOAD_TOO_LARGE {
            let problem: Value = response.json().await.unwrap();
            assert!(
                problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{what}: {problem}"
            );
        }
    }
    // The same oversized bodies, sent chunked (no Content-Length): refused while being read.
    for (path, authorization, limit) in [
        (EVENTS, bearer, 1024 * 1024),
        (LOGS, LOGS_TOKEN, 4 * 1024 * 1024),
    ] {
        let chunks: Vec<Result<String, std::io::Error>> =
            vec![Ok("[".into()), Ok(" ".repeat(limit)), Ok("]".into())];
        let response = client()
            .post(app.url(path))
            .header("authorization", authorization)
            .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{path}");
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM auth0_stream_events").await,
        0
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_refreshes").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM apalis.jobs").await, 0);
    assert!(row(&app, "auth0|x").await.is_none());

    // The good ones are taken, so the refusals above were about what was wrong.
    let accepted = client()
        .post(app.url(EVENTS))
        .header("authorization", bearer)
        .body(good_event)
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let (status, _) = post_logs(&app, good_logs).await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn the_token_is_checked_before_the_body_is_read() {
    let app = spawn_app_with_worker(&[("AUTH0_EVENTS_TOKEN", EVENTS_TOKEN)]).await;
    // A body that never ends: a server that read it before checking the token would hang.
    let endless = futures::stream::pending::<Result<String, std::io::Error>>();
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        client()
            .post(app.url(EVENTS))
            .header("authorization", "Bearer guess")
            .body(reqwest::Body::wrap_stream(endless))
            .send(),
    )
    .await
    .expect("answered without reading the body")
    .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_stream_without_a_token_is_off() {
    // An app signing in at an external provider, with no stream configured.
    let app = spawn_app_against(EmulatorConfig::for_tests(), &[]).await;
    for path in [EVENTS, LOGS] {
        let response = client()
            .post(app.url(path))
            .header("authorization", "Bearer anything")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn the_admin_page_shows_the_last_change_and_its_lag_and_metrics_count_them() {
    let app = app_fed_by(Feeds::Events).await;
    let tenant = tenant_of(&app).await;
    let admin = app.signed_in_client("admin@example.com").await;
    let user_id = user_id_of(&app, "admin@example.com");
    let empty = admin
        .get(app.url("/admin/streams"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.headers()["cache-control"], "no-store");
    assert!(empty.text().await.unwrap().contains("Nothing received yet"));

    tenant
        .patch(&user_id, json!({"name": "Ada Renamed"}))
        .await
        .unwrap();
    all_processed_after(&app, 1).await;
    let card = admin
        .get(app.url("/admin/streams"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(card.status(), StatusCode::OK);
    let html = card.text().await.unwrap();
    for needle in [
        "user.updated",
        "admin@example.com",
        "applied",
        "Up to date",
        "hx-trigger=\"every 2s\"",
        " s</td>",
    ] {
        assert!(html.contains(needle), "{needle}: {html}");
    }
    let page = admin.get(app.url("/admin")).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("Changes from Auth0"));
    // Admins only.
    let stranger = app.signed_in_client("stranger@example.com").await;
    let refused = stranger
        .get(app.url("/admin/streams"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    // A repeat, and a log batch, so every series has moved.
    emulator(&app).deliveries().repeat_each(true);
    tenant
        .patch(&user_id, json!({"name": "Ada Again"}))
        .await
        .unwrap();
    post_logs(&app, login_batch(&user_id, 2)).await;
    all_processed_after(&app, 4).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    for series in [
        "auth0_stream_events_total{stream=\"events\",type=\"user.updated\"}",
        "auth0_stream_events_total{stream=\"logs\",type=\"s\"}",
        "auth0_stream_duplicates_total{stream=\"events\"}",
        "auth0_stream_changes_total{stream=\"events\",outcome=\"applied\"}",
        "user_refresh_requests_total{coalesced=\"false\"}",
        "auth0_stream_lag_seconds_count{stream=\"events\"}",
    ] {
        let value = metrics
            .lines()
            .find(|line| line.starts_with(series))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert!(value.is_some_and(|v| v >= 1.0), "{series}: {metrics}");
    }
}

/// A user event as Auth0 delivers it.
fn event(id: &str, ty: &str, object: Value) -> String {
    json!({"id": id, "source": "urn:auth0:t", "specversion": "1.0", "type": ty,
           "time": "2026-01-02T00:00:02.000Z", "data": {"object": object}})
    .to_string()
}

async fn post_event(app: &TestApp, body: String) -> reqwest::Result<reqwest::Response> {
    client()
        .post(app.url(EVENTS))
        .bearer_auth(EVENTS_TOKEN)
        .body(body)
        .send()
        .await
}

/// One at a time, so the order is the test's: an older profile delivered after a newer one
/// changes nothing, and a redelivered id is recognised.
#[tokio::test]
async fn an_older_profile_delivered_late_and_a_redelivery_change_nothing() {
    let app = app_fed_by(Feeds::Events).await;
    let profile = |name: &str, updated_at: &str| {
        json!({"user_id": "auth0|ordered", "name": name,
               "created_at": "2026-01-01T00:00:00.000Z", "updated_at": updated_at})
    };
    let newer = event(
        "evt_newer",
        "user.updated",
        profile("Newer", "2026-01-02T00:00:02.000Z"),
    );
    assert_eq!(
        post_event(&app, newer.clone()).await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    all_processed_after(&app, 1).await;
    let older = event(
        "evt_older",
        "user.updated",
        profile("Older", "2026-01-02T00:00:01.000Z"),
    );
    post_event(&app, older).await.unwrap();
    all_processed_after(&app, 2).await;
    let again: Value = post_event(&app, newer).await.unwrap().json().await.unwrap();
    assert_eq!(again, json!({"accepted": 0, "duplicates": 1, "ignored": 0}));
    let stored = row(&app, "auth0|ordered").await.unwrap();
    assert_eq!(stored.name.as_deref(), Some("Newer"));
    assert_eq!(
        ledger(&app).await,
        [
            (
                "events".into(),
                "user.updated".into(),
                Some("applied".into())
            ),
            ("events".into(), "user.updated".into(), Some("stale".into())),
        ]
    );
}

#[tokio::test]
async fn a_deletion_keeps_older_creations_and_updates_out_until_the_user_is_created_again() {
    let app = app_fed_by(Feeds::Events).await;
    let post = |body: String| post_event(&app, body);
    let profile = json!({"user_id": "auth0|late", "email": "late@example.com",
        "created_at": "2026-01-02T00:00:00.000Z", "updated_at": "2026-01-02T00:00:00.000Z"});
    let mut deleted = profile.clone();
    deleted["deleted_at"] = json!("2026-01-02T00:00:01.000Z");
    assert_eq!(
        post(event("evt_del", "user.deleted", deleted))
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    all_processed_after(&app, 1).await;
    post(event("evt_new", "user.created", profile))
        .await
        .unwrap();
    all_processed_after(&app, 2).await;
    let stored = row(&app, "auth0|late").await.unwrap();
    assert!(stored.deleted_at.is_some(), "{stored:?}");
    assert_eq!(
        stored.email.as_deref(),
        Some("late@example.com"),
        "the deleted user's last profile is kept with the deletion"
    );
    // An update from before the deletion, delivered after it: still deleted, not renamed.
    let mut renamed = json!({"user_id": "auth0|late", "name": "Too late",
        "created_at": "2026-01-02T00:00:00.000Z", "updated_at": "2026-01-02T00:00:00.500Z"});
    post(event("evt_upd", "user.updated", renamed.take()))
        .await
        .unwrap();
    all_processed_after(&app, 3).await;
    let stored = row(&app, "auth0|late").await.unwrap();
    assert!(stored.deleted_at.is_some(), "{stored:?}");
    assert_ne!(stored.name.as_deref(), Some("Too late"));
    // Created again later under the same id: back.
    let again = json!({"user_id": "auth0|late", "email": "late@example.com", "name": "Again",
        "created_at": "2026-01-03T00:00:00.000Z", "updated_at": "2026-01-03T00:00:00.000Z"});
    post(event("evt_again", "user.created", again))
        .await
        .unwrap();
    all_processed_after(&app, 3).await;
    let stored = row(&app, "auth0|late").await.unwrap();
    assert!(stored.deleted_at.is_none(), "{stored:?}");
    assert_eq!(stored.name.as_deref(), Some("Again"));
}

/// The emulator's deliveries have Auth0's shapes, headers and formats.
#[tokio::test]
async fn the_emulator_delivers_what_auth0_delivers() {
    use poem::{
        EndpointExt, Request, Route, Server, handler,
        listener::{Acceptor, Listener, TcpListener},
        post,
        web::Data,
    };
    use std::sync::{Arc, Mutex};

    type Received = Arc<Mutex<Vec<(String, Option<String>, String)>>>;
    #[handler]
    async fn capture(req: &Request, body: String, Data(seen): Data<&Received>) -> &'static str {
        seen.lock().unwrap().push((
            req.uri().path().to_owned(),
            req.header("authorization").map(str::to_owned),
            body,
        ));
        "ok"
    }
    let seen: Received = Arc::default();
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .unwrap();
    let port = acceptor.local_addr()[0].as_socket_addr().unwrap().port();
    let app = Route::new()
        .at("/events", post(capture))
        .at("/logs/:format", post(capture))
        .data(seen.clone());
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));

    let emulator = Emulator::start(EmulatorConfig::for_tests()).await.unwrap();
    let tenant = Tenant::of(emulator.issuer()).await.unwrap();
    let base = format!("http://127.0.0.1:{port}");
    for (format, name) in [
        (LogStreamFormat::JsonArray, "array"),
        (LogStreamFormat::JsonLines, "lines"),
        (LogStreamFormat::JsonObject, "object"),
    ] {
        emulator.deliver_streams_to(StreamDestinations {
            events: Some(EventStreamDestination {
                url: format!("{base}/events").parse().unwrap(),
                token: "tok".into(),
            }),
            logs: Some(LogStreamDestination {
                url: format!("{base}/logs/{name}").parse().unwrap(),
                authorization: Some("Log token".into()),
                format,
            }),
        });
        let created = tenant.create(&format!("{name}@example.com")).await.unwrap();
        let user_id = created["user_id"].as_str().unwrap();
        tenant
            .patch(user_id, json!({"blocked": true}))
            .await
            .unwrap();
        tenant.delete(user_id).await.unwrap();
    }
    eventually("every delivery captured", || async {
        let seen = seen.lock().unwrap();
        let events = seen.iter().filter(|(p, _, _)| p == "/events").count();
        let objects = seen.iter().filter(|(p, _, _)| p == "/logs/object").count();
        (events == 9 && objects == 4).then_some(())
    })
    .await;
    let seen = seen.lock().unwrap().clone();
    let id_ok = |id: &str, prefix: &str| {
        id.strip_prefix(prefix)
            .is_some_and(|rest| rest.len() == 22 && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
    };
    let mut types = Vec::new();
    for (path, authorization, body) in seen.iter().filter(|(p, _, _)| p == "/events") {
        assert_eq!(authorization.as_deref(), Some("Bearer tok"), "{path}");
        let event: Value = serde_json::from_str(body).unwrap();
        assert_eq!(event["specversion"], "1.0");
        assert!(id_ok(event["id"].as_str().unwrap(), "evt_"), "{event}");
        assert!(
            id_ok(event["a0stream"].as_str().unwrap(), "est_"),
            "{event}"
        );
        assert!(event["source"].as_str().unwrap().starts_with("urn:auth0:"));
        DateTime::parse_from_rfc3339(event["time"].as_str().unwrap()).unwrap();
        let object = &event["data"]["object"];
        assert!(object["user_id"].as_str().unwrap().starts_with("auth0|"));
        assert!(object["identities"].is_array() && object["updated_at"].is_string());
        let ty = event["type"].as_str().unwrap().to_owned();
        match ty.as_str() {
            "user.deleted" => assert!(object["deleted_at"].is_string(), "{event}"),
            "user.updated" => assert_eq!(object["blocked"], true),
            _ => assert!(object.get("deleted_at").is_none()),
        }
        types.push(ty);
    }
    types.sort();
    types.dedup();
    assert_eq!(types, ["user.created", "user.deleted", "user.updated"]);

    for (path, authorization, body) in seen.iter().filter(|(p, _, _)| p.starts_with("/logs/")) {
        assert_eq!(authorization.as_deref(), Some("Log token"), "{path}");
        let entries: Vec<Value> = match path.as_str() {
            "/logs/array" => serde_json::from_str(body).unwrap(),
            "/logs/lines" => body
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            _ => vec![serde_json::from_str(body).unwrap()],
        };
        for entry in entries {
            let log_id = entry["log_id"].as_str().unwrap();
            assert_eq!(log_id.len(), 56, "{entry}");
            assert_eq!(entry["data"]["log_id"], log_id);
            let data = &entry["data"];
            assert!(
                matches!(data["type"].as_str(), Some("sapi" | "sdu")),
                "{entry}"
            );
            if data["type"] == "sapi" {
                assert_eq!(data["user_id"], "", "a machine-to-machine caller: {entry}");
                assert!(
                    data["details"]["request"]["path"]
                        .as_str()
                        .unwrap()
                        .starts_with("/api/v2/users")
                );
            }
        }
    }
    emulator.shutdown();
}

/// The webhooks through a transaction pooler (PgBouncer 1.18, port 6432): deliveries are
/// recorded and queued with plain statements, the worker listens on its direct connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_through_a_transaction_pooler_leave_nothing_on_its_connections() {
    let cluster = local_cluster();
    let socket_dir = std::env::temp_dir().join(format!("qb-bouncer-{}", random_suffix()));
    let bouncer = PgBouncer::start(&socket_dir, 6432, cluster.socket_dir(), 3).await;
    let app = spawn_on(
        cluster,
        |db| {
            let mut vars = test_vars(
                &bouncer.url("localhost", db),
                &[
                    ("AUTH0_EVENTS_TOKEN", EVENTS_TOKEN),
                    ("AUTH0_LOG_STREAM_TOKEN", LOGS_TOKEN),
                ],
            );
            vars.insert("DATABASE_URL_DIRECT".into(), cluster.url(db));
            vars
        },
        true,
    )
    .await;
    let tenant = tenant_of(&app).await;
    let user_id = user_id_of(&app, "admin@example.com");
    for n in 0..10 {
        tenant
            .patch(&user_id, json!({ "name": format!("Pooled {n}") }))
            .await
            .unwrap();
    }
    row_where(&app, &user_id, "the last change applied", |r| {
        r.name.as_deref() == Some("Pooled 9")
    })
    .await;
    all_processed(&app).await;
    for server in bouncer.server_connections(&app.db_name, &app.db).await {
        assert!(server.prepared.is_empty(), "statements left on {server:?}");
        assert!(server.listening.is_empty(), "LISTEN on {server:?}");
    }
}

#[tokio::test]
async fn old_ids_and_finished_jobs_are_forgotten() {
    let app = app_fed_by(Feeds::Events).await;
    let tenant = tenant_of(&app).await;
    let user_id = user_id_of(&app, "admin@example.com");
    tenant
        .patch(&user_id, json!({"name": "Remembered"}))
        .await
        .unwrap();
    all_processed_after(&app, 1).await;
    let finished_jobs = "SELECT count(*) FROM apalis.jobs
        WHERE job_type = 'quotebook.user_changes' AND status = 'Done'";
    eventually("the job marked done", || async {
        (count(&app, finished_jobs).await == 1).then_some(())
    })
    .await;
    let week_ago = Utc::now() - chrono::Duration::days(7);
    let kept = quotebook::users::streams::worker::prune(&app.db, week_ago)
        .await
        .unwrap();
    assert_eq!(kept, 0, "nothing is a week old");
    let pruned = quotebook::users::streams::worker::prune(
        &app.db,
        Utc::now() + chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    assert_eq!(pruned, 2, "the ledger row and the finished job");
    assert_eq!(
        count(&app, "SELECT count(*) FROM auth0_stream_events").await,
        0
    );
    assert_eq!(count(&app, finished_jobs).await, 0);
    assert_eq!(
        row(&app, &user_id).await.unwrap().name.as_deref(),
        Some("Remembered"),
        "the users row is not the ledger's"
    );
}

/// As `cargo run` starts: no token configured, the emulator's streams deliver to the app with
/// a token pair made for the run, and an edit at the emulator shows on the admin page.
#[tokio::test]
async fn in_development_the_emulators_streams_deliver_to_the_app_by_default() {
    let app =
        spawn_app_with_worker(&[("SYNC_SCHEDULE", NEVER), ("SYNC_FULL_SCHEDULE", NEVER)]).await;
    let admin = app.signed_in_client("admin@example.com").await;
    let user_id = user_id_of(&app, "admin@example.com");
    tenant_of(&app)
        .await
        .patch(&user_id, json!({"name": "Edited at the emulator"}))
        .await
        .unwrap();
    row_where(&app, &user_id, "the edit reached users", |r| {
        r.name.as_deref() == Some("Edited at the emulator")
    })
    .await;
    eventually("both streams delivered", || async {
        let streams: Vec<String> =
            sqlx::query_scalar("SELECT DISTINCT stream FROM auth0_stream_events ORDER BY 1")
                .fetch_all(&app.db)
                .await
                .unwrap();
        (streams == ["events", "logs"]).then_some(())
    })
    .await;
    let card = admin
        .get(app.url("/admin/streams"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(card.contains("Event Stream: on"), "{card}");
    assert!(card.contains("Log Stream: on"), "{card}");
    assert!(
        card.contains("Edited at the emulator") || card.contains("admin@example.com"),
        "{card}"
    );
}

/// A refresh whose job was lost (the database failed it to the end) does not keep the user from
/// ever being refreshed again: a new log event queues a new one.
#[tokio::test]
async fn a_refresh_left_waiting_too_long_is_queued_again() {
    let app = app_fed_by(Feeds::Events).await;
    let user_id = user_id_of(&app, "admin@example.com");
    sqlx::query(
        "INSERT INTO user_refreshes (user_id, requested_at) VALUES ($1, now() - interval '1 hour')",
    )
    .bind(&user_id)
    .execute(&app.db)
    .await
    .unwrap();
    let (status, _) = post_logs(&app, login_batch(&user_id, 1)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    row_where(&app, &user_id, "refreshed", |r| r.raw.is_some()).await;
    all_processed(&app).await;
}
