//! Real-browser scenarios (headless Chromium through chromedriver) against the real app and the
//! emulator. A failing scenario leaves a screenshot in `target/browser-screenshots/`.
//! Under `CI=true` a missing browser fails the run; locally the test says how to install it.

use std::path::PathBuf;

use crate::{
    helpers::{TestApp, signed_in_at, spawn_app, spawn_app_with, spawn_app_with_worker},
    webdriver::{Browser, Result, find_browser},
};

/// The browser, or `None` (with instructions) when it is missing outside CI.
async fn browser() -> Option<Browser> {
    if let Err(missing) = find_browser() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{missing}");
        }
        eprintln!("skipping browser test: {missing}");
        return None;
    }
    Some(
        Browser::start()
            .await
            .unwrap_or_else(|err| panic!("browser did not start: {err}")),
    )
}

fn screenshot_path(scenario: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target
        .join("browser-screenshots")
        .join(format!("{scenario}.png"))
}

async fn fail_with_screenshot(browser: &Browser, scenario: &str, err: String) -> ! {
    let path = screenshot_path(scenario);
    let saved = browser.screenshot(&path).await;
    let source = browser.source().await.unwrap_or_default();
    panic!(
        "{scenario}: {err}\nscreenshot: {} ({saved:?})\npage source:\n{}",
        path.display(),
        &source[..source.len().min(4000)]
    );
}

/// With `QUOTEBOOK_SCREENSHOTS=dir`, keeps a picture of each step (used for the README).
async fn snapshot(browser: &Browser, step: &str) -> Result<()> {
    match std::env::var_os("QUOTEBOOK_SCREENSHOTS") {
        Some(dir) => {
            browser
                .screenshot(&PathBuf::from(dir).join(format!("{step}.png")))
                .await
        }
        None => Ok(()),
    }
}

/// Clicks "Log in", signs in on the emulator's page as `email`, lands back on the app.
async fn log_in(browser: &Browser, app: &TestApp, email: &str) -> Result<()> {
    browser.goto(&app.url("/")).await?;
    let login = browser
        .wait_for("header a.button[href='/auth/login']")
        .await?;
    browser.click(&login).await?;
    let email_box = browser.wait_for("input[name='email']").await?;
    browser.type_text(&email_box, email).await?;
    let continue_button = browser.find("button.primary").await?;
    browser.click(&continue_button).await?;
    browser.wait_for(".welcome").await?;
    let url = browser.current_url().await?;
    if !url.starts_with(&app.address) {
        return Err(format!("expected to be back on the app, at {url}"));
    }
    Ok(())
}

async fn quote_scenario(browser: &Browser, app: &TestApp) -> Result<()> {
    log_in(browser, app, "browser@example.com").await?;
    // Survives only as long as no full page load happens.
    browser
        .execute("window.__quotebookMarker = 42; return true;")
        .await?;
    let still_same_page = "return window.__quotebookMarker === 42;";

    let textarea = browser.wait_for("textarea#message").await?;
    browser
        .type_text(&textarea, "The best way out is always through.")
        .await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    let quote = browser.wait_for("#quote blockquote.quote").await?;
    let text = browser.text(&quote).await?;
    if text != "The best way out is always through." {
        return Err(format!("saved quote shows {text:?}"));
    }
    browser
        .wait_until(
            "the saved status",
            "return document.querySelector('#status').textContent.includes('saved');",
        )
        .await?;
    browser
        .wait_until("no full page load after save", still_same_page)
        .await?;
    snapshot(browser, "saved").await?;

    // Edit in place: the form replaces the card and the textarea takes focus.
    browser
        .click(&browser.find("#quote a.button[href='/quote/edit']").await?)
        .await?;
    let textarea = browser.wait_for("#quote textarea#message").await?;
    browser
        .wait_until(
            "focus on the textarea",
            "return document.activeElement && document.activeElement.id === 'message';",
        )
        .await?;
    // An inline validation error: empty text.
    browser.clear(&textarea).await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    let error = browser.wait_for("#quote .field-error").await?;
    let message = browser.text(&error).await?;
    if !message.contains("Write a quote first.") {
        return Err(format!("validation message was {message:?}"));
    }
    browser
        .wait_until("no full page load after 422", still_same_page)
        .await?;
    snapshot(browser, "validation").await?;

    // Cancel restores the saved quote.
    browser
        .click(&browser.find("#quote a.button.secondary").await?)
        .await?;
    let quote = browser.wait_for("#quote blockquote.quote").await?;
    if browser.text(&quote).await? != "The best way out is always through." {
        return Err("cancel did not restore the saved quote".into());
    }

    // Edit and save a new text.
    browser
        .click(&browser.find("#quote a.button[href='/quote/edit']").await?)
        .await?;
    let textarea = browser.wait_for("#quote textarea#message").await?;
    browser.clear(&textarea).await?;
    browser
        .type_text(&textarea, "Edited in the browser ✨")
        .await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    browser
        .wait_until(
            "the edited quote",
            "const q = document.querySelector('#quote blockquote.quote'); return !!q && q.textContent === 'Edited in the browser ✨';",
        )
        .await?;

    // Delete asks for confirmation, then swaps in the empty form.
    browser
        .click(&browser.find("#quote button.danger").await?)
        .await?;
    browser.accept_alert().await?;
    browser.wait_for("#quote textarea#message").await?;
    browser
        .wait_until("no full page load after delete", still_same_page)
        .await?;
    let stored: Option<String> = sqlx::query_scalar("SELECT message FROM user_messages")
        .fetch_optional(&app.db)
        .await
        .map_err(|e| e.to_string())?;
    if stored.is_some() {
        return Err(format!("the quote is still stored: {stored:?}"));
    }

    // Log out: through the provider and back, signed out.
    browser
        .click(
            &browser
                .find("header form[action='/auth/logout'] button")
                .await?,
        )
        .await?;
    browser
        .wait_for("header a.button[href='/auth/login']")
        .await?;
    let url = browser.current_url().await?;
    if !url.starts_with(&app.address) {
        return Err(format!("logout should return to the app, at {url}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_saves_edits_cancels_and_deletes_a_quote_in_place() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    if let Err(err) = quote_scenario(&browser, &app).await {
        fail_with_screenshot(&browser, "quote", err).await;
    }
}

async fn admin_sync_scenario(browser: &Browser, app: &TestApp) -> Result<()> {
    // The emulator's first demo user is an admin (roles claim).
    log_in(browser, app, "admin@example.com").await?;
    browser
        .click(&browser.wait_for("header a[href='/admin']").await?)
        .await?;
    browser.wait_for("#users table").await?;
    browser
        .execute("window.__quotebookMarker = 7; return true;")
        .await?;
    browser
        .click(&browser.find("button[name='mode'][value='full']").await?)
        .await?;
    browser.wait_for("#progress .sync-progress").await?;
    snapshot(browser, "admin-progress").await?;
    browser
        .wait_until(
            "the progress bar to reach done",
            "const p = document.querySelector('#progress .sync-progress'); \
             return !!p && p.dataset.status === 'succeeded' && !p.hasAttribute('hx-get');",
        )
        .await?;
    // The runs table refreshed itself when the run ended (HX-Trigger: sync-finished).
    browser
        .wait_until(
            "the runs table to show the finished run",
            "return document.querySelector('#runs').textContent.includes('succeeded');",
        )
        .await?;
    browser
        .wait_until(
            "no full page load",
            "return window.__quotebookMarker === 7;",
        )
        .await?;
    // Search as you type filters the synced users.
    let search = browser.find("#user-search").await?;
    browser.type_text(&search, "admin@").await?;
    browser
        .wait_until(
            "the filtered users table",
            "const t = document.querySelector('#users'); \
             return !!t && t.textContent.includes('1 user matching') && t.textContent.includes('admin@example.com');",
        )
        .await?;
    snapshot(browser, "admin-done").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_syncs_now_and_watches_the_progress_bar_finish() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app_with_worker(&[("AUTH0_EMULATOR_USERS", "40")]).await;
    if let Err(err) = admin_sync_scenario(&browser, &app).await {
        fail_with_screenshot(&browser, "admin-sync", err).await;
    }
}

async fn back_button_scenario(browser: &Browser, app: &TestApp) -> Result<()> {
    const SECRET: &str = "Nobody else may read this.";
    log_in(browser, app, "back-button@example.com").await?;
    let textarea = browser.wait_for("textarea#message").await?;
    browser.type_text(&textarea, SECRET).await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    browser.wait_for("#quote blockquote.quote").await?;
    // A full page that shows the quote (the edit page, as without JavaScript): the history
    // entry Back will return to. (Log out returns to `/`, which the browser fetches anew.)
    browser.goto(&app.url("/quote/edit")).await?;
    browser
        .wait_until(
            "the edit page with the quote",
            &format!(
                "const t = document.querySelector('textarea#message'); return !!t && t.value === {SECRET:?};"
            ),
        )
        .await?;

    browser
        .click(
            &browser
                .find("header form[action='/auth/logout'] button")
                .await?,
        )
        .await?;
    browser
        .wait_for("header a.button[href='/auth/login']")
        .await?;
    browser
        .execute("window.__quotebookLeft = true; return true;")
        .await?;

    // On a shared computer, the next person presses Back.
    browser.back().await?;
    browser
        .wait_until(
            "the previous page to load",
            "return !window.__quotebookLeft && document.readyState === 'complete';",
        )
        .await?;
    let shown = browser
        .execute(&format!(
            "const t = document.querySelector('textarea#message'); \
             return {{ field: !!t && t.value.includes({SECRET:?}), \
                      text: document.body.innerText.includes({SECRET:?}), url: location.href }};"
        ))
        .await?;
    if shown["field"] != false || shown["text"] != false {
        return Err(format!(
            "Back after logout showed the private page: {shown}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_logout_the_back_button_shows_no_quote() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    if let Err(err) = back_button_scenario(&browser, &app).await {
        fail_with_screenshot(&browser, "back-button", err).await;
    }
}

async fn other_host_scenario(browser: &Browser, app: &TestApp, canonical: &str) -> Result<()> {
    // The person types 127.0.0.1 while the app lives at localhost.
    browser.goto(&app.url("/")).await?;
    let login = browser
        .wait_for("header a.button[href='/auth/login']")
        .await?;
    browser.click(&login).await?;
    let email_box = browser.wait_for("input[name='email']").await?;
    browser
        .type_text(&email_box, "other-host@example.com")
        .await?;
    browser
        .click(&browser.find("button.primary").await?)
        .await?;
    browser
        .wait_for(".welcome")
        .await
        .map_err(|err| format!("not signed in after the provider sent the browser back: {err}"))?;
    let url = browser.current_url().await?;
    if !url.starts_with(canonical) {
        return Err(format!(
            "expected the canonical origin {canonical}, at {url}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_started_on_another_host_finishes_on_the_canonical_one() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app_with(&[("APP_BASE_URL", "http://localhost:0")]).await;
    let port = app
        .address
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let canonical = format!("http://localhost:{port}");
    if let Err(err) = other_host_scenario(&browser, &app, &canonical).await {
        fail_with_screenshot(&browser, "other-host", err).await;
    }
}

/// Submits the emulator's login form open in the current tab as `email`.
async fn continue_as(browser: &Browser, email: &str) -> Result<()> {
    let email_box = browser.wait_for("input[name='email']").await?;
    browser.type_text(&email_box, email).await?;
    browser.click(&browser.find("button.primary").await?).await
}

async fn two_tabs_scenario(browser: &Browser, app: &TestApp) -> Result<()> {
    let first = browser.current_tab().await?;
    browser.goto(&app.url("/auth/login?next=%2F")).await?;
    browser.wait_for("input[name='email']").await?;
    let second = browser.new_tab().await?;
    browser.switch_to(&second).await?;
    browser
        .goto(&app.url("/auth/login?next=%2Fquote%2Fedit"))
        .await?;
    browser.wait_for("input[name='email']").await?;

    browser.switch_to(&first).await?;
    continue_as(browser, "two-tabs@example.com").await?;
    browser.wait_for(".welcome").await?;
    browser.switch_to(&second).await?;
    continue_as(browser, "two-tabs@example.com").await?;
    browser
        .wait_for(".welcome")
        .await
        .map_err(|err| format!("the second tab's sign-in failed: {err}"))?;
    let url = browser.current_url().await?;
    if url != app.url("/quote/edit") {
        return Err(format!(
            "the second tab should land on its own next, at {url}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_sign_in_at_once_and_each_lands_on_its_own_page() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    if let Err(err) = two_tabs_scenario(&browser, &app).await {
        fail_with_screenshot(&browser, "two-tabs", err).await;
    }
}

/// The text in the alert region once it says something containing `expected`.
async fn wait_for_request_error(browser: &Browser, what: &str, expected: &str) -> Result<()> {
    let script = format!(
        "const r = document.querySelector('#request-error'); \
         return !!r && r.getAttribute('role') === 'alert' && r.textContent.includes({});",
        serde_json::to_string(expected).map_err(|e| e.to_string())?
    );
    browser.wait_until(what, &script).await
}

async fn typed_text_kept(browser: &Browser, expected_len: usize) -> Result<()> {
    let len = browser
        .execute("return document.querySelector('#quote textarea#message').value.length;")
        .await?;
    if len != serde_json::json!(expected_len) {
        return Err(format!(
            "the form lost what was typed: {len} characters, expected {expected_len}"
        ));
    }
    Ok(())
}

async fn failing_requests_scenario(browser: &Browser, app: TestApp) -> Result<()> {
    log_in(browser, &app, "errors@example.com").await?;
    browser
        .execute("window.__quotebookMarker = 16; return true;")
        .await?;
    let textarea = browser.wait_for("#quote textarea#message").await?;
    let typed = "Words worth keeping, even when the form has gone stale.";
    browser.type_text(&textarea, typed).await?;

    // 403: the session's CSRF token changed since the page was loaded (an expired form).
    sqlx::query(
        "UPDATE sessions SET data = jsonb_set(data, '{data,csrf_token}', to_jsonb('\"expired\"'::text))",
    )
    .execute(&app.db)
    .await
    .map_err(|e| e.to_string())?;
    // Sessions read in the last second are served from memory.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    wait_for_request_error(browser, "the expired-form message", "has expired").await?;
    wait_for_request_error(browser, "the reassurance", "What you typed is still here").await?;
    typed_text_kept(browser, typed.len()).await?;
    snapshot(browser, "error-403").await?;
    // Reloading gives a fresh token; the save then works and clears nothing it should keep.
    browser.goto(&app.url("/")).await?;
    browser
        .execute("window.__quotebookMarker = 16; return true;")
        .await?;

    // 413: a paste larger than BODY_LIMIT_BYTES.
    browser.wait_for("#quote textarea#message").await?;
    browser
        .execute("document.querySelector('#quote textarea#message').value = 'a'.repeat(70000); return true;")
        .await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    wait_for_request_error(browser, "the too-large message", "too large").await?;
    typed_text_kept(browser, 70_000).await?;
    snapshot(browser, "error-413").await?;

    // A success from the same card clears the message.
    let textarea = browser.find("#quote textarea#message").await?;
    browser.clear(&textarea).await?;
    browser.type_text(&textarea, "Short and saved.").await?;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    browser.wait_for("#quote blockquote.quote").await?;
    browser
        .wait_until(
            "the alert region to clear",
            "return document.querySelector('#request-error').textContent === '';",
        )
        .await?;

    // No answer at all: the server is gone.
    browser
        .click(&browser.find("#quote a.button[href='/quote/edit']").await?)
        .await?;
    let textarea = browser.wait_for("#quote textarea#message").await?;
    browser.clear(&textarea).await?;
    let unsent = "Typed while the server was down.";
    browser.type_text(&textarea, unsent).await?;
    app.stop().await;
    browser
        .click(&browser.find("#quote button[type='submit']").await?)
        .await?;
    wait_for_request_error(browser, "the no-answer message", "could not be reached").await?;
    typed_text_kept(browser, unsent.len()).await?;
    browser
        .wait_until(
            "no full page load through it all",
            "return window.__quotebookMarker === 16;",
        )
        .await?;
    snapshot(browser, "error-no-answer").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_sees_every_failed_request_and_keeps_what_they_typed() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    if let Err(err) = failing_requests_scenario(&browser, app).await {
        fail_with_screenshot(&browser, "failed-requests", err).await;
    }
}

async fn other_devices_scenario(browser: &Browser, app: &TestApp) -> Result<()> {
    let phone = app.signed_in_client("many-devices@example.com").await;
    log_in(browser, app, "many-devices@example.com").await?;
    // The line arrives after the page (htmx, on load).
    browser
        .wait_until(
            "the devices line",
            "return (document.querySelector('#devices') || {}).textContent \
             && document.querySelector('#devices').textContent.includes('Signed in on 2 devices.');",
        )
        .await?;
    browser
        .execute("window.__quotebookMarker = 7; return true;")
        .await?;
    let button = browser.find("#devices button[type='submit']").await?;
    browser.click(&button).await?;
    browser
        .wait_until(
            "the others signed out",
            "return document.querySelector('#devices').textContent.includes('Signed out of 1 other device.');",
        )
        .await?;
    browser
        .wait_until(
            "no full page load",
            "return window.__quotebookMarker === 7;",
        )
        .await?;
    if signed_in_at(&app.address, &phone).await {
        return Err("the phone is still signed in".into());
    }
    browser.goto(&app.url("/")).await?;
    browser.wait_for(".welcome").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_signs_out_their_other_devices_from_the_signed_in_page() {
    let Some(browser) = browser().await else {
        return;
    };
    let app = spawn_app().await;
    if let Err(err) = other_devices_scenario(&browser, &app).await {
        fail_with_screenshot(&browser, "other-devices", err).await;
    }
}
