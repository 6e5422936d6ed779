//! The `users` slice: the users table, the Auth0 Management API client, and the sync job that
//! mirrors Auth0's users into Postgres (issue 6).
//!
//! Entry points for other slices:
//! - admin API: [`job::trigger`], [`sync_runs::get`], [`sync_runs::recent`], [`search::search`],
//!   [`store::get`];
//! - startup: [`job::spawn_worker`] / [`job::run_worker`] with a [`sync::Syncer`], and
//!   [`streams::worker`] for the changes Auth0 pushes ([`streams::routes`] receives them).

pub mod auth0_api;
pub mod auth0_user;
pub mod fields;
pub mod foreground;
pub mod job;
pub mod search;
pub mod search_indexes;
pub mod staging;
pub mod storable;
pub mod store;
pub mod streams;
pub mod sync;
pub mod sync_runs;

/// A short random hex id (worker names).
pub(crate) fn random_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tenant whose Management API the sync reads: the configured issuer, or the built-in
/// emulator's address (whose issuer is `http://<bind>/`).
pub fn management_issuer(
    settings: &crate::config::Settings,
) -> Result<url::Url, auth0_api::ApiError> {
    match &settings.auth.provider {
        crate::config::IdentityProvider::External { issuer } => Ok(issuer.url().clone()),
        crate::config::IdentityProvider::Emulator { bind } => {
            let raw = format!("http://{bind}/");
            url::Url::parse(&raw).map_err(|_| auth0_api::ApiError::BadIssuer(raw))
        }
    }
}

/// A [`sync::Syncer`] over `db` for the tenant at `issuer`, configured from `settings`.
pub fn syncer(
    db: sqlx::PgPool,
    settings: &crate::config::Settings,
    issuer: url::Url,
) -> Result<sync::Syncer, auth0_api::ApiError> {
    let api = auth0_api::ManagementApi::from_settings(
        issuer,
        &settings.auth,
        auth0_api::ApiOptions::default(),
    )?;
    Ok(sync::Syncer::new(
        db,
        api,
        sync::SyncOptions {
            purge_after_days: settings.sync.purge_after_days,
            ..sync::SyncOptions::default()
        },
    ))
}
