//! A person's own sessions (issue 17, item 5): "Signed in on 3 devices. Sign out the others."

use reqwest::StatusCode;

use crate::helpers::{csrf_token, location, signed_in_at, spawn_app};

#[tokio::test]
async fn signed_in_on_three_devices_a_person_signs_out_the_others() {
    let app = spawn_app().await;
    let laptop = app.signed_in_client("three@example.com").await;
    let phone = app.signed_in_client("three@example.com").await;
    let tablet = app.signed_in_client("three@example.com").await;
    let someone_else = [
        app.signed_in_client("other@example.com").await,
        app.signed_in_client("other@example.com").await,
    ];

    // The home page loads the line after itself (htmx), so the page costs what it did.
    let home = laptop.get(app.url("/")).send().await.unwrap();
    let html = home.text().await.unwrap();
    assert!(html.contains(r#"hx-get="/auth/sessions""#), "{html}");
    assert!(
        html.contains(r#"href="/auth/sessions""#),
        "a link without JavaScript"
    );
    let token = csrf_token(&html).unwrap();

    let line = laptop
        .get(app.url("/auth/sessions"))
        .header("HX-Request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(line.status(), StatusCode::OK);
    assert_eq!(line.headers()["cache-control"], "no-store");
    assert!(
        line.headers()
            .get_all("vary")
            .iter()
            .any(|v| v.to_str().unwrap().contains("HX-Request"))
    );
    let fragment = line.text().await.unwrap();
    assert!(fragment.contains("Signed in on 3 devices."), "{fragment}");
    assert!(fragment.contains("Sign out the others"), "{fragment}");
    assert!(!fragment.contains("<html"), "a fragment");

    // Without the CSRF token: refused, nobody signed out.
    let forged = laptop
        .post(app.url("/auth/sessions/others"))
        .header("HX-Request", "true")
        .form(&[("csrf_token", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    for device in [&laptop, &phone, &tablet] {
        assert!(signed_in_at(&app.address, device).await);
    }

    let done = laptop
        .post(app.url("/auth/sessions/others"))
        .header("HX-Request", "true")
        .header("X-CSRF-Token", &token)
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let fragment = done.text().await.unwrap();
    assert!(
        fragment.contains("Signed out of 2 other devices."),
        "{fragment}"
    );
    assert!(
        fragment.contains("Signed in on this device only."),
        "{fragment}"
    );

    assert!(signed_in_at(&app.address, &laptop).await, "this one stays");
    assert!(!signed_in_at(&app.address, &phone).await, "at once");
    assert!(!signed_in_at(&app.address, &tablet).await);
    for device in &someone_else {
        assert!(signed_in_at(&app.address, device).await, "nobody else's");
    }
}

#[tokio::test]
async fn without_javascript_the_sessions_page_does_the_same() {
    let app = spawn_app().await;
    let desk = app.signed_in_client("plain@example.com").await;
    let other = app.signed_in_client("plain@example.com").await;
    let page = desk.get(app.url("/auth/sessions")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("<html"), "a whole page");
    assert!(html.contains("Signed in on 2 devices."), "{html}");
    let token = csrf_token(&html).unwrap();
    let done = desk
        .post(app.url("/auth/sessions/others"))
        .form(&[("csrf_token", token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&done), "/auth/sessions");
    let html = desk
        .get(app.url("/auth/sessions"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Signed in on this device only."), "{html}");
    assert!(!signed_in_at(&app.address, &other).await);

    // Signed out: sent to sign in, as every private page.
    let stranger = crate::helpers::client();
    let page = stranger
        .get(app.url("/auth/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    let post = stranger
        .post(app.url("/auth/sessions/others"))
        .form(&[("csrf_token", "x")])
        .send()
        .await
        .unwrap();
    assert!(post.status().is_client_error() || post.status() == StatusCode::SEE_OTHER);
}
