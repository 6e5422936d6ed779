//! Pages of the sign-in flow: failures that say what happened (in the provider's words when it
//! gave them) with a way forward, and the logout pages.

use maud::{Markup, html};
use poem::{IntoResponse, Response, http::StatusCode};

use crate::web::layout::{Shell, page};

/// The longest provider description shown; longer ones are cut (with an ellipsis).
const MAX_DESCRIPTION_CHARS: usize = 300;

/// A sign-in failure page.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub status: StatusCode,
    pub title: &'a str,
    pub message: &'a str,
    /// What the provider said (`error_description`), shown quoted.
    pub provider_said: Option<&'a str>,
    /// Where "Try again" leads; `None` where trying again cannot work.
    pub try_again: Option<String>,
}

pub fn failure(shell: &Shell, failure: Failure<'_>) -> Response {
    let said = failure.provider_said.and_then(shown_description);
    let body = html! {
        section.card.notice role="alert" {
            h1 { (failure.title) }
            p { (failure.message) }
            @if let Some(said) = &said {
                blockquote.provider-said { (said) }
            }
            p {
                @if let Some(href) = &failure.try_again {
                    a.button href=(href) { "Try again" } " "
                }
                a.button.secondary href="/" { "Home" }
            }
        }
    };
    let mut response = page(failure.title, shell, body).into_response();
    response.set_status(failure.status);
    response
}

/// A provider's free text as a person may read it: control characters gone, trimmed, cut to a
/// sane length. (maud escapes it.)
fn shown_description(raw: &str) -> Option<String> {
    let cleaned: String = raw
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return None;
    }
    let mut shown: String = cleaned.chars().take(MAX_DESCRIPTION_CHARS).collect();
    if cleaned.chars().count() > MAX_DESCRIPTION_CHARS {
        shown.push('…');
    }
    Some(shown)
}

/// "Try again" for a sign-in that was going to `next`.
pub fn login_link(next: &str) -> String {
    if next == "/" {
        "/auth/login".to_owned()
    } else {
        format!(
            "/auth/login?next={}",
            url::form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()
        )
    }
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

/// Signed out here; the provider may still remember the person, so offer to end that too.
pub fn signed_out(shell: &Shell) -> Markup {
    page(
        "Signed out",
        shell,
        html! {
            section.card {
                h1 { "You are signed out" }
                p { a.button href="/auth/login" { "Log in" } }
                form method="post" action="/auth/logout" {
                    p.muted { "On a shared computer, also end your session at the sign-in provider." }
                    button.secondary type="submit" { "Sign out of the sign-in provider" }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_are_cleaned_and_cut() {
        assert_eq!(shown_description("  \n "), None);
        assert_eq!(
            shown_description("Please\u{0}verify\n").as_deref(),
            Some("Please verify")
        );
        let long = "é".repeat(MAX_DESCRIPTION_CHARS + 10);
        let shown = shown_description(&long).unwrap();
        assert_eq!(shown.chars().count(), MAX_DESCRIPTION_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    #[test]
    fn try_again_keeps_the_destination() {
        assert_eq!(login_link("/"), "/auth/login");
        assert_eq!(
            login_link("/quote/edit"),
            "/auth/login?next=%2Fquote%2Fedit"
        );
    }
}
