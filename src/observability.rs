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
        })
        .as_ref()
}

/// Records the request metrics and writes the request's log line.
pub async fn observe<E: Endpoint>(next: E, mut req: Request) -> poem::Result<Response> {
    let started = Instant::now();
    let template = RouteTemplate::default();
    req.extensions_mut().insert(template.clone());
    let method = req.method().to_string();
    let request_id = req.header("x-request-id").unwrap_or("-").to_owned();
    let in_flight = metrics::gauge!("http_requests_in_flight");
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
    metrics::counter!("http_requests_total", "method" => method.clone(), "route" => route, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "method" => method.clone(), "route" => route)
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
