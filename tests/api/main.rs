//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod admin;
mod auth;
mod batched_lookup;
mod browser;
mod db_outages;
mod deploy_files;
mod emulator;
mod foundation;
mod hardening;
mod helpers;
mod observability;
mod pooler;
mod quotes;
mod sync;
mod webdriver;
