//! Integration tests of tka-core's public API (no I/O beyond reading fixture files).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod localapi_fixtures;
mod secrets;
