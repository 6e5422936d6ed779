//! What an operator sees: Prometheus metrics and one structured log line per request.
//!
//! Routes are labelled by their template (`/api/admin/sync/:id`), never the raw path, so label
//! cardinality stays bounded; unmatched paths share one label. User ids are logged as a short
//! hash: enough to follow one person's requests, useless to anyone reading the logs.

use std::{
    sync::{Arc, OnceLock},
    time::Instant,
};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response};
use sha2::{Digest, Sha256};

/// Where the matched route writes its template (set by [`named`], read by [`observe`]), so
/// the label is right even when the handler fails.
#[derive(Debug, Clone, Default)]
struct RouteTemplate(Arc<OnceLock<&'static str>>);

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
}

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (tests build many apps in one process).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Suffix("duration_seconds".into()),
                    &buckets,
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

/// Records the request metrics and writes the request's log line.
pub async fn observe<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let template = RouteTemplate::default();
    req.extensions_mut().insert(template.clone());
    let method = req.method().to_string();
    let request_id = req.header("x-request-id").unwrap_or("-").to_owned();
    let in_flight = metrics::gauge!(names::HTTP_REQUESTS_IN_FLIGHT);
    in_flight.increment(1.0);
    let result = next.call(req).await.map(IntoResponse::into_response);
    in_flight.decrement(1.0);

    let response = match result {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let route = template.0.get().copied().unwrap_or("unmatched");
    let status = response.status().as_u16();
    let latency = started.elapsed();
    metrics::counter!(names::HTTP_REQUESTS_TOTAL, "method" => method.clone(), "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!(names::HTTP_REQUEST_DURATION, "method" => method.clone(), "route" => route)
        .record(latency.as_secs_f64());
    let user = response
        .extensions()
        .get::<UserTag>()
        .map_or("-", |u| u.0.as_str());
    tracing::info!(
        method = %method,
        route,
        status,
        latency_ms = (latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        request_id = %request_id,
        user,
        "request"
    );
    Ok(response)
}
