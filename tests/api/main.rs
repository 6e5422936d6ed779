//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod admin;
mod auth;
mod batched_lookup;
mod batched_saves;
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
mod search;
mod second_provider;
mod sign_in_tabs;
mod streams;
mod sync;
mod webdriver;
