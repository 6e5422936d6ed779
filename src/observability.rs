//! What an operator sees: Prometheus metrics and one structured log line per request.
//!
//! Routes are labelled by their template (`/api/admin/sync/:id`), never the raw path, so label
//! cardinality stays bounded; unmatched paths share one label. User ids are logged as a short
//! hash: enough to follow one person's requests, useless to anyone reading the logs.

use std::{
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};

/// Where the matched route writes its template (set by [`named`], read by [`observe`] and the
/// error renderer), so the label is right even when the handler fails.
#[derive(Debug, Clone, Default)]
pub struct RouteTemplate(Arc<OnceLock<&'static str>>);

impl RouteTemplate {
    /// The request's slot (empty outside [`observe`]).
    pub fn of(req: &Request) -> Self {
        req.extensions().get::<Self>().cloned().unwrap_or_default()
    }

    /// The template of the route that matched, or `unmatched` (none did, or none yet).
    pub fn get(&self) -> &'static str {
        self.0.get().copied().unwrap_or("unmatched")
    }
}

/// A short, stable, non-reversible tag for a user id (attached by the session middleware).
#[derive(Debug, Clone)]
pub struct UserTag(pub String);

impl UserTag {
    pub fn of(user_id: &str) -> Self {
        let digest = Sha256::digest(user_id.as_bytes());
        Self(digest.iter().take(6).map(|b| format!("{b:02x}")).collect())
    }
}

/// Wraps a route's endpoint so the request is labelled with the route template.
pub fn named<E>(template: &'static str, endpoint: E) -> impl Endpoint<Output = Response>
where
    E: Endpoint + 'static,
{
    endpoint
        .map_to_response()
        .before(move |req: Request| async move {
            if let Some(slot) = req.extensions().get::<RouteTemplate>() {
                let _ = slot.0.set(template);
            }
            // Every line logged from here on while serving the request carries its route.
            tracing::Span::current().record("route", template);
            Ok(req)
        })
}

/// Metric names written in more than one place (product code and tests read the same ones).
pub mod names {
    pub const HTTP_REQUESTS_TOTAL: &str = "http_requests_total";
    pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
    pub const HTTP_REQUESTS_IN_FLIGHT: &str = "http_requests_in_flight";
    /// Labels `mode` (`full`/`incremental`) and `outcome` (`succeeded`/`failed`).
    pub const SYNC_RUNS_TOTAL: &str = "sync_runs_total";
    pub const USERS_SYNCED_TOTAL: &str = "users_synced_total";
    /// Label `status`: the HTTP status code, or `error` when no response came back.
    pub const AUTH0_API_REQUESTS_TOTAL: &str = "auth0_api_requests_total";
    pub const SYNC_LAST_SUCCESS: &str = "sync_last_success_timestamp_seconds";
    /// Changes received from Auth0's streams, by `stream` (`events`, `logs`) and `type`
    /// (`user.created`, ..., a log event type code such as `s` or `sapi`, or `other`).
    pub const AUTH0_STREAM_EVENTS_TOTAL: &str = "auth0_stream_events_total";
    /// Redeliveries ignored (an `id` or `log_id` already received), by `stream`.
    pub const AUTH0_STREAM_DUPLICATES_TOTAL: &str = "auth0_stream_duplicates_total";
    /// Changes the worker finished, by `stream` and `outcome` (`applied`, `stale`, `deleted`,
    /// `unusable`, `failed`).
    pub const AUTH0_STREAM_CHANGES_TOTAL: &str = "auth0_stream_changes_total";
    /// From a change at Auth0 (the event's `time`, the log's `date`) to `users`, by `stream`.
    pub const AUTH0_STREAM_LAG: &str = "auth0_stream_lag_seconds";
    /// Log events that asked for a user refresh, by `coalesced` (`true`: one was waiting).
    pub const USER_REFRESH_REQUESTS_TOTAL: &str = "user_refresh_requests_total";
    /// User refreshes (`GET /api/v2/users/{id}`) done, by `outcome` (as the changes', and
    /// `retried`).
    pub const USER_REFRESHES_TOTAL: &str = "user_refreshes_total";
    /// Label `reason`: `blocked_or_deleted`, `backchannel_logout`, `other_devices`, `admin`.
    pub const SESSIONS_REVOKED_TOTAL: &str = "sessions_revoked_total";
    /// Label `outcome`: `ended` (a valid token, whether or not a session matched), `rejected`
    /// (a 400), `replayed` (a `jti` already seen, also a 400).
    pub const BACKCHANNEL_LOGOUTS_TOTAL: &str = "backchannel_logouts_total";
}

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (tests build many apps in one process).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            // Changes from Auth0 are waited for in seconds, not milliseconds.
            let lag_buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
                    &buckets,
                )
                .ok()?
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(names::AUTH0_STREAM_LAG.into()),
                    &lag_buckets,
                )
                .ok()?
                .install_recorder()
                .map_err(|err| tracing::warn!(error = %err, "metrics recorder not installed"))
                .ok()
                .inspect(|_| describe())
        })
        .as_ref()
}

/// HELP texts, and zero-valued sync series so `rate()` and `increase()` work before the first
/// run (a counter that appears only when it first moves hides that first increase).
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests by method, route template and status"
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "HTTP request latency by method and route template"
    );
    describe_gauge!(HTTP_REQUESTS_IN_FLIGHT, "HTTP requests being served");
    describe_counter!(
        SYNC_RUNS_TOTAL,
        "User sync runs finished, by mode and outcome"
    );
    describe_counter!(
        USERS_SYNCED_TOTAL,
        "Users written to the users table by the sync"
    );
    describe_counter!(
        AUTH0_API_REQUESTS_TOTAL,
        "Auth0 Management API responses by status (429 = rate limited; error = no response)"
    );
    describe_gauge!(
        SYNC_LAST_SUCCESS,
        Unit::Seconds,
        "UNIX time the last user sync succeeded"
    );
    for mode in ["full", "incremental"] {
        for outcome in ["succeeded", "failed"] {
            metrics::counter!(SYNC_RUNS_TOTAL, "mode" => mode, "outcome" => outcome).increment(0);
        }
    }
    metrics::counter!(USERS_SYNCED_TOTAL).increment(0);
    describe_counter!(
        AUTH0_STREAM_EVENTS_TOTAL,
        "User changes received from Auth0 Event Streams and Log Streams, by stream and type"
    );
    describe_counter!(
        AUTH0_STREAM_DUPLICATES_TOTAL,
        "Redelivered Auth0 stream events ignored (id or log_id seen before), by stream"
    );
    describe_counter!(
        AUTH0_STREAM_CHANGES_TOTAL,
        "Auth0 stream changes the worker finished, by stream and outcome"
    );
    describe_histogram!(
        AUTH0_STREAM_LAG,
        Unit::Seconds,
        "From a change at Auth0 to the users table, by stream"
    );
    describe_counter!(
        USER_REFRESH_REQUESTS_TOTAL,
        "Log events that asked for a user refresh, by whether one was already waiting"
    );
    describe_counter!(
        USER_REFRESHES_TOTAL,
        "User refreshes (GET /api/v2/users/{id}) done, by outcome"
    );
    for stream in ["events", "logs"] {
        metrics::counter!(AUTH0_STREAM_DUPLICATES_TOTAL, "stream" => stream).increment(0);
    }
    for coalesced in ["true", "false"] {
        metrics::counter!(USER_REFRESH_REQUESTS_TOTAL, "coalesced" => coalesced).increment(0);
    }
    describe_counter!(
        SESSIONS_REVOKED_TOTAL,
        "Sessions ended from outside their browser, by reason"
    );
    for reason in crate::auth::revocation::Reason::ALL {
        metrics::counter!(SESSIONS_REVOKED_TOTAL, "reason" => reason.as_str()).increment(0);
    }
    describe_counter!(
        BACKCHANNEL_LOGOUTS_TOTAL,
        "Back-channel logout requests received, by outcome"
    );
    for outcome in ["ended", "rejected", "replayed"] {
        metrics::counter!(BACKCHANNEL_LOGOUTS_TOTAL, "outcome" => outcome).increment(0);
    }
}

/// A change received from an Auth0 stream (`ty` from a closed set: see the metric), or a
/// redelivery of one.
pub fn stream_event_received(
    stream: crate::users::streams::Stream,
    ty: &'static str,
    duplicate: bool,
) {
    if duplicate {
        metrics::counter!(names::AUTH0_STREAM_DUPLICATES_TOTAL, "stream" => stream.as_str())
            .increment(1);
    } else {
        metrics::counter!(names::AUTH0_STREAM_EVENTS_TOTAL, "stream" => stream.as_str(), "type" => ty)
            .increment(1);
    }
}

/// Refreshes a Log Stream batch queued, and users of it whose refresh was already waiting.
pub fn user_refreshes_queued(queued: usize, coalesced: usize) {
    metrics::counter!(names::USER_REFRESH_REQUESTS_TOTAL, "coalesced" => "false")
        .increment(queued as u64);
    metrics::counter!(names::USER_REFRESH_REQUESTS_TOTAL, "coalesced" => "true")
        .increment(coalesced as u64);
}

/// The worker finished a change (`outcome` from a closed set); `occurred` holds when each
/// change it closed happened at Auth0, for the lag.
pub fn stream_change_applied(
    stream: crate::users::streams::Stream,
    outcome: &'static str,
    occurred: &[Option<chrono::DateTime<chrono::Utc>>],
) {
    let now = chrono::Utc::now();
    for at in occurred {
        metrics::counter!(names::AUTH0_STREAM_CHANGES_TOTAL, "stream" => stream.as_str(), "outcome" => outcome)
            .increment(1);
        if let Some(at) = at {
            let lag = (now - *at).num_milliseconds().max(0) as f64 / 1000.0;
            metrics::histogram!(names::AUTH0_STREAM_LAG, "stream" => stream.as_str()).record(lag);
        }
    }
}

/// A user refresh ended (`outcome` from a closed set).
pub fn user_refreshed(outcome: &'static str) {
    metrics::counter!(names::USER_REFRESHES_TOTAL, "outcome" => outcome).increment(1);
}

/// Sessions ended from outside their browser (`auth::revocation`).
pub fn sessions_revoked(reason: &'static str, ended: u64) {
    metrics::counter!(names::SESSIONS_REVOKED_TOTAL, "reason" => reason).increment(ended);
}

/// A back-channel logout request was answered (`auth::backchannel_logout`).
pub fn backchannel_logout(outcome: &'static str) {
    metrics::counter!(names::BACKCHANNEL_LOGOUTS_TOTAL, "outcome" => outcome).increment(1);
}

/// A sync run ended (`mode` is the mode it ran as: an incremental can turn into a full sync).
pub fn sync_run_finished(mode: &'static str, succeeded: bool, finished_at_unix: Option<f64>) {
    let outcome = if succeeded { "succeeded" } else { "failed" };
    metrics::counter!(names::SYNC_RUNS_TOTAL, "mode" => mode, "outcome" => outcome).increment(1);
    if let Some(at) = finished_at_unix.filter(|_| succeeded) {
        metrics::gauge!(names::SYNC_LAST_SUCCESS).set(at);
    }
}

/// One answer (or transport failure, `None`) from the Auth0 Management API or its export files.
pub fn auth0_api_response(status: Option<u16>) {
    // Status codes are a small closed set, so the label stays bounded.
    let status = status.map_or_else(|| "error".to_owned(), |code| code.to_string());
    metrics::counter!(names::AUTH0_API_REQUESTS_TOTAL, "status" => status).increment(1);
}

/// Records the request metrics and writes the request's log line. A request dropped before it
/// was answered is recorded too: after `request_timeout` as the 503 the timeout layer sends,
/// earlier as 499 (nginx's "client closed request": an HTTP/2 cancel, or the server's shutdown
/// grace running out; an HTTP/1 request runs to its end even when its client has gone).
pub async fn observe<E: Endpoint>(
    next: E,
    mut req: Request,
    request_timeout: Duration,
) -> poem::Result<Response> {
    let template = RouteTemplate::default();
    req.extensions_mut().insert(template.clone());
    let mut pending = Pending {
        started: Instant::now(),
        method: req.method().to_string(),
        request_id: req.header("x-request-id").unwrap_or("-").to_owned(),
        template,
        request_timeout,
        answered: false,
    };
    metrics::gauge!(names::HTTP_REQUESTS_IN_FLIGHT).increment(1.0);
    let response = match next.call(req).await {
        Ok(response) => response.into_response(),
        Err(err) => err.into_response(),
    };
    let user = response
        .extensions()
        .get::<UserTag>()
        .map_or("-", |u| u.0.as_str());
    pending.record(response.status().as_u16(), user);
    Ok(response)
}

/// A request being served, recorded once: when answered, or when dropped unanswered.
struct Pending {
    started: Instant,
    method: String,
    request_id: String,
    template: RouteTemplate,
    request_timeout: Duration,
    answered: bool,
}

impl Pending {
    fn record(&mut self, status: u16, user: &str) {
        self.answered = true;
        metrics::gauge!(names::HTTP_REQUESTS_IN_FLIGHT).decrement(1.0);
        let route = self.template.get();
        let method = self.method.clone();
        let latency = self.started.elapsed();
        metrics::counter!(names::HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route, "status" => status.to_string())
            .increment(1);
        metrics::histogram!(names::HTTP_REQUEST_DURATION, "method" => method, "route" => route)
            .record(latency.as_secs_f64());
        tracing::info!(
            method = %self.method,
            route,
            status,
            latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
            request_id = %self.request_id,
            user,
            "request"
        );
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let timed_out = self.started.elapsed() >= self.request_timeout;
        if timed_out {
            tracing::error!(
                method = %self.method,
                route = self.template.get(),
                request_id = %self.request_id,
                timeout_s = self.request_timeout.as_secs(),
                "request timed out (REQUEST_TIMEOUT_SECS)"
            );
        }
        self.record(if timed_out { 503 } else { 499 }, "-");
    }
}
