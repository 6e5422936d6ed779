//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod auth;
mod deploy_files;
mod foundation;
mod helpers;
mod quotes;
mod sync;
