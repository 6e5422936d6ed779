//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the database answers
//! within a second and sign-in is configured right), for Fly's checks and load balancers.

use std::time::Duration;

use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{Data, Json},
};
use serde_json::json;

use crate::{auth::oidc::SignInStatus, startup::AppState};

#[handler]
pub fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `/readyz`: the database answers within a second, and sign-in is configured right.
///
/// Shape: `{"status": "ready" | "unavailable", "reason"?: string, "sign_in": string}`. A
/// database that does not answer, or an issuer that does not match the provider's (a
/// configuration error, with both values), makes it 503. A provider that is merely unreachable
/// does not: it is reported in `sign_in`, because taking instances out of rotation would not
/// bring it back.
#[handler]
pub async fn readyz(Data(state): Data<&AppState>) -> Response {
    // A dead pooled connection is not the database being down: one more try on another.
    let check = crate::db::retry_idempotent(|| {
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&state.db)
    });
    let (database, sign_in) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(1), check),
        state.oidc.status(Duration::from_secs(1)),
    );
    let database = match database {
        Ok(Ok(_)) => None,
        Ok(Err(err)) => Some(format!("database error: {}", describe(&err))),
        Err(_) => Some("database did not answer within 1 s".to_owned()),
    };
    let (sign_in_text, misconfigured) = match sign_in {
        SignInStatus::Ready => ("ok".to_owned(), None),
        SignInStatus::Unavailable(why) => (why, None),
        SignInStatus::Misconfigured(why) => (why.clone(), Some(why)),
    };
    let Some(reason) = database.or(misconfigured) else {
        return Json(json!({ "status": "ready", "sign_in": sign_in_text })).into_response();
    };
    let mut response = Json(json!({
        "status": "unavailable",
        "reason": reason,
        "sign_in": sign_in_text,
    }))
    .into_response();
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
