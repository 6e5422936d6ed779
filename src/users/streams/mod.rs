//! Changes Auth0 pushes (issue 17): a user created, updated, blocked or deleted at Auth0 reaches
//! the `users` row in seconds, not at the next scheduled sync (which stays as the reconciler).
//!
//! Two feeds, either or both:
//! - **Event Streams** (`POST /webhooks/auth0/events`, [`event_stream`]): CloudEvents
//!   `user.created`, `user.updated`, `user.deleted` carrying the whole profile in
//!   `data.object`; applied without a Management API call.
//! - **Log Streams** (`POST /webhooks/auth0/logs`, [`log_stream`]), for tenants without Event
//!   Streams: batches of tenant log events; those that can change a user ([`log_events`]) queue
//!   a refresh of that user (`GET /api/v2/users/{id}`), coalesced per user.
//!
//! The web tier only authenticates, parses and, in one transaction, records each change in
//! `auth0_stream_events` (a redelivered `id` or `log_id` changes nothing) and queues an apalis
//! job ([`queue`]); it answers 2xx once that is committed, as Auth0 asks
//! (auth0.com/docs/customize/events/events-best-practices). The worker ([`worker`]) applies
//! the change ([`apply`]): an older profile never replaces a newer one (`updated_at`), an older
//! one never brings a deleted user back, and a user found blocked or deleted loses every
//! session (`auth::revocation`). The admin page reads [`status`].

pub mod apply;
pub mod event_stream;
pub mod log_events;
pub mod log_stream;
pub mod queue;
pub mod status;
pub mod webhook;
pub mod worker;

use poem::{Route, post};

use crate::{observability::named, web::body_limit::OwnBodyLimit};

/// The webhook routes' body limits. Each delivery is read only after its token checks out.
///
/// - Event Streams send one event per request: the profile in `data.object` (and, on updates,
///   `data.previous_object`). Auth0 limits a user profile to 10 KB and returns at most 1 MB of
///   an older oversized one (auth0.com/docs/manage-users/user-accounts/metadata/metadata-fields-data),
///   so 1 MiB holds any event a tenant can produce within its limits fifty times over.
/// - Log Streams batch log events with no documented maximum per request; a log event is a few
///   KB, a `sapi` one carries its Management API request and response bodies (a profile each,
///   within the same 10 KB), and Auth0 hands logs out 100 at a time elsewhere (the Management
///   API's log pages). 4 MiB holds a hundred of the largest with room to spare.
pub const BODY_LIMITS: &[OwnBodyLimit] = &[
    OwnBodyLimit {
        path: event_stream::PATH,
        limit: event_stream::BODY_LIMIT,
    },
    OwnBodyLimit {
        path: log_stream::PATH,
        limit: log_stream::BODY_LIMIT,
    },
];

/// `/webhooks/*`: the deliveries of Auth0's Event Streams and Log Streams.
pub fn routes() -> Route {
    Route::new()
        .at(
            "/auth0/events",
            named(event_stream::PATH, post(event_stream::receive)),
        )
        .at(
            "/auth0/logs",
            named(log_stream::PATH, post(log_stream::receive)),
        )
}

/// Which feed a change came from: the `stream` column of `auth0_stream_events` and the
/// `stream` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Stream {
    Events,
    Logs,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Logs => "logs",
        }
    }
}
