//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod foundation;
mod helpers;
mod sync;
