//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod admin;
mod auth;
mod batched_lookup;
mod batched_saves;
mod browser;
mod deploy_files;
mod emulator;
mod foundation;
mod hardening;
mod helpers;
mod observability;
mod quotes;
mod search;
mod sync;
mod webdriver;
