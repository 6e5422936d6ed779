//! One canonical origin: requests for another host (`127.0.0.1` vs `localhost`, `APP.fly.dev` vs
//! a custom domain) are sent to `APP_BASE_URL`'s origin before anything is stored, except the
//! health and metrics endpoints that platform checks reach on an internal address.

use reqwest::StatusCode;

use crate::helpers::{TestApp, client, location, spawn_app_with, start_login_at};

/// An app whose canonical origin is `http://localhost:PORT`, reached here at `127.0.0.1:PORT`.
async fn app_on_localhost() -> (TestApp, String) {
    let app = spawn_app_with(&[("APP_BASE_URL", "http://localhost:0")]).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    (app, format!("http://localhost:{port}"))
}

fn set_cookies(response: &reqwest::Response) -> usize {
    response.headers().get_all("set-cookie").iter().count()
}

#[tokio::test]
async fn a_sign_in_started_on_another_host_moves_to_the_canonical_origin_first() {
    let (app, canonical) = app_on_localhost().await;
    let browser = client();
    let start = browser
        .get(app.url("/auth/login?next=%2Fquote%2Fedit"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        location(&start),
        format!("{canonical}/auth/login?next=%2Fquote%2Fedit")
    );
    assert_eq!(set_cookies(&start), 0, "nothing is stored before the move");

    // There, the whole sign-in works and lands where it was going.
    let steps = start_login_at(&canonical, &browser, "moved@example.com", "/quote/edit").await;
    let done = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/quote/edit");
    let me = browser
        .get(format!("{canonical}/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
}

#[tokio::test]
async fn sign_in_routes_move_while_pages_and_machine_endpoints_answer_on_any_host() {
    // Development (these tests): only `/auth/*` moves. Production moves every page too; which
    // routes each environment moves is `canonical_origin::Scope`'s unit test.
    let (app, canonical) = app_on_localhost().await;
    let browser = client();
    for (method, path) in [
        ("GET", "/auth/login?next=%2F"),
        ("GET", "/auth/logout"),
        ("POST", "/auth/logout"),
    ] {
        let response = browser
            .request(method.parse().unwrap(), app.url(path))
            .send()
            .await
            .unwrap();
        // 307 keeps the method and body of a POST.
        assert_eq!(
            response.status(),
            StatusCode::TEMPORARY_REDIRECT,
            "{method} {path}"
        );
        assert_eq!(location(&response), format!("{canonical}{path}"));
    }
    for path in [
        "/",
        "/assets/app.css",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
    ] {
        let response = browser.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path} answers in place");
    }
    // The canonical host itself is served normally.
    let home = browser.get(format!("{canonical}/")).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_callback_that_arrives_on_another_host_says_so() {
    // Two hosts serving one database (as a Fly app name and a custom domain can): the sign-in
    // starts on one and its callback is opened on the other.
    let (app, canonical) = app_on_localhost().await;
    let (other, _stop) = app.another_instance().await;
    let browser = client();
    let steps = start_login_at(&canonical, &browser, "hosts@example.com", "/").await;
    let mut elsewhere = url::Url::parse(&steps.callback_url).unwrap();
    let other_url = url::Url::parse(&other).unwrap();
    elsewhere.set_host(other_url.host_str()).unwrap();
    elsewhere.set_port(other_url.port()).unwrap();

    let refused = browser.get(elsewhere).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body = refused.text().await.unwrap();
    let canonical_host = canonical.trim_start_matches("http://");
    let other_host = other.trim_start_matches("http://");
    assert!(
        body.contains(canonical_host) && body.contains(other_host),
        "the page names both addresses: {body}"
    );
}
