//! quotebook: keep one favourite quote, signed in with Auth0; a background job mirrors Auth0's
//! users into Postgres. See README.md for running, testing and deploying.

pub mod admin;
pub mod auth;
pub mod batched_lookup;
pub mod batching;
pub mod config;
pub mod db;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod error;
pub mod http_stack;
pub mod local_postgres;
pub mod observability;
pub mod quotes;
pub mod startup;
pub mod telemetry;
pub mod users;
pub mod web;
