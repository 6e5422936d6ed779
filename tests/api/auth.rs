//! Sign-in through the real OIDC flow over HTTP against the emulator: sessions, logout, CSRF,
//! open redirects, ID-token verification and a provider that is down.

use quotebook::emulator::IdTokenFault;
use reqwest::StatusCode;

use crate::helpers::{self, client, csrf_token, location, spawn_app, spawn_app_with};

fn session_cookie(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("quotebook_session="))
        .map(|c| c.split(';').next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn full_login_signs_the_person_in() {
    let app = spawn_app().await;
    let me = app.get("/auth/me").await;
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    let callback = app.login_with(&app.client, "grace@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&callback), "/");
    let cookie = session_cookie(&callback).expect("callback sets the session cookie");
    let header = callback
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("quotebook_session="))
        .unwrap();
    assert!(
        header.contains("HttpOnly") && header.contains("SameSite=Lax") && header.contains("Path=/")
    );
    assert!(cookie.len() > 40, "an opaque random id");

    let me: serde_json::Value = app.get("/auth/me").await.json().await.unwrap();
    assert_eq!(me["email"], "grace@example.com");
    assert!(me["sub"].as_str().unwrap().starts_with("auth0|"));

    let home = app.get("/").await.text().await.unwrap();
    assert!(home.contains("Welcome, "), "{home}");
    assert!(home.contains("Log out"));

    // The users row was created from the claims.
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE user_id = $1")
        .bind(me["sub"].as_str().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(email, "grace@example.com");
}

#[tokio::test]
async fn the_session_id_changes_at_login() {
    let app = spawn_app().await;
    let start = app.client.get(app.url("/auth/login")).send().await.unwrap();
    let before = session_cookie(&start).expect("login starts a session");
    let authorize = url::Url::parse(&location(&start)).unwrap();
    // Finish the login in the same client.
    let page = app
        .client
        .get(authorize.clone())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let form = helpers::find_form(&page, "email").unwrap();
    let mut fields = form.hidden.clone();
    fields.push(("email".into(), "rotate@example.com".into()));
    let back = app
        .client
        .post(authorize.join(&form.action).unwrap())
        .form(&fields)
        .send()
        .await
        .unwrap();
    let callback = app.client.get(location(&back)).send().await.unwrap();
    let after = session_cookie(&callback).expect("callback sets a new cookie");
    assert_ne!(before, after, "no session fixation");

    // The pre-login cookie is dead.
    let old = client()
        .get(app.url("/auth/me"))
        .header("cookie", &before)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tampered_or_unknown_cookies_mean_signed_out() {
    let app = spawn_app().await;
    let signed_in = app.signed_in_client("tamper@example.com").await;
    assert_eq!(
        signed_in
            .get(app.url("/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    for cookie in [
        "quotebook_session=not-base64-@@@",
        "quotebook_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==",
        "quotebook_session=",
    ] {
        let me = client()
            .get(app.url("/auth/me"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "{cookie}");
        let home = client()
            .get(app.url("/"))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(home.status(), StatusCode::OK);
        assert!(home.text().await.unwrap().contains("Log in"));
    }
}

#[tokio::test]
async fn idle_and_absolute_expiry_sign_people_out() {
    let app = spawn_app().await;
    let idle = app.signed_in_client("idle@example.com").await;
    let absolute = app.signed_in_client("absolute@example.com").await;
    assert_eq!(
        idle.get(app.url("/auth/me")).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Idle: the stored expiry has passed.
    sqlx::query("UPDATE sessions SET expires_at = now() - interval '1 second' WHERE data->'data'->>'user' LIKE '%idle@example.com%'")
        .execute(&app.db)
        .await
        .unwrap();
    // Changed behind the app's back (as another instance would): visible once the one-second
    // memory of recent sessions has lapsed.
    tokio::time::sleep(
        quotebook::auth::session_store::CACHE_TTL + std::time::Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        idle.get(app.url("/auth/me")).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    // Absolute: created longer ago than the lifetime, even though recently active.
    sqlx::query(
        "UPDATE sessions SET data = jsonb_set(data, '{data,created_at}', to_jsonb('1000'::text))
         WHERE data->'data'->>'user' LIKE '%absolute@example.com%'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    // Changed behind the app's back (as another instance would): visible once the one-second
    // memory of recent sessions has lapsed.
    tokio::time::sleep(
        quotebook::auth::session_store::CACHE_TTL + std::time::Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        absolute
            .get(app.url("/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions WHERE data->'data'->>'user' LIKE '%absolute@example.com%'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(left, 0, "an over-age session is deleted");
}

#[tokio::test]
async fn logout_deletes_the_session_and_the_old_cookie_dies() {
    let app = spawn_app().await;
    let callback = app.login_with(&app.client, "bye@example.com").await;
    let cookie = session_cookie(&callback).unwrap();
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 1);

    let confirm = app.get("/auth/logout").await.text().await.unwrap();
    assert!(confirm.contains("Log out?"));
    let token = csrf_token(&confirm).unwrap();
    let logout = app
        .client
        .post(app.url("/auth/logout"))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(&location(&logout)).unwrap();
    assert_eq!(
        to.path(),
        "/oidc/logout",
        "discovery's end_session_endpoint"
    );
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert!(params.contains_key("id_token_hint"));
    assert_eq!(
        params["post_logout_redirect_uri"],
        format!("{}/", app.address)
    );

    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "the row is deleted");
    let replay = client()
        .get(app.url("/auth/me"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);

    // The provider accepts the logout and returns to the app.
    let provider = client().get(to).send().await.unwrap();
    assert!(provider.status().is_redirection(), "{}", provider.status());
    assert!(location(&provider).starts_with(&app.address));
}

#[tokio::test]
async fn logout_without_or_with_a_wrong_csrf_token_is_forbidden() {
    let app = spawn_app().await;
    let client = app.signed_in_client("csrf@example.com").await;
    for form in [vec![], vec![("csrf_token", "wrong")]] {
        let response = client
            .post(app.url("/auth/logout"))
            .form(&form)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.text().await.unwrap().contains("Reload the page"));
    }
    assert_eq!(
        client
            .get(app.url("/auth/me"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK,
        "still signed in"
    );
}

#[tokio::test]
async fn next_never_redirects_off_site() {
    let app = spawn_app().await;
    for next in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "/admin",
    ] {
        let client = client();
        let steps = app.start_login(&client, "next@example.com", next).await;
        let callback = client.get(&steps.callback_url).send().await.unwrap();
        let target = location(&callback);
        let expected = if next == "/admin" { "/admin" } else { "/" };
        assert_eq!(target, expected, "next={next}");
    }
}

#[tokio::test]
async fn replayed_codes_and_wrong_states_are_refused() {
    let app = spawn_app().await;
    let client = client();
    let steps = app.start_login(&client, "replay@example.com", "/").await;
    let mut wrong_state = url::Url::parse(&steps.callback_url).unwrap();
    let code = wrong_state
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    wrong_state.set_query(Some(&format!("code={code}&state=forged")));
    let forged = client.get(wrong_state).send().await.unwrap();
    assert_eq!(forged.status(), StatusCode::BAD_REQUEST);
    assert!(forged.text().await.unwrap().contains("Try again"));

    // A fresh attempt succeeds once; the same callback again is refused.
    let steps = app.start_login(&client, "replay@example.com", "/").await;
    let first = client.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    let other = helpers::client();
    let replay = other.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(replay.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn provider_errors_get_a_friendly_page() {
    let app = spawn_app().await;
    let client = client();
    let start = client.get(app.url("/auth/login")).send().await.unwrap();
    let authorize = url::Url::parse(&location(&start)).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let denied = client
        .get(app.url(&format!(
            "/auth/callback?error=access_denied&error_description=User%20cancelled&state={state}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let body = denied.text().await.unwrap();
    assert!(
        body.contains("Try again") && body.contains("cancelled"),
        "{body}"
    );
}

#[tokio::test]
async fn bad_id_tokens_are_rejected() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().expect("in-process emulator");
    for fault in [
        IdTokenFault::WrongNonce,
        IdTokenFault::WrongIssuer,
        IdTokenFault::WrongAudience,
        IdTokenFault::Expired,
        IdTokenFault::BadSignature,
    ] {
        emulator.faults().set_id_token_fault(Some(fault));
        let client = client();
        let callback = app.login_with(&client, "forged@example.com").await;
        assert_eq!(callback.status(), StatusCode::BAD_REQUEST, "{fault:?}");
        let me = client.get(app.url("/auth/me")).send().await.unwrap();
        assert_eq!(
            me.status(),
            StatusCode::UNAUTHORIZED,
            "{fault:?} must not sign in"
        );
    }
    emulator.faults().set_id_token_fault(None);
    let callback = app.login_with(&client(), "genuine@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_provider_that_is_down_gives_503_and_the_app_keeps_serving() {
    // Down at start: the default test issuer is a closed port.
    let app = spawn_app_with(&[
        ("AUTH0_ISSUER_BASE_URL", "http://127.0.0.1:9/"),
        ("AUTH0_CLIENT_ID", "quotebook-dev"),
        ("AUTH0_CLIENT_SECRET", "quotebook-dev-secret"),
    ])
    .await;
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    assert_eq!(app.get("/").await.status(), StatusCode::OK);
    let login = app.get("/auth/login").await;
    assert_eq!(login.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(login.text().await.unwrap().contains("not reachable"));

    // Down at login: discovery worked, then the provider vanished before the code exchange.
    let app = spawn_app().await;
    let client = client();
    let steps = app.start_login(&client, "late@example.com", "/").await;
    app.emulator.as_ref().unwrap().shutdown();
    let callback = client.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(callback.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn any_instance_serves_a_session_and_a_logout_reaches_the_others_within_a_second() {
    let app = spawn_app().await;
    let (other, _stop_other) = app.another_instance().await;
    // Cookies belong to the host, not the port: one browser talks to both instances.
    let browser = app.signed_in_client("roaming@example.com").await;
    let here = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(here.status(), StatusCode::OK);
    let there = browser
        .get(format!("{other}/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        there.status(),
        StatusCode::OK,
        "the web tier keeps no state"
    );

    let html = browser
        .get(format!("{other}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = csrf_token(&html).unwrap();
    let logout = browser
        .post(format!("{other}/auth/logout"))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let there = browser
        .get(format!("{other}/auth/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        there.status(),
        StatusCode::UNAUTHORIZED,
        "dead at once where it ended"
    );
    tokio::time::sleep(
        quotebook::auth::session_store::CACHE_TTL + std::time::Duration::from_millis(100),
    )
    .await;
    let here = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(
        here.status(),
        StatusCode::UNAUTHORIZED,
        "and everywhere within a second"
    );
}
