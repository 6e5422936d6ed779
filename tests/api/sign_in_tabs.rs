//! Several sign-ins in flight in one browser (two tabs, a double click, a bookmarked
//! `/auth/login`), replayed callbacks, sign-ins started in another browser, and session
//! lifetimes that count from the sign-in. All through the real flow against the emulator.

use std::time::Duration;

use reqwest::StatusCode;

use crate::helpers::{client, location, spawn_app, spawn_app_with};

async fn me_status(app: &crate::helpers::TestApp, browser: &reqwest::Client) -> StatusCode {
    browser
        .get(app.url("/auth/me"))
        .send()
        .await
        .expect("/auth/me")
        .status()
}

#[tokio::test]
async fn two_sign_ins_in_one_browser_each_land_on_their_own_next() {
    let app = spawn_app().await;
    let browser = client();
    // Tab 1 reaches the provider's page and signs in there; tab 2 starts afterwards and, with
    // the provider's session now open, comes straight back. Neither callback is followed yet.
    let first = app.start_login(&browser, "tabs@example.com", "/").await;
    let second = app
        .start_login(&browser, "tabs@example.com", "/quote/edit")
        .await;

    let done = browser.get(&first.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/");
    let done = browser.get(&second.callback_url).send().await.unwrap();
    assert_eq!(
        done.status(),
        StatusCode::SEE_OTHER,
        "finishing one sign-in must not invalidate the other: {}",
        done.text().await.unwrap_or_default()
    );
    assert_eq!(location(&done), "/quote/edit");
    assert_eq!(me_status(&app, &browser).await, StatusCode::OK);
}

#[tokio::test]
async fn a_double_click_on_log_in_leaves_both_attempts_usable() {
    let app = spawn_app().await;
    let browser = client();
    // Two requests at once from a browser without any cookie yet: neither may clobber the other.
    let (a, b) = tokio::join!(
        app.start_login(&browser, "double@example.com", "/"),
        app.start_login(&browser, "double@example.com", "/quote/edit"),
    );
    for (steps, next) in [(a, "/"), (b, "/quote/edit")] {
        let done = browser.get(&steps.callback_url).send().await.unwrap();
        assert_eq!(done.status(), StatusCode::SEE_OTHER, "{next}");
        assert_eq!(location(&done), next);
    }
}

#[tokio::test]
async fn a_replayed_callback_from_a_signed_in_browser_goes_where_it_would_have_gone() {
    let app = spawn_app().await;
    let browser = client();
    let steps = app
        .start_login(&browser, "replay-tab@example.com", "/quote/edit")
        .await;
    let done = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(location(&done), "/quote/edit");

    // Back button or reload: the same callback URL again, from the signed-in browser.
    for _ in 0..2 {
        let again = browser.get(&steps.callback_url).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::SEE_OTHER);
        assert_eq!(location(&again), "/quote/edit");
    }
    assert_eq!(me_status(&app, &browser).await, StatusCode::OK);

    // Anyone else replaying it is refused and not signed in.
    let stranger = client();
    let refused = stranger.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(me_status(&app, &stranger).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_sign_in_started_in_another_browser_is_refused_and_stays_usable_for_its_own() {
    let app = spawn_app().await;
    let victim = client();
    let attacker = client();
    // Login CSRF: the attacker's callback URL opened in the victim's browser.
    let steps = app
        .start_login(&attacker, "attacker@example.com", "/")
        .await;
    let refused = victim.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body = refused.text().await.unwrap();
    assert!(body.contains("another browser"), "{body}");
    assert_eq!(me_status(&app, &victim).await, StatusCode::UNAUTHORIZED);

    // The browser that started it can still finish it.
    let done = attacker.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_pending_sign_in_expires_and_says_how_to_start_again() {
    let app = spawn_app().await;
    let browser = client();
    let steps = app
        .start_login(&browser, "slow@example.com", "/quote/edit")
        .await;
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM login_transactions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(pending, 1, "one pending sign-in, kept server side");
    sqlx::query("UPDATE login_transactions SET expires_at = now() - interval '1 second'")
        .execute(&app.db)
        .await
        .unwrap();
    let late = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(late.status(), StatusCode::BAD_REQUEST);
    let body = late.text().await.unwrap();
    assert!(body.contains("took too long"), "{body}");
    assert!(
        body.contains("href=\"/auth/login?next=%2Fquote%2Fedit\""),
        "Try again keeps where the person was going: {body}"
    );
    assert_eq!(me_status(&app, &browser).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn starting_a_sign_in_stores_no_session() {
    let app = spawn_app().await;
    let browser = client();
    let start = browser.get(app.url("/auth/login")).send().await.unwrap();
    assert_eq!(start.status(), StatusCode::SEE_OTHER);
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "a pending sign-in is not a session");
}

#[tokio::test]
async fn the_session_lifetime_counts_from_the_sign_in() {
    let app = spawn_app_with(&[("SESSION_LIFETIME_SECS", "4")]).await;
    let browser = client();
    // A sign-in started and abandoned...
    let abandoned = browser.get(app.url("/auth/login")).send().await.unwrap();
    assert_eq!(abandoned.status(), StatusCode::SEE_OTHER);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ...then, three seconds later, a successful one in the same browser.
    let steps = app.start_login(&browser, "lifetime@example.com", "/").await;
    let signed_in_at = std::time::Instant::now();
    let done = browser.get(&steps.callback_url).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        me_status(&app, &browser).await,
        StatusCode::OK,
        "two seconds after signing in, a four-second session is alive"
    );
    // And it still ends four seconds after the sign-in, however active.
    tokio::time::sleep(
        Duration::from_millis(5_200).saturating_sub(signed_in_at.elapsed())
            + quotebook::auth::session_store::CACHE_TTL,
    )
    .await;
    assert_eq!(me_status(&app, &browser).await, StatusCode::UNAUTHORIZED);
}
