//! The `users` slice: the users table, the Auth0 Management API client, and the sync job that
//! mirrors Auth0's users into Postgres (issue 6).
//!
//! Entry points for other slices:
//! - admin API: [`job::trigger`], [`sync_runs::get`], [`sync_runs::recent`], [`store::search`],
//!   [`store::get`];
//! - startup: [`job::spawn_worker`] / [`job::run_worker`] with a [`sync::Syncer`].

pub mod auth0_api;
pub mod auth0_user;
pub mod job;
pub mod store;
pub mod sync;
pub mod sync_runs;

/// A short random hex id (worker names).
pub(crate) fn random_id() -> String {
    let bytes: [u8; 6] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
