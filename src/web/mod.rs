//! Shared web pieces: the page shell, htmx helpers, static assets and health endpoints.

pub mod assets;
pub mod body_limit;
pub mod canonical_origin;
pub mod form;
pub mod health;
pub mod htmx;
pub mod layout;
pub mod metrics;
