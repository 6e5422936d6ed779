//! Sign-in against providers as they really are, through the emulator's switches: issuers
//! spelled without Auth0's trailing slash, a real issuer mismatch, signing keys that rotate,
//! discovery that fails and recovers, claims in the shapes other connections send, and token
//! responses the app cannot read.

use std::time::Duration;

use quotebook::emulator::{Emulator, EmulatorConfig, IssuerIdentifier};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::helpers::{
    client, location, spawn_app, spawn_app_against, spawn_app_with, spawn_app_with_provider,
};

async fn me(app: &crate::helpers::TestApp, browser: &reqwest::Client) -> Value {
    let response = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "signed in");
    response.json().await.unwrap()
}

/// A whole sign-in in a fresh browser; the callback's answer.
async fn sign_in(
    app: &crate::helpers::TestApp,
    email: &str,
) -> (reqwest::Client, reqwest::Response) {
    let browser = client();
    let callback = app.login_with(&browser, email).await;
    (browser, callback)
}

#[tokio::test]
async fn an_issuer_without_a_trailing_slash_signs_in() {
    let app = spawn_app_against(
        EmulatorConfig {
            issuer: IssuerIdentifier::NoTrailingSlash,
            ..EmulatorConfig::for_tests()
        },
        &[],
    )
    .await;
    let (browser, callback) = sign_in(&app, "google-style@example.com").await;
    assert_eq!(
        callback.status(),
        StatusCode::SEE_OTHER,
        "{}",
        callback.text().await.unwrap_or_default()
    );
    assert_eq!(
        me(&app, &browser).await["email"],
        "google-style@example.com"
    );
}

#[tokio::test]
async fn the_seed_guides_issuer_without_its_slash_still_finds_auth0s() {
    // `.env.local` from Neon's guide: AUTH0_ISSUER_BASE_URL=https://TENANT.auth0.com, while the
    // tenant's discovered issuer (and every ID token's `iss`) is https://TENANT.auth0.com/.
    let emulator = Emulator::start(EmulatorConfig::for_tests()).await.unwrap();
    let discovered = emulator.issuer_identifier();
    assert!(discovered.ends_with('/'));
    let written = discovered.trim_end_matches('/').to_owned();
    let app = spawn_app_with_provider(emulator, &written, &[]).await;
    let (browser, callback) = sign_in(&app, "seed@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
    assert_eq!(me(&app, &browser).await["email"], "seed@example.com");
    let ready: Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(ready["sign_in"], "ok");
}

#[tokio::test]
async fn a_real_issuer_mismatch_is_a_configuration_error_on_readyz_and_the_login_page() {
    // A provider behind a proxy that announces another address than the one it is reached at.
    let claimed = "https://idp.internal:8443/realms/app";
    let emulator = Emulator::start(EmulatorConfig {
        issuer: IssuerIdentifier::Claimed(claimed.into()),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    let configured = emulator.issuer().to_string();
    let app = spawn_app_with_provider(emulator, &configured, &[]).await;

    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    let reason = body["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(claimed) && reason.contains(&configured),
        "both values: {body}"
    );

    let login = app.get("/auth/login").await;
    assert!(login.status().is_server_error());
    let page = login.text().await.unwrap();
    assert!(page.contains("not set up correctly"), "{page}");
    assert!(!page.contains("not reachable"), "{page}");
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_once_and_sign_in_goes_on() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    let (_, callback) = sign_in(&app, "before@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
    let fetched_at_start = emulator.jwks_requests();

    emulator.rotate_signing_key().await.unwrap();
    let (browser, callback) = sign_in(&app, "after@example.com").await;
    assert_eq!(
        callback.status(),
        StatusCode::SEE_OTHER,
        "a token signed with the new key: {}",
        callback.text().await.unwrap_or_default()
    );
    assert_eq!(me(&app, &browser).await["email"], "after@example.com");
    assert_eq!(emulator.jwks_requests(), fetched_at_start + 1);

    // Another unknown key within the rate limit's window: no second fetch.
    emulator.rotate_signing_key().await.unwrap();
    let (browser, callback) = sign_in(&app, "again@example.com").await;
    assert_eq!(callback.status(), StatusCode::BAD_REQUEST);
    assert_eq!(emulator.jwks_requests(), fetched_at_start + 1);
    let anonymous = browser.get(app.url("/auth/me")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn failed_discovery_is_retried_once_the_provider_is_back() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}/");
    let app = spawn_app_with(&[
        ("AUTH0_ISSUER_BASE_URL", issuer.as_str()),
        ("AUTH0_CLIENT_ID", quotebook::config::DEV_CLIENT_ID),
        ("AUTH0_CLIENT_SECRET", quotebook::config::DEV_CLIENT_SECRET),
    ])
    .await;
    let down = app.get("/auth/login").await;
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.text().await.unwrap().contains("not reachable"));

    let emulator = Emulator::start(EmulatorConfig {
        bind: format!("127.0.0.1:{port}").parse().unwrap(),
        ..EmulatorConfig::for_tests()
    })
    .await
    .unwrap();
    emulator.add_callback_url(&format!("{}/auth/callback", app.address));
    let mut app = app;
    app.emulator = Some(emulator);
    let mut started = None;
    for _ in 0..30 {
        let response = app.get("/auth/login").await;
        if response.status() == StatusCode::SEE_OTHER {
            started = Some(location(&response));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started = started.expect("sign-in starts once the provider answers again");
    assert!(started.starts_with(&issuer), "{started}");
    let (_, callback) = sign_in(&app, "back@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
}

fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

#[tokio::test]
async fn claims_in_other_shapes_never_fail_a_sign_in() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    let email_verified = |me: &Value| me["email_verified"].clone();
    for (shapes, expected_verified) in [
        // A SAML connection mapping an attribute: the address itself.
        (
            claims(&[("email_verified", json!("jane@acme.example"))]),
            Value::Null,
        ),
        (claims(&[("email_verified", json!("true"))]), json!(true)),
        (claims(&[("email_verified", json!("FALSE"))]), json!(false)),
        (
            claims(&[
                ("name", json!(42)),
                ("nickname", json!(["jane"])),
                ("picture", json!({"url": "https://x.example/p.png"})),
                ("updated_at", json!("last tuesday")),
                ("address", json!("1 Main St")),
                ("phone_number_verified", json!("yes")),
                ("locale", json!(7)),
            ]),
            json!(false),
        ),
    ] {
        emulator.faults().set_id_token_claims(shapes.clone());
        let (browser, callback) = sign_in(&app, "jane@acme.example").await;
        assert_eq!(
            callback.status(),
            StatusCode::SEE_OTHER,
            "{shapes:?}: {}",
            callback.text().await.unwrap_or_default()
        );
        let profile = me(&app, &browser).await;
        assert_eq!(profile["email"], "jane@acme.example", "{shapes:?}");
        assert_eq!(email_verified(&profile), expected_verified, "{shapes:?}");
    }
    let stored: Option<bool> =
        sqlx::query_scalar("SELECT email_verified FROM users WHERE email = 'jane@acme.example'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, Some(false), "the last sign-in's answer is kept");

    // No email and no name in the ID token at all: still signed in, and the profile comes from
    // UserInfo instead (OpenID Connect Core 5.4: with the code flow a provider may send the
    // profile only there).
    emulator.faults().set_id_token_claims(claims(&[
        ("email", Value::Null),
        ("email_verified", Value::Null),
        ("name", Value::Null),
        ("nickname", Value::Null),
    ]));
    let (browser, callback) = sign_in(&app, "nameless@example.com").await;
    assert_eq!(callback.status(), StatusCode::SEE_OTHER);
    let profile = me(&app, &browser).await;
    assert_eq!(profile["email"], "nameless@example.com");
    assert!(profile["name"].is_string(), "{profile}");
}

#[tokio::test]
async fn a_name_too_long_to_store_never_fails_a_sign_in() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    // Longer than the admin search's order index holds (`user_search_fits_its_order_index`).
    emulator
        .faults()
        .set_id_token_claims(claims(&[("name", json!("x".repeat(3000)))]));
    let (browser, callback) = sign_in(&app, "long-name@example.com").await;
    assert_eq!(
        callback.status(),
        StatusCode::SEE_OTHER,
        "{}",
        callback.text().await.unwrap_or_default()
    );
    assert_eq!(me(&app, &browser).await["email"], "long-name@example.com");
    let rows: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE last_login > now() - interval '1 minute'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(rows, 1, "the row is written without the profile");
}

#[tokio::test]
async fn a_token_response_the_app_cannot_read_is_a_provider_error() {
    let app = spawn_app().await;
    let emulator = app.emulator.clone().unwrap();
    let provider = emulator.issuer().host_str().unwrap().to_owned();
    for broken in [
        "<html><body>Bad gateway</body></html>",
        r#"{"access_token":"x","token_type":"Bearer","id_token":"not-a-jwt"}"#,
    ] {
        emulator.faults().set_token_response(Some(broken));
        let (browser, callback) = sign_in(&app, "broken@example.com").await;
        assert_eq!(callback.status(), StatusCode::BAD_GATEWAY, "{broken}");
        let page = callback.text().await.unwrap();
        assert!(page.contains(&provider), "names the provider: {page}");
        assert!(!page.contains("not reachable"), "{page}");
        let anonymous = browser.get(app.url("/auth/me")).send().await.unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    }
}
