//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers
//! within a second), for Fly's checks and load balancers.

use std::time::Duration;

use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{Data, Json},
};
use serde_json::json;

use crate::startup::AppState;

#[handler]
pub fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

#[handler]
pub async fn readyz(Data(state): Data<&AppState>) -> Response {
    // A dead pooled connection is not the database being down: one more try on another.
    let check = crate::db::retry_idempotent(|| {
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db)
    });
    let reason = match tokio::time::timeout(Duration::from_secs(1), check).await {
        Ok(Ok(_)) => return Json(json!({ "status": "ready" })).into_response(),
        Ok(Err(err)) => format!("database error: {}", describe(&err)),
        Err(_) => "database did not answer within 1 s".to_owned(),
    };
    let mut response = Json(json!({ "status": "unavailable", "reason": reason })).into_response();
    response.set_status(StatusCode::SERVICE_UNAVAILABLE);
    response
}

/// A short cause without connection strings or credentials.
fn describe(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::PoolTimedOut => "no connection available (is the database up?)",
        sqlx::Error::PoolClosed => "connection pool closed",
        sqlx::Error::Io(_) => "cannot reach the database",
        sqlx::Error::Tls(_) => "TLS handshake with the database failed",
        sqlx::Error::Database(_) => "the database refused the query",
        _ => "unexpected database error",
    }
}
