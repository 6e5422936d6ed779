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

    // The provider's session id stays with the session (back-channel logout names it).
    let stored: String = sqlx::query_scalar("SELECT data->'data'->>'user' FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&stored).unwrap();
    assert!(
        stored["sid"].as_str().is_some_and(|sid| !sid.is_empty()),
        "{stored}"
    );

    // The users row was created from the claims.
    let email: String = sqlx::query_scalar("SELECT email FROM users WHERE user_id = $1")
        .bind(me["sub"].as_str().unwrap())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(email, "grace@example.com");
}

#[tokio::test]
async fn the_session_id_changes_at_every_login() {
    let app = spawn_app().await;
    // A cookie planted before the login (session fixation) is never adopted.
    let planted = "quotebook_session=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let jar = std::sync::Arc::new(reqwest::cookie::Jar::default());
    jar.add_cookie_str(planted, &app.address.parse().unwrap());
    let browser = reqwest::Client::builder()
        .cookie_provider(jar)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let first = app.login_with(&browser, "rotate@example.com").await;
    let before = session_cookie(&first).expect("the callback sets the session cookie");
    assert_ne!(before, planted);

    // Signing in again (asked for explicitly while signed in) gives a new id too.
    let steps = helpers::start_login_from(
        &browser,
        &app.url("/auth/login?prompt=login"),
        "rotate@example.com",
    )
    .await;
    let second = browser.get(&steps.callback_url).send().await.unwrap();
    let after = session_cookie(&second).expect("a new cookie");
    assert_ne!(before, after, "no session fixation");

    // The earlier cookie is dead.
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
    helpers::wait_out_the_session_memory().await;
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
    helpers::wait_out_the_session_memory().await;
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
    helpers::wait_out_the_session_memory().await;
    let here = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(
        here.status(),
        StatusCode::UNAUTHORIZED,
        "and everywhere within a second"
    );
}

/// The `state` of the sign-in `client` just started (from the provider URL it was sent to).
async fn started_state(app: &helpers::TestApp, client: &reqwest::Client, query: &str) -> String {
    let start = client
        .get(app.url(&format!("/auth/login{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    url::Url::parse(&location(&start))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn the_providers_reason_reaches_the_person() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();

    // A post-login Action that refuses unverified addresses.
    emulator
        .faults()
        .deny_logins(Some("Please verify your email before logging in."));
    let refused = app.login_with(&client(), "unverified@example.com").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("Please verify your email before logging in."),
        "{body}"
    );
    assert!(
        body.contains("Try again"),
        "verifying and retrying can work"
    );
    emulator.faults().deny_logins(None);

    // The issue's own request: a description on the callback of a pending sign-in.
    let browser = client();
    let state = started_state(&app, &browser, "").await;
    let page = browser
        .get(app.url(&format!(
            "/auth/callback?error=access_denied&error_description=Please%20verify%20your%20email&state={state}"
        )))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Please verify your email"), "{page}");

    // Escaped and trimmed.
    let state = started_state(&app, &browser, "").await;
    let long = format!("<script>alert(1)</script>{}", "x".repeat(2000));
    let page = browser
        .get(app.url("/auth/callback"))
        .query(&[
            ("error", "access_denied"),
            ("error_description", long.as_str()),
            ("state", state.as_str()),
        ])
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)"), "{page}");
    assert!(!page.contains(&"x".repeat(400)), "trimmed to a sane length");

    // A description on a callback this browser never started is not shown (it could be anyone's).
    let page = client()
        .get(app.url(
            "/auth/callback?error=access_denied&error_description=Call%20555-0100%20now&state=forged",
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("555-0100"), "{page}");
}

#[tokio::test]
async fn a_blocked_user_is_told_so_without_a_pointless_try_again() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    let first = app.login_with(&client(), "blocked@example.com").await;
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    helpers::block_user(&emulator, "blocked@example.com");
    let refused = app.login_with(&client(), "blocked@example.com").await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body = refused.text().await.unwrap();
    assert!(body.contains("blocked"), "{body}");
    assert!(!body.contains("Try again"), "{body}");
}

/// Signs in, then ends the local session behind the app's back (expiry, or a logout elsewhere):
/// the browser and the CSRF token of its last page.
async fn signed_in_with_an_expired_session(
    app: &helpers::TestApp,
    email: &str,
) -> (reqwest::Client, String) {
    let browser = app.signed_in_client(email).await;
    let token = app.csrf_for(&browser).await;
    app.end_all_sessions().await;
    (browser, token)
}

fn assert_provider_logout(app: &helpers::TestApp, response: &reqwest::Response) -> url::Url {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(&location(response)).expect("an absolute provider URL");
    assert_eq!(to.path(), "/oidc/logout", "the end_session_endpoint");
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(params["client_id"], quotebook::config::DEV_CLIENT_ID);
    assert_eq!(
        params["post_logout_redirect_uri"],
        format!("{}/", app.address)
    );
    to
}

#[tokio::test]
async fn log_out_after_the_local_session_expired_still_signs_out_at_the_provider() {
    let app = spawn_app().await;
    let (browser, stale_token) =
        signed_in_with_an_expired_session(&app, "shared-pc@example.com").await;
    let logout = browser
        .post(app.url("/auth/logout"))
        .form(&[("csrf_token", stale_token.as_str())])
        .send()
        .await
        .unwrap();
    let to = assert_provider_logout(&app, &logout);
    assert!(
        !to.query_pairs().any(|(k, _)| k == "id_token_hint"),
        "no hint when there is no ID token"
    );
    let back = browser.get(to).send().await.unwrap();
    assert!(back.status().is_redirection());
    assert!(location(&back).starts_with(&app.address));

    // The next Log in asks for the person again instead of going straight back in.
    let start = browser.get(app.url("/auth/login")).send().await.unwrap();
    let provider = browser.get(location(&start)).send().await.unwrap();
    assert_eq!(
        provider.status(),
        StatusCode::OK,
        "the provider's login page, not a silent sign-in"
    );
}

#[tokio::test]
async fn a_second_log_out_from_another_tab_reaches_the_provider_too() {
    let app = spawn_app().await;
    let browser = app.signed_in_client("two-tabs@example.com").await;
    let token = app.csrf_for(&browser).await;
    for attempt in ["first tab", "second tab"] {
        let logout = browser
            .post(app.url("/auth/logout"))
            .form(&[("csrf_token", token.as_str())])
            .send()
            .await
            .unwrap();
        let to = assert_provider_logout(&app, &logout);
        let hint = to.query_pairs().any(|(k, _)| k == "id_token_hint");
        assert_eq!(hint, attempt == "first tab", "{attempt}");
    }
}

#[tokio::test]
async fn login_passes_only_the_allowlisted_parameters_to_the_provider() {
    let app = spawn_app().await;
    let browser = client();
    let start = browser
        .get(app.url("/auth/login"))
        .query(&[
            ("returnTo", "/quote/edit"),
            ("screen_hint", "signup"),
            ("prompt", "login"),
            ("login_hint", "new@example.com"),
            ("connection", "Username-Password-Authentication"),
            ("organization", "org_abc123"),
            ("invitation", "inv_xyz"),
            // Never from the request:
            ("redirect_uri", "https://evil.example/cb"),
            ("client_id", "someone-else"),
            ("response_type", "token"),
            ("scope", "openid admin"),
            ("audience", "https://evil.example/api"),
            ("nonce", "chosen"),
            ("state", "chosen"),
            ("code_challenge", "chosen"),
            ("foo", "bar"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(&location(&start)).unwrap();
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    for (name, value) in [
        ("screen_hint", "signup"),
        ("prompt", "login"),
        ("login_hint", "new@example.com"),
        ("connection", "Username-Password-Authentication"),
        ("organization", "org_abc123"),
        ("invitation", "inv_xyz"),
        ("client_id", quotebook::config::DEV_CLIENT_ID),
        ("response_type", "code"),
        ("redirect_uri", &format!("{}/auth/callback", app.address)),
    ] {
        assert_eq!(params.get(name).map(String::as_str), Some(value), "{name}");
    }
    let scopes: Vec<&str> = params["scope"].split(' ').collect();
    assert!(!scopes.contains(&"admin"), "{scopes:?}");
    assert!(scopes.contains(&"openid"));
    for (name, sent) in [
        ("nonce", "chosen"),
        ("state", "chosen"),
        ("code_challenge", "chosen"),
    ] {
        assert_ne!(params[name], sent, "{name} is ours");
    }
    assert!(!params.contains_key("audience") && !params.contains_key("foo"));

    // The provider opens its sign-up screen, and the sign-up lands on returnTo.
    let html = browser.get(to).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("Create your account"), "{html}");
    let steps = helpers::start_login_from(
        &browser,
        &app.url("/auth/login?returnTo=%2Fquote%2Fedit&screen_hint=signup&organization=org_abc123"),
        "new@example.com",
    )
    .await;
    let done = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/quote/edit");
}

#[tokio::test]
async fn a_configured_audience_and_extra_scopes_are_requested() {
    let app = helpers::spawn_app_against(
        quotebook::emulator::EmulatorConfig {
            apis: vec!["https://api.quotebook.example".into()],
            ..quotebook::emulator::EmulatorConfig::for_tests()
        },
        &[
            ("AUTH0_AUDIENCE", "https://api.quotebook.example"),
            ("AUTH0_SCOPE", "openid offline_access read:quotes"),
        ],
    )
    .await;
    let browser = client();
    let start = browser.get(app.url("/auth/login")).send().await.unwrap();
    let to = url::Url::parse(&location(&start)).unwrap();
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(params["audience"], "https://api.quotebook.example");
    let mut scopes: Vec<&str> = params["scope"].split(' ').collect();
    scopes.sort_unstable();
    assert_eq!(
        scopes,
        [
            "email",
            "offline_access",
            "openid",
            "profile",
            "read:quotes"
        ]
    );
    let callback = app.login_with(&browser, "api@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn bad_login_parameters_get_a_clear_400() {
    let app = spawn_app().await;
    let long_hint = "a".repeat(600);
    for (name, value, says) in [
        ("prompt", "bogus", "prompt"),
        ("screen_hint", "nope", "screen_hint"),
        ("login_hint", long_hint.as_str(), "login_hint"),
        ("connection", "bad\u{7}name", "connection"),
    ] {
        let response = client()
            .get(app.url("/auth/login"))
            .query(&[(name, value)])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{name}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{name}: {body}");
    }
}

#[tokio::test]
async fn the_signed_out_page_offers_sign_up() {
    let app = spawn_app().await;
    let home = app.get("/").await.text().await.unwrap();
    assert!(
        home.contains("href=\"/auth/login?screen_hint=signup\""),
        "{home}"
    );
    let start = app.get("/auth/login?screen_hint=signup").await;
    let page = client()
        .get(location(&start))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("Create your account"));
}

#[tokio::test]
async fn an_id_token_for_another_organization_is_refused() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    let mut claims = serde_json::Map::new();
    claims.insert("org_id".into(), serde_json::json!("org_someone_else"));
    emulator.faults().set_id_token_claims(claims);
    let browser = client();
    let steps = helpers::start_login_from(
        &browser,
        &app.url("/auth/login?organization=org_abc123"),
        "member@example.com",
    )
    .await;
    let refused = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let me = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    // The organization's own token signs in.
    emulator
        .faults()
        .set_id_token_claims(serde_json::Map::new());
    let steps = helpers::start_login_from(
        &browser,
        &app.url("/auth/login?organization=org_abc123"),
        "member@example.com",
    )
    .await;
    let done = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_callback_naming_another_issuer_is_refused_before_the_code_is_used() {
    // RFC 9207: a provider may name itself in the authorization response (`iss`); a response
    // that names another one is a mix-up and its code must not be sent anywhere.
    let app = spawn_app().await;
    let browser = client();
    let steps = app.start_login(&browser, "mixup@example.com", "/").await;
    let mut forged = url::Url::parse(&steps.callback_url).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("iss", "https://attacker.example/");
    let refused = browser.get(forged).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let me = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    // The provider's own name is fine.
    let steps = app.start_login(&browser, "mixup@example.com", "/").await;
    let mut named = url::Url::parse(&steps.callback_url).unwrap();
    let issuer = app.emulator.as_ref().unwrap().issuer_identifier();
    named.query_pairs_mut().append_pair("iss", &issuer);
    let done = browser.get(named).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn ending_a_persons_sessions_signs_out_every_device_of_theirs_and_no_one_else() {
    let app = spawn_app().await;
    let laptop = app.signed_in_client("revoked@example.com").await;
    let phone = app.signed_in_client("revoked@example.com").await;
    let bystander = app.signed_in_client("bystander@example.com").await;
    let sub: String = sqlx::query_scalar("SELECT user_id FROM users WHERE email = $1")
        .bind("revoked@example.com")
        .fetch_one(&app.db)
        .await
        .unwrap();

    let ended = quotebook::auth::revocation::end_sessions_of(&app.db, &sub)
        .await
        .unwrap();
    assert_eq!(ended, 2, "both devices' sessions end");
    helpers::wait_out_the_session_memory().await;

    for device in [&laptop, &phone] {
        let me = device.get(app.url("/auth/me")).send().await.unwrap();
        assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "signed out");
    }
    let me = bystander.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(
        me.status(),
        StatusCode::OK,
        "another person stays signed in"
    );
}
