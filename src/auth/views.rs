//! Pages of the sign-in flow: failures with a way forward, and the logout confirmation.

use maud::{Markup, html};
use poem::{IntoResponse, Response, http::StatusCode};

use crate::web::layout::{Shell, page};

/// A sign-in failure: what happened and a "Try again" button.
pub fn failure(shell: &Shell, status: StatusCode, title: &str, message: &str) -> Response {
    let body = html! {
        section.card.notice role="alert" {
            h1 { (title) }
            p { (message) }
            p { a.button href="/auth/login" { "Try again" } " " a.button.secondary href="/" { "Home" } }
        }
    };
    let mut response = page(title, shell, body).into_response();
    response.set_status(status);
    response
}

pub fn logout_confirm(shell: &Shell, csrf_token: &str) -> Markup {
    page(
        "Log out",
        shell,
        html! {
            section.card {
                h1 { "Log out?" }
                p { "You will be signed out of quotebook and of the sign-in provider." }
                form method="post" action="/auth/logout" {
                    input type="hidden" name="csrf_token" value=(csrf_token);
                    button type="submit" autofocus { "Log out" }
                }
            }
        },
    )
}

pub fn signed_out(shell: &Shell) -> Markup {
    page(
        "Signed out",
        shell,
        html! {
            section.card {
                h1 { "You are signed out" }
                p { a.button href="/auth/login" { "Log in" } }
            }
        },
    )
}
