//! The admin API and page: who may use them, the sync trigger, problems for bad input, the
//! OpenAPI document, and the progress bar that stops polling when a run ends.

use std::time::Duration;

use quotebook::emulator::users::NewUser;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, client, location, spawn_app_with, spawn_app_with_worker};

const TOKEN: &str = "test-admin-token-0123456789";

async fn admin_app() -> TestApp {
    spawn_app_with(&[
        ("ADMIN_API_TOKEN", TOKEN),
        (
            "ADMIN_EMAILS",
            "boss@example.com,unverified-boss@example.com",
        ),
    ])
    .await
}

fn bearer(builder: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    builder.header("Authorization", format!("Bearer {token}"))
}

async fn problem(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

#[tokio::test]
async fn who_may_use_the_admin_api() {
    let app = admin_app().await;
    let users = app.url("/api/admin/users");

    problem(
        client().get(&users).send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    problem(
        bearer(client().get(&users), "wrong").send().await.unwrap(),
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        bearer(client().get(&users), TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    let person = app.signed_in_client("someone@example.com").await;
    problem(
        person.get(&users).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;

    // The emulator's seeded admin carries the `admin` role in the roles claim.
    let by_role = app.signed_in_client("admin@example.com").await;
    assert_eq!(
        by_role.get(&users).send().await.unwrap().status(),
        StatusCode::OK
    );

    // ADMIN_EMAILS counts only a verified address.
    let emulator = app.emulator.as_ref().unwrap();
    emulator
        .users()
        .create(NewUser {
            email_verified: true,
            name: Some("The Boss".into()),
            ..NewUser::with_email("boss@example.com")
        })
        .unwrap();
    let by_email = app.signed_in_client("boss@example.com").await;
    assert_eq!(
        by_email.get(&users).send().await.unwrap().status(),
        StatusCode::OK
    );
    // Signing in as any email creates an unverified account: not an admin, listed or not.
    let unverified = app.signed_in_client("unverified-boss@example.com").await;
    problem(
        unverified.get(&users).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn session_admins_need_the_csrf_header_to_trigger_and_bearer_callers_do_not() {
    let app = admin_app().await;
    let admin = app.signed_in_client("admin@example.com").await;
    let sync = app.url("/api/admin/sync");
    problem(
        admin.post(&sync).json(&json!({})).send().await.unwrap(),
        StatusCode::FORBIDDEN,
    )
    .await;
    let token = app.csrf_for(&admin).await;
    let accepted = admin
        .post(&sync)
        .header("X-CSRF-Token", &token)
        .json(&json!({"mode": "full"}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let bearer_trigger = bearer(client().post(&sync), TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_trigger.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn triggering_returns_202_with_location_and_one_run_at_a_time() {
    let app = admin_app().await;
    let sync = app.url("/api/admin/sync");
    let first = bearer(client().post(&sync), TOKEN)
        .json(&json!({"mode": "full"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let location = location(&first);
    let run: Value = first.json().await.unwrap();
    assert_eq!(location, format!("/api/admin/sync/{}", run["id"]));
    assert_eq!(run["mode"], "full");
    assert_eq!(run["trigger"], "admin");
    assert_eq!(run["status"], "queued");
    assert_eq!(run["skipped"], 0);

    // No worker here: the run stays in flight, and a second trigger returns it.
    let second = bearer(client().post(&sync), TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let again: Value = second.json().await.unwrap();
    assert_eq!(again["id"], run["id"]);

    let fetched: Value = bearer(client().get(app.url(&location)), TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["id"], run["id"]);
    let list: Value = bearer(client().get(app.url("/api/admin/sync?limit=5")), TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_full_request_never_settles_for_an_incremental_run() {
    let app = admin_app().await;
    let trigger = |mode: &'static str| {
        let request =
            bearer(client().post(app.url("/api/admin/sync")), TOKEN).json(&json!({ "mode": mode }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
            response.json::<Value>().await.unwrap()
        }
    };
    // No worker here, so runs stay where the test puts them.
    let waiting = trigger("incremental").await;
    let upgraded = trigger("full").await;
    assert_eq!(
        upgraded["id"], waiting["id"],
        "the waiting run serves the full request"
    );
    assert_eq!(upgraded["mode"], "full");

    // An incremental run under way cannot mark deletions: a full request queues behind it.
    sqlx::query(
        "UPDATE sync_runs SET status = 'running', started_at = now(), mode = 'incremental' WHERE id = $1",
    )
    .bind(waiting["id"].as_i64().unwrap())
    .execute(&app.db)
    .await
    .unwrap();
    let behind = trigger("full").await;
    assert_ne!(behind["id"], waiting["id"]);
    assert_eq!(
        (&behind["mode"], &behind["status"]),
        (&json!("full"), &json!("queued"))
    );
    // Further requests of either kind join the run waiting to start.
    assert_eq!(trigger("incremental").await["id"], behind["id"]);
    assert_eq!(trigger("full").await["id"], behind["id"]);
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(runs, 2);
}

#[tokio::test]
async fn bad_input_is_a_problem_never_a_500() {
    let app = admin_app().await;
    let cases = [
        (
            bearer(client().post(app.url("/api/admin/sync")), TOKEN)
                .json(&json!({"mode": "sideways"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(client().post(app.url("/api/admin/sync")), TOKEN)
                .header("content-type", "application/json")
                .body("{not json"),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(
                client().get(app.url("/api/admin/users?per_page=100000")),
                TOKEN,
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(client().get(app.url("/api/admin/users?page=-1")), TOKEN),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(client().get(app.url("/api/admin/sync/abc")), TOKEN),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(client().get(app.url("/api/admin/sync/987654")), TOKEN),
            StatusCode::NOT_FOUND,
        ),
        (
            bearer(
                client().get(app.url("/api/admin/users/auth0%7Cnobody")),
                TOKEN,
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            bearer(client().get(app.url("/api/admin/users/nul%00id")), TOKEN),
            StatusCode::NOT_FOUND,
        ),
        (
            bearer(client().post(app.url("/api/admin/sync")), TOKEN).json(&json!({"mode": null})),
            StatusCode::BAD_REQUEST,
        ),
        (
            bearer(client().post(app.url("/api/admin/sync")), TOKEN),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            bearer(client().post(app.url("/api/admin/sync")), TOKEN)
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"mode\": \"full\", \"pad\": \"{}\"}}",
                    "x".repeat(200 * 1024)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (request, status) in cases {
        problem(request.send().await.unwrap(), status).await;
    }
    // A NUL can never be stored, so searching for one finds nobody (and is not an error).
    let nul: Value = bearer(client().get(app.url("/api/admin/users?q=%00x")), TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nul["total"], 0);
    // Unsupported methods name the allowed ones.
    let patch = bearer(
        client().request(reqwest::Method::PATCH, app.url("/api/admin/sync")),
        TOKEN,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(patch.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(patch.headers()["allow"], "GET, POST");
}

#[tokio::test]
async fn users_are_searchable_and_deleted_ones_flagged() {
    let app = admin_app().await;
    app.signed_in_client("zelda@example.com").await;
    app.signed_in_client("link@example.com").await;
    sqlx::query("UPDATE users SET deleted_at = now() WHERE email = 'link@example.com'")
        .execute(&app.db)
        .await
        .unwrap();
    let page: Value = bearer(
        client().get(app.url("/api/admin/users?q=ZELDA&per_page=10")),
        TOKEN,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(page["total"], 1);
    assert_eq!(page["users"][0]["email"], "zelda@example.com");
    assert_eq!(page["users"][0]["deleted"], false);
    let link: Value = bearer(client().get(app.url("/api/admin/users?q=link")), TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(link["users"][0]["deleted"], true);
    let id = link["users"][0]["user_id"].as_str().unwrap();
    let encoded: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
    let one: Value = bearer(
        client().get(app.url(&format!("/api/admin/users/{encoded}"))),
        TOKEN,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(one["user_id"], id);
}

#[tokio::test]
async fn the_openapi_document_describes_the_api() {
    let app = admin_app().await;
    let spec: Value = client()
        .get(app.url("/api/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(spec["servers"][0]["url"], "/api/admin");
    for (path, method) in [
        ("/sync", "post"),
        ("/sync", "get"),
        ("/sync/{id}", "get"),
        ("/users", "get"),
        ("/users/{user_id}", "get"),
    ] {
        let operation = &spec["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        for status in ["401", "403"] {
            let content = &operation["responses"][status]["content"];
            assert!(
                content["application/problem+json"].is_object(),
                "{method} {path} documents {status}"
            );
        }
    }
    let headers = spec["paths"]["/sync"]["post"]["responses"]["202"]["headers"]
        .as_object()
        .expect("202 documents its headers");
    assert!(headers.keys().any(|h| h.eq_ignore_ascii_case("location")));
    // Every $ref points at a schema that exists.
    let text = spec.to_string();
    for reference in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
        let name = reference.split('"').next().unwrap();
        assert!(
            spec["components"]["schemas"][name].is_object(),
            "schema {name} exists"
        );
    }
    let docs = client().get(app.url("/api/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_starts_a_sync_and_polls_until_286() {
    let app = spawn_app_with_worker(&[("AUTH0_EMULATOR_USERS", "30")]).await;
    let person = app.signed_in_client("nobody@example.com").await;
    assert_eq!(
        person.get(app.url("/admin")).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );

    let admin = app.signed_in_client("admin@example.com").await;
    let page = admin.get(app.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("Sync now") && html.contains("Search by email or name"));
    let home = admin
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("href=\"/admin\""), "admins see the link");
    let token = app.csrf_for(&admin).await;

    let started = admin
        .post(app.url("/admin/sync"))
        .header("HX-Request", "true")
        .form(&[("mode", "full"), ("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::OK);
    let fragment = started.text().await.unwrap();
    let poll = fragment
        .split("hx-get=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an in-flight run polls")
        .to_owned();
    assert!(fragment.contains("hx-trigger=\"every 1s\""));

    let mut finished = None;
    for _ in 0..120 {
        let response = admin
            .get(app.url(&poll))
            .header("HX-Request", "true")
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 286 {
            assert_eq!(response.headers()["hx-trigger"], "sync-finished");
            finished = Some(response.text().await.unwrap());
            break;
        }
        assert_eq!(response.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let finished = finished.expect("the run ends and polling stops with 286");
    assert!(finished.contains("succeeded"), "{finished}");
    assert!(
        !finished.contains("hx-get"),
        "the final fragment does not poll"
    );
    let synced: i64 = sqlx::query_scalar("SELECT count(*) FROM users WHERE synced_at IS NOT NULL")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(synced >= 30, "the emulator's users were copied: {synced}");

    // The users table filters as you type.
    let filtered = admin
        .get(app.url("/admin/users?q=admin%40example"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(filtered.contains("admin@example.com") && filtered.contains("1 user matching"));
}
