//! The emulator's HTML: the login page (pick a demo user or type any email), error pages and
//! the signed-out page. Plain forms, no scripts.

use maud::{DOCTYPE, Markup, html};
use poem::{IntoResponse, Response, http::StatusCode};

use super::users::User;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0}
main{max-width:28rem;margin:3rem auto;background:#fff;border-radius:.75rem;padding:2rem;box-shadow:0 2px 12px #0001}
h1{font-size:1.35rem;margin:0 0 .25rem}
p.note{color:#5b6475;font-size:.9rem;margin:.25rem 0 1.25rem}
.banner{background:#fff4d6;border:1px solid #f0d48a;border-radius:.5rem;padding:.5rem .75rem;font-size:.85rem;margin-bottom:1.25rem}
.error{background:#fde8e8;border:1px solid #f3b4b4;border-radius:.5rem;padding:.5rem .75rem;margin-bottom:1rem}
ul{list-style:none;padding:0;margin:0 0 1.5rem}
li form{margin:0 0 .5rem}
button{font:inherit;cursor:pointer;border-radius:.5rem;border:1px solid #c9ced8;background:#fff;padding:.6rem .9rem}
.user{width:100%;text-align:left;display:flex;justify-content:space-between;gap:.5rem}
.user:hover{border-color:#635dff}
.role{align-self:center;font-size:.75rem;background:#eceaff;color:#3f38d9;border-radius:1rem;padding:.1rem .5rem}
.muted{color:#5b6475;font-size:.85rem}
label{display:block;font-size:.9rem;margin:.75rem 0 .25rem}
input{font:inherit;width:100%;box-sizing:border-box;padding:.55rem;border:1px solid #c9ced8;border-radius:.5rem}
.primary{background:#635dff;border-color:#635dff;color:#fff;margin-top:1rem;width:100%}
.deny{margin-top:1.25rem;background:none;border:none;color:#5b6475;text-decoration:underline;padding:0}
";

fn shell(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Auth0 emulator" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
}

/// Headers every emulator page carries: never cached (they hold one-time request ids), never
/// framed, no scripts.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    let mut response = markup.into_response();
    response.set_status(status);
    let headers = response.headers_mut();
    headers.insert(
        "cache-control",
        poem::http::HeaderValue::from_static("no-store"),
    );
    headers.insert(
        "content-security-policy",
        poem::http::HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src https: data:; frame-ancestors 'none'",
        ),
    );
    response
}

/// What the login page shows for one pending `/authorize` request.
pub struct LoginView<'a> {
    pub request_id: &'a str,
    pub users: &'a [User],
    pub email: &'a str,
    pub name: &'a str,
    pub error: Option<&'a str>,
    /// `screen_hint=signup`: Universal Login opens on its sign-up screen.
    pub signup: bool,
}

pub fn login(view: &LoginView<'_>) -> Markup {
    let (title, note) = if view.signup {
        (
            "Create your account",
            "Sign up with any email address (or pick an existing demo user).",
        )
    } else {
        (
            "Sign in",
            "Choose a demo user or continue with any email address.",
        )
    };
    shell(
        title,
        html! {
            div.banner { "Auth0 emulator: development only. No passwords; pick anyone." }
            h1 { (title) }
            p.note { (note) }
            @if let Some(error) = view.error {
                div.error role="alert" { (error) }
            }
            @if !view.users.is_empty() {
                ul {
                    @for user in view.users {
                        li {
                            form method="post" action="/u/login" {
                                input type="hidden" name="request" value=(view.request_id);
                                input type="hidden" name="user_id" value=(user.user_id);
                                button.user type="submit" name="action" value="login" {
                                    span {
                                        strong { (user.name) } br;
                                        span.muted { (user.email) }
                                    }
                                    @for role in &user.roles {
                                        span.role { (role) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            form method="post" action="/u/login" {
                input type="hidden" name="request" value=(view.request_id);
                label for="email" { "Email" }
                input #email type="email" name="email" required autocomplete="email" value=(view.email);
                label for="name" { "Name " span.muted { "(optional, for new users)" } }
                input #name type="text" name="name" autocomplete="name" value=(view.name);
                button.primary type="submit" name="action" value="login" { "Continue" }
            }
            form method="post" action="/u/login" {
                input type="hidden" name="request" value=(view.request_id);
                button.deny type="submit" name="action" value="deny" { "Deny: go back without signing in" }
            }
        },
    )
}

pub fn error(title: &str, message: &str) -> Markup {
    shell(
        title,
        html! {
            div.banner { "Auth0 emulator" }
            h1 { (title) }
            div.error role="alert" { (message) }
            p.note { "Go back to the application and start again." }
        },
    )
}

pub fn signed_out() -> Markup {
    shell(
        "Signed out",
        html! {
            div.banner { "Auth0 emulator" }
            h1 { "You are signed out" }
            p.note { "You can close this tab." }
        },
    )
}
