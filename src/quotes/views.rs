//! The quote card in its three states (display, edit form, empty form) and the home page.
//!
//! Every fragment is the whole `#quote` card, swapped with `outerHTML`, so the headline follows
//! the state as in the seed guide. Forms post normally without JavaScript; htmx attributes
//! upgrade them to in-place requests.

use maud::{Markup, html};

use super::{queries::StoredQuote, quote::MAX_CHARS};
use crate::web::layout::{Shell, page};

/// What the edit form shows besides the text: the version it edits and any message.
#[derive(Debug, Default)]
pub struct FormState<'a> {
    pub text: &'a str,
    pub version: Option<String>,
    pub error: Option<String>,
    /// The newer text saved elsewhere, shown when a save hit a conflict.
    pub newer: Option<&'a str>,
}

pub fn home_signed_out(shell: &Shell) -> Markup {
    page(
        "Welcome",
        shell,
        html! {
            section.card.login-box {
                h1 { "Keep the words that move you" }
                p { "Log in to save your favourite quote and come back to it any time." }
                p { a.button href="/auth/login" { "Log in" } }
            }
        },
    )
}

pub fn home_signed_in(shell: &Shell, card: Markup) -> Markup {
    page(
        "Your quote",
        shell,
        html! {
            (card)
            div #status.status role="status" aria-live="polite" {}
            (crate::auth::devices::placeholder())
        },
    )
}

pub fn display(quote: &StoredQuote, csrf_token: &str) -> Markup {
    html! {
        section #quote.card hx-target="this" hx-swap="outerHTML" {
            h1 { "Your quote is wonderful..." }
            blockquote.quote { (quote.message) }
            p.muted {
                "Saved "
                time datetime=(quote.updated_at.to_rfc3339()) { (quote.updated_at.format("%Y-%m-%d %H:%M UTC")) }
            }
            div.actions {
                a.button href="/quote/edit" hx-get="/quote/edit" { "Edit" }
                form method="post" action="/quote/delete" hx-delete="/quote"
                    hx-confirm="Delete your quote? This cannot be undone." {
                    input type="hidden" name="csrf_token" value=(csrf_token);
                    button.danger type="submit" { "Delete" }
                }
            }
        }
    }
}

/// The form for a first quote (no version) or for editing one (with its version).
pub fn form(state: &FormState<'_>, csrf_token: &str) -> Markup {
    let editing = state.version.is_some() || state.newer.is_some();
    let headline = if editing {
        "Edit your quote"
    } else {
        "Save an inspiring quote for yourself..."
    };
    let error_id = "message-error";
    html! {
        section #quote.card hx-target="this" hx-swap="outerHTML" {
            h1 { (headline) }
            @if let Some(newer) = state.newer {
                div.notice role="alert" {
                    p { strong { "This quote was changed in another tab or device." } " The latest saved version is:" }
                    blockquote.quote { (newer) }
                    p { "Your text is kept below. Save again to replace the latest version with it, or cancel to keep the latest." }
                }
            }
            form method="post" action="/quote"
                hx-post=[(!editing).then_some("/quote")]
                hx-put=[editing.then_some("/quote")] {
                input type="hidden" name="csrf_token" value=(csrf_token);
                @if let Some(version) = &state.version {
                    input type="hidden" name="version" value=(version);
                }
                label for="message" { "Your quote" }
                textarea #message name="message" rows="4" autofocus
                    aria-invalid=[state.error.as_ref().map(|_| "true")]
                    aria-describedby=[state.error.as_ref().map(|_| error_id)] { (state.text) }
                @if let Some(error) = &state.error {
                    p.field-error id=(error_id) { (error) }
                } @else {
                    p.counter { "Up to " (MAX_CHARS) " characters." }
                }
                div.actions {
                    button type="submit" { "Save" }
                    @if editing {
                        a.button.secondary href="/" hx-get="/quote" { "Cancel" }
                    }
                }
            }
        }
    }
}

/// An out-of-band update of the status region, announced by screen readers.
pub fn status(message: &str) -> Markup {
    html! {
        div #status.status role="status" aria-live="polite" hx-swap-oob="true" { (message) }
    }
}
