//! Integration tests of tka-testkit, and of tka-core's real implementations against its fakes
//! (tka-core cannot use the testkit in its own tests without a dependency cycle).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod fake_tailnet;
mod localapi;
