//! Sign-in with any OpenID provider (Auth0 in production, the emulator in development),
//! Postgres-backed sessions, CSRF protection and the signed-in-user extractor.

pub mod backchannel_logout;
pub mod cookies;
pub mod csrf;
pub mod current_user;
pub mod devices;
pub mod discovery;
pub mod id_token;
pub mod login_request;
pub mod login_transaction;
pub mod logout_token;
pub mod oidc;
pub mod revocation;
pub mod roles;
pub mod routes;
pub mod session;
pub mod session_events;
pub mod session_store;
pub mod user_row;
pub mod views;

use std::time::Duration;

use poem::{Route, get, post};

use crate::{
    config::Settings,
    observability::named,
    web::layout::{Shell, Viewer},
};
use current_user::signed_in_user;
use session::Session;
use session_store::PgSessionStore;

/// Mounted under `/auth`.
pub fn routes() -> Route {
    Route::new()
        .at("/login", named("/auth/login", get(routes::login)))
        .at("/callback", named("/auth/callback", get(routes::callback)))
        .at(
            "/logout",
            named(
                "/auth/logout",
                get(routes::logout_page).post(routes::logout),
            ),
        )
        .at("/me", named("/auth/me", get(routes::me)))
        .at("/sessions", named(devices::PATH, get(devices::sessions)))
        .at(
            "/sessions/others",
            named(devices::SIGN_OUT_OTHERS, post(devices::sign_out_others)),
        )
        .at(
            "/backchannel-logout",
            named(
                "/auth/backchannel-logout",
                post(backchannel_logout::backchannel_logout),
            ),
        )
}

/// The page shell's view of the session: who is signed in and their CSRF token.
pub fn shell_for(session: &Session, settings: &Settings) -> Shell {
    let user = signed_in_user(session);
    Shell {
        csrf_token: user.as_ref().and_then(|_| csrf::existing_token(session)),
        viewer: user.map(|u| Viewer {
            name: u.display_name().to_owned(),
            is_admin: roles::is_admin(&u, &settings.admin),
        }),
    }
}

/// Deletes expired sessions, sign-ins and remembered logout tokens every few minutes, for as
/// long as the app runs.
pub async fn reap_sessions(store: PgSessionStore, db: sqlx::PgPool) {
    let mut every = tokio::time::interval(Duration::from_secs(300));
    loop {
        every.tick().await;
        match store.reap().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired sessions removed"),
            Err(err) => tracing::warn!(error = %err, "could not remove expired sessions"),
        }
        match login_transaction::reap(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired sign-ins removed"),
            Err(err) => tracing::warn!(error = %err, "could not remove expired sign-ins"),
        }
        match backchannel_logout::reap(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired logout tokens forgotten"),
            Err(err) => tracing::warn!(error = %err, "could not forget expired logout tokens"),
        }
    }
}
