//! Hardening: many people editing at once, the database going away under load, hostile input.

use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use reqwest::StatusCode;

use crate::helpers::{AppOnOwnCluster, spawn_app, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_people_editing_fifty_times_at_once_end_exact() {
    let app = spawn_app_with(&[("DATABASE_MAX_CONNECTIONS", "10")]).await;
    let people: Vec<(usize, reqwest::Client, String)> = stream::iter(0..100)
        .map(|n| {
            let app = &app;
            async move {
                let client = app
                    .signed_in_client(&format!("editor{n}@example.com"))
                    .await;
                let token = app.csrf_for(&client).await;
                (n, client, token)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;

    // 50 concurrent edits per person, everyone at once (bounded to keep the test machine sane).
    let edits = people.iter().flat_map(|(n, client, token)| {
        (0..50).map(move |k| (n, client, token, format!("person {n} edit {k}")))
    });
    let statuses: Vec<StatusCode> = stream::iter(edits)
        .map(|(_, client, token, text)| {
            let url = app.url("/quote");
            async move {
                client
                    .put(url)
                    .header("HX-Request", "true")
                    .header("X-CSRF-Token", token)
                    .form(&[("message", text)])
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::BAD_GATEWAY)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert_eq!(statuses.len(), 5000);
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "every edit succeeds: {:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::OK)
            .take(5)
            .collect::<Vec<_>>()
    );

    // Each person's row holds one of their own edits, nothing of anyone else's.
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.email, m.message FROM user_messages m JOIN users u USING (user_id) ORDER BY u.email",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 100);
    for (email, message) in &rows {
        let n = email
            .trim_start_matches("editor")
            .trim_end_matches("@example.com");
        assert!(
            message.starts_with(&format!("person {n} edit ")),
            "{email} has {message:?}"
        );
    }

    // And a last edit lands exactly.
    for (n, client, token) in &people {
        let response = client
            .put(app.url("/quote"))
            .header("HX-Request", "true")
            .header("X-CSRF-Token", token)
            .form(&[("message", format!("final words of {n}"))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let finals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM user_messages m JOIN users u USING (user_id)
         WHERE m.message = 'final words of ' || trim(leading 'editor' from split_part(u.email, '@', 1))",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(finals, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_stops_under_load_pages_fail_fast_and_recover() {
    let mut app = AppOnOwnCluster::spawn(&[("DATABASE_ACQUIRE_TIMEOUT_MS", "1000")]).await;
    let address = app.address.clone();
    let client = app.signed_in_client("outage@example.com").await;

    // Load: 16 workers requesting the signed-in home page until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let client = client.clone();
        let url = format!("{address}/");
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let mut worst = Duration::ZERO;
            let mut statuses = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let status = client
                    .get(&url)
                    .send()
                    .await
                    .map(|r| r.status())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                worst = worst.max(started.elapsed());
                statuses.push(status);
            }
            (worst, statuses)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop_database();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut statuses = Vec::new();
    for worker in workers {
        let (worst, seen) = worker.await.unwrap();
        assert!(
            worst < Duration::from_secs(3),
            "no request may hang past the timeout: {worst:?}"
        );
        statuses.extend(seen);
    }
    assert!(statuses.contains(&StatusCode::OK));
    assert!(
        statuses.contains(&StatusCode::SERVICE_UNAVAILABLE),
        "outage pages are 503"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::OK || *s == StatusCode::SERVICE_UNAVAILABLE),
        "only 200 or 503: {:?}",
        statuses
            .iter()
            .filter(|s| **s != StatusCode::OK && **s != StatusCode::SERVICE_UNAVAILABLE)
            .take(5)
            .collect::<Vec<_>>()
    );

    // Postgres back: the same process recovers by itself, session included.
    app.start_database();
    let mut recovered = false;
    for _ in 0..40 {
        let home = client.get(format!("{address}/")).send().await.unwrap();
        if home.status() == StatusCode::OK {
            assert!(
                home.text().await.unwrap().contains("Welcome, "),
                "still signed in"
            );
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "the app recovers without a restart");
    app.stop().await;
}

#[tokio::test]
async fn hostile_input_gets_clear_4xx_answers() {
    let app = spawn_app().await;
    let (client, token) = {
        let client = app.signed_in_client("hostile@example.com").await;
        let token = app.csrf_for(&client).await;
        (client, token)
    };

    let huge = client
        .post(app.url("/quote"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a'; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let long_header = client
        .get(app.url("/"))
        .header("x-filler", "a".repeat(512 * 1024))
        .send()
        .await;
    match long_header {
        Ok(response) => assert!(
            response.status() == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
                || response.status() == StatusCode::BAD_REQUEST,
            "{}",
            response.status()
        ),
        // hyper may close the connection instead of answering.
        Err(err) => assert!(
            err.is_request() || err.is_connect() || err.is_body(),
            "{err}"
        ),
    }

    let nul = client
        .post(app.url("/quote"))
        .form(&[("message", "before\0after"), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(nul.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing written");
    assert_eq!(
        app.get("/healthz").await.status(),
        StatusCode::OK,
        "still serving"
    );
}

#[tokio::test]
async fn a_body_that_trickles_in_times_out() {
    let app = spawn_app_with(&[("REQUEST_TIMEOUT_SECS", "2")]).await;
    let client = app.signed_in_client("slow@example.com").await;
    let token = app.csrf_for(&client).await;
    let chunks = stream::iter(0..10).then(move |i| {
        let token = token.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let chunk = if i == 0 {
                format!("csrf_token={token}&message=")
            } else {
                "a".to_owned()
            };
            Ok::<_, std::io::Error>(chunk)
        }
    });
    let started = Instant::now();
    let response = client
        .post(app.url("/quote"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the timeout, not after the body"
    );
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

/// A body sent in chunks of 4 KiB with no `Content-Length` (`Transfer-Encoding: chunked`).
fn chunked(body: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(4096).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(stream::iter(chunks))
}

/// The same bytes chunked and with a `Content-Length`.
fn both_ways(body: Vec<u8>) -> [(&'static str, reqwest::Body); 2] {
    [
        ("chunked", chunked(body.clone())),
        ("with Content-Length", reqwest::Body::from(body)),
    ]
}

/// The quote form with `message` padded to `bytes` bytes in all.
fn quote_form(token: &str, bytes: usize) -> Vec<u8> {
    let head = format!("csrf_token={token}&message=");
    let mut body = head.into_bytes();
    body.resize(bytes, b'a');
    body
}

#[tokio::test]
async fn an_over_limit_body_is_413_however_it_is_sent() {
    const TOKEN: &str = "body-limit-admin-token";
    let app = spawn_app_with(&[("ADMIN_API_TOKEN", TOKEN)]).await;
    let client = app.signed_in_client("limits@example.com").await;
    let token = app.csrf_for(&client).await;
    let form = "application/x-www-form-urlencoded";

    // The values: 65,600 bytes to `PUT /quote`, chunked and with a length, as htmx
    // sends it (a fragment) and as a plain form (a page).
    for htmx in [true, false] {
        for (how, body) in both_ways(quote_form(&token, 65_600)) {
            let request = if htmx {
                client.put(app.url("/quote")).header("hx-request", "true")
            } else {
                client.post(app.url("/quote"))
            };
            let response = request
                .header("content-type", form)
                .body(body)
                .send()
                .await
                .unwrap();
            let what = format!("htmx: {htmx}, {how}");
            assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{what}");
            let html = response.text().await.unwrap();
            assert!(html.contains("at most 64 KiB"), "{what}: {html}");
            assert_eq!(
                html.contains("<html"),
                !htmx,
                "a fragment for htmx, a page for a form; {what}: {html}"
            );
        }
    }

    // 70 kB of JSON to the admin API: a problem document either way.
    let json = format!("{{\"mode\":\"full\",\"pad\":\"{}\"}}", "x".repeat(70_000));
    for (how, body) in both_ways(json.into_bytes()) {
        let response = client
            .post(app.url("/api/admin/sync"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "API, {how}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "API, {how}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["status"], 413, "API, {how}");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("64 KiB"),
            "API, {how}: {problem}"
        );
    }
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, 0, "no sync was started");

    // Right at the limit, chunked, the body still arrives whole (and is judged on its content).
    let at_limit = client
        .put(app.url("/quote"))
        .header("content-type", form)
        .header("hx-request", "true")
        .body(chunked(quote_form(&token, 65_536)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        at_limit.status(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "too long a quote, not too large a body"
    );

    // A compressed body is refused whatever its size: its decoded size is unknown.
    let gzipped = client
        .post(app.url("/api/admin/sync"))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(chunked(vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]))
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(gzipped.headers()["accept-encoding"], "identity");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored, 0, "nothing written");
}
