//! Sign-in against a second, standards-following OpenID Provider: panva's oidc-provider
//! (OpenID Certified), run by `tests/oidc-provider/server.mjs` with Node. Unlike the Auth0
//! emulator it spells its issuer without a trailing slash, serves the profile from UserInfo
//! only, adds `iss` to its authorization responses, keeps its own single sign-on session,
//! asks for confirmation at RP-initiated logout, and types its back-channel logout tokens
//! `logout+jwt` (with a `sid` only when the client registered `backchannel_logout_session_required`).
//!
//! Needs Node and `npm ci --prefix tests/oidc-provider` (`.ci/run` does both). Without them the
//! tests say so and skip, except under `CI=true`, where they fail.

use std::{path::PathBuf, process::Stdio, time::Duration};

use reqwest::StatusCode;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::{
    TestApp, client, csrf_token, find_form, location, signed_in_at, spawn_app_with,
};

const CLIENT_ID: &str = "quotebook-tests";
const CLIENT_SECRET: &str = "quotebook-tests-secret-that-is-long-enough";

/// The provider's process; killed when dropped.
struct OtherProvider {
    issuer: String,
    _process: tokio::process::Child,
}

fn script_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// Why the provider cannot run here, if it cannot.
fn missing() -> Option<String> {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node {
        return Some("Node.js is not installed (apt-get install nodejs npm)".into());
    }
    if !script_dir().join("node_modules/oidc-provider").exists() {
        return Some(
            "oidc-provider is not installed: run `npm ci --prefix tests/oidc-provider`".into(),
        );
    }
    None
}

/// How the app is registered for back-channel logout at the provider.
#[derive(Debug, Clone, Copy)]
enum BackChannel {
    /// Not registered: no logout tokens.
    Off,
    /// Registered; `sid` in ID and logout tokens when `session_required`.
    On { session_required: bool },
}

/// Starts the provider for an app at `app_address`, or `None` (with the reason) outside CI.
async fn start_provider(app_address: &str, back_channel: BackChannel) -> Option<OtherProvider> {
    if let Some(reason) = missing() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason}");
        }
        eprintln!("skipping the second-provider test: {reason}");
        return None;
    }
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script_dir().join("server.mjs"))
        .env("CLIENT_ID", CLIENT_ID)
        .env("CLIENT_SECRET", CLIENT_SECRET)
        .env("REDIRECT_URI", format!("{app_address}/auth/callback"))
        .env("POST_LOGOUT_REDIRECT_URI", format!("{app_address}/"));
    if let BackChannel::On { session_required } = back_channel {
        command
            .env(
                "BACKCHANNEL_LOGOUT_URI",
                format!("{app_address}/auth/backchannel-logout"),
            )
            .env(
                "BACKCHANNEL_LOGOUT_SESSION_REQUIRED",
                session_required.to_string(),
            );
    }
    let mut process = command
        .stdout(Stdio::piped())
        // Its development-mode warnings are expected.
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("node starts");
    let stdout = process.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("the provider starts within 20 s")
        .expect("its output")
        .expect("a line naming its issuer");
    // Keep reading: it logs notices to stdout, and a closed pipe would stop it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let started: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
    let issuer = started["issuer"].as_str().expect("issuer").to_owned();
    Some(OtherProvider {
        issuer,
        _process: process,
    })
}

/// The app on a port chosen up front (the provider must know its callback), signing in against
/// the provider.
async fn app_and_provider() -> Option<(TestApp, OtherProvider)> {
    app_and_provider_with(BackChannel::Off).await
}

/// [`app_and_provider`] with the app registered for back-channel logout as `back_channel`.
async fn app_and_provider_with(back_channel: BackChannel) -> Option<(TestApp, OtherProvider)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let address = format!("http://127.0.0.1:{port}");
    let provider = start_provider(&address, back_channel).await?;
    let port = port.to_string();
    let app = spawn_app_with(&[
        ("PORT", port.as_str()),
        ("APP_BASE_URL", address.as_str()),
        ("AUTH0_ISSUER_BASE_URL", provider.issuer.as_str()),
        ("AUTH0_CLIENT_ID", CLIENT_ID),
        ("AUTH0_CLIENT_SECRET", CLIENT_SECRET),
    ])
    .await;
    Some((app, provider))
}

/// `href` (absolute, or relative to the provider) as an absolute URL.
fn at(provider: &OtherProvider, href: &str) -> String {
    url::Url::parse(&provider.issuer)
        .and_then(|base| base.join(href))
        .expect("a URL")
        .to_string()
}

/// Follows the provider's redirects from `url` until it shows a page or sends the browser back
/// to the app; the last response.
async fn through_provider(
    browser: &reqwest::Client,
    provider: &OtherProvider,
    mut url: String,
) -> reqwest::Response {
    for _ in 0..10 {
        let response = browser.get(&url).send().await.expect("provider request");
        let next = at(provider, &location(&response));
        if !response.status().is_redirection() || !next.starts_with(&provider.issuer) {
            return response;
        }
        url = next;
    }
    panic!("the provider redirected too often");
}

/// Signs in at the provider's login form as `login`; the app's callback URL.
async fn sign_in(
    app: &TestApp,
    provider: &OtherProvider,
    browser: &reqwest::Client,
    login: &str,
) -> String {
    let start = browser.get(app.url("/auth/login")).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let page = through_provider(browser, provider, location(&start)).await;
    assert_eq!(page.status(), StatusCode::OK, "the provider's login form");
    let html = page.text().await.unwrap();
    let form = find_form(&html, "login").expect("a login form");
    let mut fields = form.hidden.clone();
    fields.push(("login".into(), login.into()));
    fields.push(("password".into(), "any password".into()));
    let action = at(provider, &form.action);
    let submitted = browser.post(action).form(&fields).send().await.unwrap();
    assert!(
        submitted.status().is_redirection(),
        "{}",
        submitted.status()
    );
    let back = through_provider(browser, provider, at(provider, &location(&submitted))).await;
    let callback = location(&back);
    assert!(
        callback.starts_with(&app.url("/auth/callback")),
        "{callback}"
    );
    callback
}

/// Where `/auth/login` leads at the provider: its login form (200) or straight back to the app.
async fn second_login_lands(
    app: &TestApp,
    provider: &OtherProvider,
    browser: &reqwest::Client,
) -> String {
    let start = browser
        .get(app.url("/auth/login?next=%2Fquote%2Fedit"))
        .send()
        .await
        .unwrap();
    let end = through_provider(browser, provider, location(&start)).await;
    if end.status() == StatusCode::OK {
        "the login form".into()
    } else {
        location(&end)
    }
}

/// Confirms the provider's RP-initiated logout page and returns where it sends the browser.
async fn confirm_logout(
    provider: &OtherProvider,
    browser: &reqwest::Client,
    logout: url::Url,
) -> String {
    let page = browser.get(logout).send().await.unwrap();
    assert_eq!(
        page.status(),
        StatusCode::OK,
        "the provider asks to confirm"
    );
    let html = page.text().await.unwrap();
    let form = find_form(&html, "xsrf").expect("the provider's logout form");
    let mut fields = form.hidden.clone();
    fields.push(("logout".into(), "yes".into()));
    let action = at(provider, &form.action);
    let done = browser.post(action).form(&fields).send().await.unwrap();
    assert!(done.status().is_redirection(), "{}", done.status());
    location(&done)
}

#[tokio::test]
async fn sign_in_and_out_against_a_second_standards_following_provider() {
    let Some((app, provider)) = app_and_provider().await else {
        return;
    };
    assert!(!provider.issuer.ends_with('/'), "{}", provider.issuer);
    let browser = client();
    let callback = sign_in(&app, &provider, &browser, "jane@example.com").await;
    let done = browser.get(&callback).send().await.unwrap();
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "{}",
        done.text().await.unwrap_or_default()
    );
    let me: serde_json::Value = browser
        .get(app.url("/auth/me"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["sub"], "jane@example.com");
    // The ID token has no profile: it came from UserInfo.
    assert_eq!(me["email"], "jane@example.com");
    assert_eq!(me["email_verified"], true);
    assert_eq!(me["name"], "jane");

    // While the provider's session lasts, a browser whose local session has ended (here: its
    // rows removed) signs in again without the form.
    app.end_all_sessions().await;
    let lands = second_login_lands(&app, &provider, &browser).await;
    assert!(lands.starts_with(&app.url("/auth/callback")), "{lands}");
    let done = browser.get(&lands).send().await.unwrap();
    assert_eq!(location(&done), "/quote/edit");

    // Log out: the provider's end_session_endpoint with the ID token as hint, confirmed there,
    // back to the app; the next Log in asks for the person again.
    let html = browser
        .get(app.url("/"))
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
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(&location(&logout)).unwrap();
    assert!(to.as_str().starts_with(&provider.issuer), "{to}");
    assert!(to.query_pairs().any(|(k, _)| k == "id_token_hint"));
    assert_eq!(confirm_logout(&provider, &browser, to).await, app.url("/"));
    assert_eq!(
        second_login_lands(&app, &provider, &browser).await,
        "the login form"
    );
}

#[tokio::test]
async fn log_out_after_the_local_session_expired_ends_the_second_providers_session_too() {
    let Some((app, provider)) = app_and_provider().await else {
        return;
    };
    let browser = client();
    let callback = sign_in(&app, &provider, &browser, "shared@example.com").await;
    assert_eq!(
        browser.get(&callback).send().await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    let html = browser
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let stale_token = csrf_token(&html).unwrap();
    app.end_all_sessions().await;

    let logout = browser
        .post(app.url("/auth/logout"))
        .form(&[("csrf_token", stale_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::SEE_OTHER);
    let to = url::Url::parse(&location(&logout)).unwrap();
    let params: std::collections::HashMap<_, _> = to.query_pairs().into_owned().collect();
    assert_eq!(params["client_id"], CLIENT_ID);
    assert!(!params.contains_key("id_token_hint"));
    assert_eq!(confirm_logout(&provider, &browser, to).await, app.url("/"));
    assert_eq!(
        second_login_lands(&app, &provider, &browser).await,
        "the login form"
    );
}

/// Signs `browser` in at the app through the provider as `login`.
async fn signed_in(
    app: &TestApp,
    provider: &OtherProvider,
    browser: &reqwest::Client,
    login: &str,
) {
    let callback = sign_in(app, provider, browser, login).await;
    let done = browser.get(&callback).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_logout_at_the_second_provider_reaches_the_app_through_the_back_channel() {
    for session_required in [true, false] {
        let Some((app, provider)) =
            app_and_provider_with(BackChannel::On { session_required }).await
        else {
            return;
        };
        let laptop = client();
        let phone = client();
        signed_in(&app, &provider, &laptop, "bc@example.com").await;
        signed_in(&app, &provider, &phone, "bc@example.com").await;
        let bystander = client();
        signed_in(&app, &provider, &bystander, "other@example.com").await;
        let sids: Vec<Option<String>> =
            sqlx::query_scalar("SELECT sid FROM sessions WHERE user_id = $1")
                .bind("bc@example.com")
                .fetch_all(&app.db)
                .await
                .unwrap();
        assert_eq!(sids.len(), 2);
        assert_eq!(
            sids.iter().all(Option::is_some),
            session_required,
            "the ID token carries sid only when the client asked for it: {sids:?}"
        );

        // The laptop ends its session at the provider itself, not through the app: the
        // provider posts a logout token (typed logout+jwt) before it confirms.
        let discovery: serde_json::Value = client()
            .get(format!(
                "{}/.well-known/openid-configuration",
                provider.issuer
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(discovery["backchannel_logout_supported"], true);
        let end_session =
            url::Url::parse(discovery["end_session_endpoint"].as_str().unwrap()).unwrap();
        confirm_logout(&provider, &laptop, end_session).await;

        assert!(
            !signed_in_at(&app.address, &laptop).await,
            "session_required={session_required}"
        );
        // With a sid only that provider session ends; with only a sub, every one of theirs.
        assert_eq!(
            signed_in_at(&app.address, &phone).await,
            session_required,
            "session_required={session_required}"
        );
        assert!(signed_in_at(&app.address, &bystander).await);
    }
}
