//! `GET /metrics`: Prometheus text exposition.
//!
//! Never open by accident in production: with `METRICS_TOKEN` set it needs that bearer token;
//! without one it is open only in development. `METRICS_ADDR` serves it on a separate, private
//! listener instead (Fly scrapes a private port), where no token is asked.

use poem::{
    Request, Response, handler,
    http::{StatusCode, header},
    web::Data,
};
use sqlx::PgPool;
use subtle::ConstantTimeEq;

use crate::{
    config::Secret,
    error::AppError,
    observability::{self, names},
    startup::AppState,
    users::sync_runs,
};

#[handler]
pub async fn scrape(req: &Request, Data(state): Data<&AppState>) -> Result<Response, AppError> {
    let settings = &state.settings;
    let sent = req.header(header::AUTHORIZATION);
    match decide(
        settings.metrics.token.as_ref(),
        settings.is_production(),
        sent,
    ) {
        Access::Allowed => Ok(render(state).await),
        Access::Unauthorized => Err(AppError::Unauthorized),
        Access::Hidden => Err(AppError::NotFound(
            "There is nothing at this address.".into(),
        )),
    }
}

/// Who may read `/metrics` on the main port.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Allowed,
    Unauthorized,
    /// Production without a token: as if the route did not exist.
    Hidden,
}

fn decide(token: Option<&Secret>, production: bool, authorization: Option<&str>) -> Access {
    match token {
        Some(token) => {
            let sent = authorization
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            // Constant time: the comparison must not reveal how much of a guess was right.
            if bool::from(sent.as_bytes().ct_eq(token.expose().as_bytes())) {
                Access::Allowed
            } else {
                Access::Unauthorized
            }
        }
        None if production => Access::Hidden,
        None => Access::Allowed,
    }
}

/// The private listener's endpoint: no token (the address itself is the protection).
#[handler]
pub async fn private_metrics(Data(state): Data<&AppState>) -> Response {
    render(state).await
}

async fn render(state: &AppState) -> Response {
    if let Ok(active) = state.sessions.count_active().await {
        ::metrics::gauge!("sessions_active").set(active as f64);
    }
    render_pool(&state.db, state.settings.database.max_connections).await
}

/// The metrics of a process without the web app (`quotebook worker`): its pool and the sync.
#[derive(Clone)]
pub struct WorkerMetrics {
    pub db: PgPool,
    pub max_connections: u32,
}

/// `/metrics` of the worker's private listener: the sync's counters live in that process, so it
/// must be scraped too (Fly scrapes every Machine of every process group).
#[handler]
pub async fn worker_metrics(Data(worker): Data<&WorkerMetrics>) -> Response {
    render_pool(&worker.db, worker.max_connections).await
}

async fn render_pool(pool: &PgPool, max_connections: u32) -> Response {
    ::metrics::gauge!("db_pool_connections", "state" => "open").set(f64::from(pool.size()));
    ::metrics::gauge!("db_pool_connections", "state" => "idle").set(pool.num_idle() as f64);
    ::metrics::gauge!("db_pool_max_connections").set(f64::from(max_connections));
    if let Ok(Some(at)) = sync_runs::last_success(pool).await {
        ::metrics::gauge!(names::SYNC_LAST_SUCCESS).set(at.timestamp_millis() as f64 / 1000.0);
    }
    let body = observability::recorder()
        .map(|handle| handle.render())
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_without_a_token_hides_metrics_and_a_token_is_always_required_when_set() {
        let token = Secret::new("right-token");
        for production in [false, true] {
            let with = |sent| decide(Some(&token), production, sent);
            assert_eq!(with(None), Access::Unauthorized);
            assert_eq!(with(Some("Bearer wrong")), Access::Unauthorized);
            assert_eq!(
                with(Some("Bearer right-token-and-more")),
                Access::Unauthorized
            );
            assert_eq!(with(Some("right-token")), Access::Unauthorized, "no scheme");
            assert_eq!(with(Some("Bearer right-token")), Access::Allowed);
        }
        assert_eq!(decide(None, true, None), Access::Hidden);
        assert_eq!(decide(None, true, Some("Bearer anything")), Access::Hidden);
        assert_eq!(decide(None, false, None), Access::Allowed);
    }
}
