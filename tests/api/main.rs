//! Integration tests: one binary, so it links once. Each module spawns the real app.

mod emulator;
mod foundation;
mod helpers;
