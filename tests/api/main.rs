//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod admin;
mod auth;
mod browser;
mod deploy_files;
mod emulator;
mod foundation;
mod hardening;
mod helpers;
mod observability;
mod quote_reader;
mod quotes;
mod sync;
mod webdriver;
