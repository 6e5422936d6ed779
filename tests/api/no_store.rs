//! No private page in any cache: every response that can depend on the session carries
//! `Cache-Control: no-store`, whether or not it rewrote the session cookie. Only the public,
//! versioned assets may be cached.

use reqwest::{Method, StatusCode};

use crate::helpers::{client, csrf_token, location, spawn_app_with};

const TOKEN: &str = "no-store-admin-token";

fn cache_control(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned()
}

#[tokio::test]
async fn every_session_dependent_response_says_no_store() {
    let app = spawn_app_with(&[("ADMIN_API_TOKEN", TOKEN)]).await;
    // The emulator's first demo user is an admin: every page and API is open to them.
    let admin = app.signed_in_client("admin@example.com").await;
    let token = app.csrf_for(&admin).await;

    let mut seen = Vec::new();
    let mut check = |what: String, response: &reqwest::Response| {
        seen.push(format!(
            "{what} -> {} {}",
            response.status(),
            cache_control(response)
        ));
    };
    for (method, path, htmx) in [
        (Method::GET, "/", false),
        (Method::GET, "/", true),
        (Method::GET, "/quote", true),
        (Method::GET, "/quote/edit", false),
        (Method::GET, "/quote/edit", true),
        (Method::GET, "/auth/me", false),
        (Method::GET, "/auth/logout", false),
        (Method::GET, "/auth/login", false),
        (Method::GET, "/admin", false),
        (Method::GET, "/admin/users", true),
        (Method::GET, "/admin/runs", true),
        (Method::GET, "/api/admin/users", false),
        (Method::GET, "/api/admin/sync", false),
        (Method::GET, "/no-such-page", false),
    ] {
        let mut request = admin.request(method.clone(), app.url(path));
        if htmx {
            request = request.header("HX-Request", "true");
        }
        let response = request.send().await.unwrap();
        assert!(
            !response.status().is_server_error(),
            "{method} {path}: {}",
            response.status()
        );
        check(format!("{method} {path} htmx={htmx}"), &response);
    }
    // A save by plain form (303 back home) and by htmx (the fragment).
    let saved = admin
        .post(app.url("/quote"))
        .form(&[("message", "Cached nowhere."), ("csrf_token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    check("POST /quote (form)".into(), &saved);
    let saved = admin
        .put(app.url("/quote"))
        .header("HX-Request", "true")
        .header("X-CSRF-Token", &token)
        .form(&[("message", "Still cached nowhere.")])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::OK);
    check("PUT /quote (htmx)".into(), &saved);
    // The admin API with its bearer token, and a page that needs a session, signed out.
    let api = client()
        .get(app.url("/api/admin/users"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(api.status(), StatusCode::OK);
    check("GET /api/admin/users (bearer)".into(), &api);
    let anonymous = client().get(app.url("/quote/edit")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    check("GET /quote/edit (signed out)".into(), &anonymous);
    // The sign-in's own steps: the redirect to the provider and the callback.
    let browser = client();
    let start = browser.get(app.url("/auth/login")).send().await.unwrap();
    check("GET /auth/login (signed out)".into(), &start);
    let steps = app.start_login(&browser, "cache@example.com", "/").await;
    let callback = browser.get(&steps.callback_url).send().await.unwrap();
    check("GET /auth/callback".into(), &callback);
    let html = browser
        .get(app.url("/auth/logout"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logout = browser
        .post(app.url("/auth/logout"))
        .form(&[("csrf_token", csrf_token(&html).unwrap())])
        .send()
        .await
        .unwrap();
    assert!(location(&logout).contains("logout"));
    check("POST /auth/logout".into(), &logout);

    let cached: Vec<&String> = seen.iter().filter(|s| !s.ends_with(" no-store")).collect();
    assert!(cached.is_empty(), "responses without no-store: {cached:#?}");
}

#[tokio::test]
async fn versioned_assets_stay_publicly_cacheable() {
    let app = spawn_app_with(&[]).await;
    let css = app.get("/assets/app.css").await;
    assert_eq!(css.status(), StatusCode::OK);
    assert_eq!(cache_control(&css), "public, max-age=31536000, immutable");
}
