//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod admin;
mod auth;
mod batched_lookup;
mod browser;
mod canonical_origin;
mod db_outages;
mod deploy_files;
mod emulator;
mod foundation;
mod hardening;
mod helpers;
mod no_store;
mod observability;
mod pooler;
mod providers;
mod quotes;
mod second_provider;
mod sign_in_tabs;
mod sync;
mod sync_export;
mod webdriver;
