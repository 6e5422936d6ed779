//! The foundation: health, readiness, configuration errors, error pages, limits, request ids,
//! assets.

use std::{process::Command, time::Duration};

use reqwest::StatusCode;

use crate::helpers::{self, AppOnOwnCluster, spawn_app};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_down_and_back_up() {
    // A cluster of its own, so stopping it affects only this test.
    let mut app = AppOnOwnCluster::spawn(&[]).await;
    let address = app.address.clone();
    let client = helpers::client();

    let ready = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);

    app.stop_database();
    let started = std::time::Instant::now();
    let down = client
        .get(format!("{address}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "readyz must answer quickly"
    );
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(body["reason"].as_str().unwrap().contains("database"));
    // Liveness does not depend on the database.
    let live = client
        .get(format!("{address}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);

    app.start_database();
    let mut recovered = false;
    for _ in 0..40 {
        let r = client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(recovered, "the app must recover without a restart");
    app.stop().await;
}

fn run_binary(vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quotebook"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        // A scratch directory: no .env from the developer's checkout leaks in.
        .current_dir(std::env::temp_dir());
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run quotebook")
}

#[test]
fn invalid_configuration_exits_with_code_2_naming_the_variable() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("PORT", "abc")], "PORT"),
        (&[("APP_BASE_URL", "not a url")], "APP_BASE_URL"),
        (&[("APP_ENV", "staging")], "APP_ENV"),
        (
            &[
                ("APP_ENV", "production"),
                ("APP_BASE_URL", "https://q.example"),
                ("AUTH0_DOMAIN", "t.auth0.com"),
                ("AUTH0_CLIENT_ID", "id"),
                ("AUTH0_CLIENT_SECRET", "very-secret-value"),
            ],
            "SESSION_SECRET",
        ),
        (
            &[
                ("APP_ENV", "production"),
                ("APP_BASE_URL", "https://q.example"),
                ("AUTH0_EMULATOR", "true"),
            ],
            "AUTH0_EMULATOR",
        ),
        // A transaction pooler whose direct endpoint cannot be derived (development too).
        (
            &[(
                "DATABASE_URL",
                "postgres://app:very-secret-value@pgbouncer.internal:6432/app",
            )],
            "DATABASE_URL_DIRECT",
        ),
    ];
    for (vars, variable) in cases {
        let output = run_binary(vars, &["serve"]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
        assert!(
            stderr.contains(variable),
            "{vars:?} should name {variable}: {stderr}"
        );
        assert!(!stderr.contains("very-secret-value"), "secrets never print");
    }
}

#[test]
fn missing_postgres_binaries_give_one_clear_sentence() {
    let output = run_binary(
        &[("POSTGRES_BIN_DIR", "/nonexistent"), ("PORT", "0")],
        &["migrate"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("no PostgreSQL server binaries found"),
        "{stderr}"
    );
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[test]
fn help_and_version_work() {
    let output = run_binary(&[], &["--version"]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains(env!("CARGO_PKG_VERSION")));
    let output = run_binary(&[], &["--help"]);
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("serve") && help.contains("migrate"), "{help}");
}

#[tokio::test]
async fn unknown_pages_get_a_404_page_and_api_paths_a_problem() {
    let app = spawn_app().await;
    let page = app.get("/no/such/page").await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let body = page.text().await.unwrap();
    assert!(body.contains("There is nothing at this address"), "{body}");

    let api = app.get("/api/no-such-thing").await;
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    assert_eq!(api.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = api.json().await.unwrap();
    assert_eq!(problem["status"], 404);
}

#[tokio::test]
async fn oversize_bodies_get_413() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(app.url("/healthz"))
        .body(vec![b'a'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(response.text().await.unwrap().contains("too large"));
}

#[tokio::test]
async fn request_ids_are_generated_or_echoed() {
    let app = spawn_app().await;
    let generated = app.get("/healthz").await;
    let id = generated.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 32);

    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me-123");
}

#[tokio::test]
async fn security_headers_are_set() {
    let app = spawn_app().await;
    let response = app.get("/healthz").await;
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert!(response.headers().contains_key("referrer-policy"));
}

#[tokio::test]
async fn assets_are_served_with_caching_headers() {
    let app = spawn_app().await;
    let response = app.get("/assets/htmx.min.js").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert!(
        response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age")
    );
    let etag = response.headers()["etag"].to_str().unwrap().to_owned();
    let body = response.text().await.unwrap();
    assert!(body.contains("2.0.11"), "the pinned htmx version is served");

    let revalidated = app
        .client
        .get(app.url("/assets/htmx.min.js"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);

    let missing = app.get("/assets/nope.js").await;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[test]
fn the_vendored_htmx_matches_its_recorded_checksum() {
    use sha2::Digest;
    let manifest = include_str!("../../assets/README.md");
    let body = include_bytes!("../../assets/htmx.min.js");
    let digest: String = sha2::Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(
        manifest.contains(&digest),
        "assets/README.md must record htmx.min.js's sha256 ({digest})"
    );
}
