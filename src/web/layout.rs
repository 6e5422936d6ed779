//! The page shell every full page shares, and the simple message pages (404, errors).

use maud::{DOCTYPE, Markup, html};

/// htmx 2 configuration: swap 422 (validation) and 409 (conflict) fragments; other 4xx/5xx are
/// not swapped (the card and what was typed in it stay) and `assets/htmx-errors.js` shows their
/// message in `#request-error`. Requests give up after 20 s, past the server's default
/// `REQUEST_TIMEOUT_SECS` (15 s, answered with a 503 of its own). History restores are full-page
/// loads; no inline styles (CSP) and no eval.
const HTMX_CONFIG: &str = r#"{"responseHandling":[{"code":"204","swap":false},{"code":"[23]..","swap":true},{"code":"422","swap":true},{"code":"409","swap":true},{"code":"[45]..","swap":false,"error":true}],"timeout":20000,"historyRestoreAsHxRequest":false,"includeIndicatorStyles":false,"allowEval":false,"allowScriptTags":false}"#;

/// Who is looking at the page, as the header shows it.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    pub name: String,
    pub is_admin: bool,
}

/// What the shell needs besides the body: the CSRF token and the signed-in person, if any.
#[derive(Debug, Clone, Default)]
pub struct Shell {
    pub csrf_token: Option<String>,
    pub viewer: Option<Viewer>,
}

pub fn page(title: &str, shell: &Shell, body: Markup) -> Markup {
    let hx_headers = shell
        .csrf_token
        .as_deref()
        .map(|token| serde_json::json!({ "X-CSRF-Token": token }).to_string());
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · quotebook" }
                meta name="htmx-config" content=(HTMX_CONFIG);
                @if let Some(token) = &shell.csrf_token {
                    meta name="csrf-token" content=(token);
                }
                link rel="icon" href=(super::assets::url("favicon.svg"));
                link rel="stylesheet" href=(super::assets::url("app.css"));
                script src=(super::assets::url("htmx.min.js")) defer {}
                script src=(super::assets::url("htmx-errors.js")) defer {}
            }
            body hx-headers=[hx_headers] {
                a.skip-link href="#main" { "Skip to content" }
                header.site-header {
                    a.brand href="/" { "quotebook" }
                    nav aria-label="Account" {
                        @if let Some(viewer) = &shell.viewer {
                            span.welcome { "Welcome, " (viewer.name) "!" }
                            @if viewer.is_admin {
                                a.button.secondary href="/admin" { "Admin" }
                            }
                            form method="post" action="/auth/logout" hx-boost="false" {
                                @if let Some(token) = &shell.csrf_token {
                                    input type="hidden" name="csrf_token" value=(token);
                                }
                                button.button.secondary type="submit" { "Log out" }
                            }
                        } @else {
                            a.button.secondary href="/auth/login?screen_hint=signup" { "Sign up" }
                            a.button href="/auth/login" { "Log in" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    // Failed htmx requests are announced here (assets/htmx-errors.js).
                    div #request-error.request-error role="alert" {}
                    (body)
                }
            }
        }
    }
}

/// A full page for an error or notice, with an optional action link.
pub fn message_page(
    shell: &Shell,
    title: &str,
    message: &str,
    action: Option<(&str, &str)>,
) -> Markup {
    page(title, shell, message_fragment(title, message, action, None))
}

/// The body of a message page; also sent alone to htmx.
pub fn message_fragment(
    title: &str,
    message: &str,
    action: Option<(&str, &str)>,
    request_id: Option<&str>,
) -> Markup {
    html! {
        section.card.notice role="alert" {
            h1 { (title) }
            p { (message) }
            @if let Some((href, label)) = action {
                p { a.button href=(href) { (label) } }
            }
            @if let Some(id) = request_id {
                p.muted { "Request id: " code { (id) } }
            }
        }
    }
}
