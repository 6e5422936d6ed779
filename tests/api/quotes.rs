//! The quote: every route with htmx headers and as plain forms, validation, conflicts, isolation,
//! escaping, unicode, signed-out access and CSRF.

use reqwest::{Client, StatusCode};

use crate::helpers::{TestApp, attr, location, spawn_app};

/// Requests as htmx sends them: `HX-Request` plus the CSRF header from `hx-headers`.
fn htmx(builder: reqwest::RequestBuilder, token: &str) -> reqwest::RequestBuilder {
    builder
        .header("HX-Request", "true")
        .header("X-CSRF-Token", token)
}

async fn stored(app: &TestApp, email: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT m.message FROM user_messages m JOIN users u USING (user_id) WHERE u.email = $1",
    )
    .bind(email)
    .fetch_optional(&app.db)
    .await
    .unwrap()
}

async fn signed_in(app: &TestApp, email: &str) -> (Client, String) {
    let client = app.signed_in_client(email).await;
    let token = app.csrf_for(&client).await;
    (client, token)
}

fn version_in(html: &str) -> String {
    let start = html
        .find("name=\"version\"")
        .expect("the edit form carries its version");
    let tag_start = html[..start].rfind("<input").unwrap();
    let tag_end = html[start..].find('>').unwrap() + start;
    attr(&html[tag_start..tag_end], "value").unwrap()
}

#[tokio::test]
async fn home_shows_the_login_box_then_the_empty_form() {
    let app = spawn_app().await;
    let anonymous = app.get("/").await;
    assert!(
        anonymous.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("HX-Request")
    );
    let body = anonymous.text().await.unwrap();
    assert!(body.contains("Log in"));
    assert!(!body.contains("name=\"message\""));

    let (client, _) = signed_in(&app, "empty@example.com").await;
    let body = client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("Save an inspiring quote for yourself..."));
    assert!(body.contains("<label for=\"message\">"));
    assert!(body.contains("aria-live=\"polite\""));
    assert!(body.contains("name=\"htmx-config\""));
}

#[tokio::test]
async fn plain_forms_save_edit_and_delete_without_javascript() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "nojs@example.com").await;

    let saved = client
        .post(app.url("/quote"))
        .form(&[
            ("message", "Stay hungry, stay foolish."),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&saved), "/");
    assert_eq!(
        stored(&app, "nojs@example.com").await.as_deref(),
        Some("Stay hungry, stay foolish.")
    );
    let home = client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("Your quote is wonderful..."));
    assert!(home.contains("Stay hungry, stay foolish."));

    // The no-JS edit page is a full page with the form and its version.
    let edit = client
        .get(app.url("/quote/edit"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(edit.starts_with("<!DOCTYPE html>"));
    let version = version_in(&edit);
    let replaced = client
        .post(app.url("/quote"))
        .form(&[
            ("message", "Second thoughts."),
            ("version", &version),
            ("csrf_token", &token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        stored(&app, "nojs@example.com").await.as_deref(),
        Some("Second thoughts.")
    );

    let deleted = client
        .post(app.url("/quote/delete"))
        .form(&[("csrf_token", &token)])
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::SEE_OTHER);
    assert_eq!(stored(&app, "nojs@example.com").await, None);
}

#[tokio::test]
async fn htmx_requests_get_fragments_in_place() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "htmx@example.com").await;

    let created = htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", "Simplicity is prerequisite for reliability.")])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::OK);
    assert!(
        created.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("HX-Request")
    );
    let fragment = created.text().await.unwrap();
    assert!(!fragment.contains("<html"), "a fragment, not a page");
    assert!(fragment.contains("id=\"quote\"") && fragment.contains("Simplicity is prerequisite"));
    assert!(fragment.contains("hx-swap-oob") && fragment.contains("saved"));

    let edit = htmx(client.get(app.url("/quote/edit")), &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!edit.contains("<html"));
    assert!(edit.contains("<textarea") && edit.contains("autofocus"));
    assert!(edit.contains("hx-put=\"/quote\""));
    let version = version_in(&edit);

    // Cancel: the display fragment comes back, nothing saved.
    let cancel = htmx(client.get(app.url("/quote")), &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(cancel.contains("Simplicity is prerequisite") && !cancel.contains("<textarea"));

    let updated = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Edited in place."), ("version", &version)])
        .send()
        .await
        .unwrap();
    assert_eq!(updated.status(), StatusCode::OK);
    assert!(updated.text().await.unwrap().contains("Edited in place."));
    assert_eq!(
        stored(&app, "htmx@example.com").await.as_deref(),
        Some("Edited in place.")
    );

    let deleted = htmx(client.delete(app.url("/quote")), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let body = deleted.text().await.unwrap();
    assert!(body.contains("Save an inspiring quote") && body.contains("<textarea"));
    assert_eq!(stored(&app, "htmx@example.com").await, None);
}

#[tokio::test]
async fn invalid_quotes_get_422_with_the_text_kept_and_nothing_written() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "invalid@example.com").await;
    let too_long = "x".repeat(1001);
    let huge = "y".repeat(10_000);
    let cases = [
        ("   ", "Write a quote first."),
        (too_long.as_str(), "1001"),
        (huge.as_str(), "10000"),
        ("bell \u{7} character", "control character"),
        ("nul \u{0} byte", "control character"),
    ];
    for (text, message) in cases {
        for hx in [true, false] {
            let request = client
                .post(app.url("/quote"))
                .form(&[("message", text), ("csrf_token", &token)]);
            let request = if hx {
                request.header("HX-Request", "true")
            } else {
                request
            };
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{message}"
            );
            let body = response.text().await.unwrap();
            assert!(body.contains(message), "{message}: {body}");
            assert!(body.contains("aria-invalid=\"true\""));
            assert_eq!(body.contains("<html"), !hx);
            if !text.trim().is_empty() && !text.contains('\u{0}') {
                assert!(body.contains(&text[..5]), "the typed text is kept");
            }
        }
    }
    assert_eq!(stored(&app, "invalid@example.com").await, None);
}

#[tokio::test]
async fn malformed_form_encoding_is_a_400() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "encoding@example.com").await;
    for body in [
        format!("message=%zz&csrf_token={token}"),
        format!("message=%FF%FE&csrf_token={token}"),
    ] {
        let response = client
            .post(app.url("/quote"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(stored(&app, "encoding@example.com").await, None);
}

#[tokio::test]
async fn saving_over_a_newer_version_is_a_409_with_the_latest_text() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "tabs@example.com").await;
    htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", "First.")])
        .send()
        .await
        .unwrap();
    let tab_one = version_in(
        &htmx(client.get(app.url("/quote/edit")), &token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    let tab_two = version_in(
        &htmx(client.get(app.url("/quote/edit")), &token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let second = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Saved in tab two."), ("version", &tab_two)])
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);

    let stale = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Saved in tab one."), ("version", &tab_one)])
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::CONFLICT);
    let body = stale.text().await.unwrap();
    assert!(body.contains("changed in another tab"));
    assert!(body.contains("Saved in tab two."), "shows the latest text");
    assert!(
        body.contains("Saved in tab one."),
        "keeps what this tab typed"
    );
    assert_eq!(
        stored(&app, "tabs@example.com").await.as_deref(),
        Some("Saved in tab two.")
    );

    // Saving again from the conflict form (it carries the latest version) is deliberate.
    let latest = version_in(&body);
    let resolved = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Saved in tab one."), ("version", &latest)])
        .send()
        .await
        .unwrap();
    assert_eq!(resolved.status(), StatusCode::OK);
    assert_eq!(
        stored(&app, "tabs@example.com").await.as_deref(),
        Some("Saved in tab one.")
    );
}

#[tokio::test]
async fn people_never_see_or_change_each_others_quotes() {
    let app = spawn_app().await;
    let (alice, alice_token) = signed_in(&app, "alice@example.com").await;
    let (bob, bob_token) = signed_in(&app, "bob@example.com").await;
    htmx(alice.post(app.url("/quote")), &alice_token)
        .form(&[("message", "Alice's words.")])
        .send()
        .await
        .unwrap();
    // A user_id in the form is ignored: the id comes from the session.
    let alice_id: String =
        sqlx::query_scalar("SELECT user_id FROM users WHERE email = 'alice@example.com'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    htmx(bob.post(app.url("/quote")), &bob_token)
        .form(&[("message", "Bob's words."), ("user_id", alice_id.as_str())])
        .send()
        .await
        .unwrap();
    let bob_home = bob
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(bob_home.contains("Bob&#39;s words.") || bob_home.contains("Bob's words."));
    assert!(!bob_home.contains("Alice"));
    htmx(bob.delete(app.url("/quote")), &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(
        stored(&app, "alice@example.com").await.as_deref(),
        Some("Alice's words.")
    );
    assert_eq!(stored(&app, "bob@example.com").await, None);
    // Bob's token does not work in Alice's session.
    let cross = htmx(alice.delete(app.url("/quote")), &bob_token)
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        stored(&app, "alice@example.com").await.as_deref(),
        Some("Alice's words.")
    );
}

#[tokio::test]
async fn quotes_are_escaped_and_unicode_round_trips() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "unicode@example.com").await;
    let script = "<script>alert('x')</script> & \"quotes\"";
    htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", script)])
        .send()
        .await
        .unwrap();
    let home = client
        .get(app.url("/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(home.contains("&lt;script&gt;alert"), "rendered as text");
    assert!(!home.contains("<script>alert"));
    assert_eq!(
        stored(&app, "unicode@example.com").await.as_deref(),
        Some(script)
    );

    let text = "🦀 Ferris says שלום — cafe\u{301} 👩🏽‍💻\nsecond line\twith tab";
    let edit = htmx(client.get(app.url("/quote/edit")), &token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let saved = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", text), ("version", &version_in(&edit))])
        .send()
        .await
        .unwrap();
    assert_eq!(saved.status(), StatusCode::OK);
    assert!(saved.text().await.unwrap().contains(text));
    assert_eq!(
        stored(&app, "unicode@example.com").await.as_deref(),
        Some(text)
    );
}

#[tokio::test]
async fn signed_out_requests_are_sent_to_log_in() {
    let app = spawn_app().await;
    let hx = app
        .client
        .get(app.url("/quote/edit"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(hx.status(), StatusCode::OK);
    assert_eq!(hx.headers()["hx-redirect"], "/auth/login?next=%2F");
    let hx_put = app
        .client
        .put(app.url("/quote"))
        .header("HX-Request", "true")
        .form(&[("message", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(hx_put.headers()["hx-redirect"], "/auth/login?next=%2F");

    let plain = app
        .client
        .post(app.url("/quote"))
        .form(&[("message", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&plain), "/auth/login?next=%2F");
    let plain_delete = app
        .client
        .post(app.url("/quote/delete"))
        .form(&[("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(plain_delete.status(), StatusCode::SEE_OTHER);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM user_messages")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

#[tokio::test]
async fn state_changes_without_a_valid_csrf_token_are_forbidden() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "csrfq@example.com").await;
    htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", "Keep me.")])
        .send()
        .await
        .unwrap();
    let attempts = [
        client
            .post(app.url("/quote"))
            .form(&[("message", "no token")]),
        client
            .post(app.url("/quote"))
            .form(&[("message", "bad token"), ("csrf_token", "nope")]),
        client
            .put(app.url("/quote"))
            .header("HX-Request", "true")
            .header("X-CSRF-Token", "nope")
            .form(&[("message", "bad header")]),
        client
            .delete(app.url("/quote"))
            .header("HX-Request", "true"),
        client
            .post(app.url("/quote/delete"))
            .form(&[("csrf_token", "")]),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(
        stored(&app, "csrfq@example.com").await.as_deref(),
        Some("Keep me.")
    );
}

#[tokio::test]
async fn put_without_a_version_overwrites_but_the_first_quote_form_never_does() {
    let app = spawn_app().await;
    let (client, token) = signed_in(&app, "precondition@example.com").await;
    htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", "One.")])
        .send()
        .await
        .unwrap();
    // A second "first quote" form (another tab) must not replace it silently.
    let again = htmx(client.post(app.url("/quote")), &token)
        .form(&[("message", "Two.")])
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(
        stored(&app, "precondition@example.com").await.as_deref(),
        Some("One.")
    );
    // PUT with no version is a deliberate replace.
    let put = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Three.")])
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    assert_eq!(
        stored(&app, "precondition@example.com").await.as_deref(),
        Some("Three.")
    );
    // A version that is not one is a 400, not a silent overwrite.
    let bad = htmx(client.put(app.url("/quote")), &token)
        .form(&[("message", "Four."), ("version", "yesterday")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        stored(&app, "precondition@example.com").await.as_deref(),
        Some("Three.")
    );
}
