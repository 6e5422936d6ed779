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
use subtle::ConstantTimeEq;

use crate::{error::AppError, observability, startup::AppState};

#[handler]
pub async fn scrape(req: &Request, Data(state): Data<&AppState>) -> Result<Response, AppError> {
    let settings = &state.settings;
    match &settings.metrics.token {
        Some(token) => {
            let sent = req
                .header(header::AUTHORIZATION)
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            if !bool::from(sent.as_bytes().ct_eq(token.expose().as_bytes())) {
                return Err(AppError::Unauthorized);
            }
        }
        None if settings.is_production() => {
            return Err(AppError::NotFound(
                "There is nothing at this address.".into(),
            ));
        }
        None => {}
    }
    Ok(render(state).await)
}

/// The private listener's endpoint: no token (the address itself is the protection).
#[handler]
pub async fn private_metrics(Data(state): Data<&AppState>) -> Response {
    render(state).await
}

async fn render(state: &AppState) -> Response {
    let pool = &state.db;
    ::metrics::gauge!("db_pool_connections", "state" => "open").set(f64::from(pool.size()));
    ::metrics::gauge!("db_pool_connections", "state" => "idle").set(pool.num_idle() as f64);
    ::metrics::gauge!("db_pool_max_connections")
        .set(f64::from(state.settings.database.max_connections));
    if let Ok(active) = state.sessions.count_active().await {
        ::metrics::gauge!("sessions_active").set(active as f64);
    }
    let body = observability::recorder()
        .map(|handle| handle.render())
        .unwrap_or_default();
    Response::builder()
        .status(StatusCode::OK)
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body)
}
