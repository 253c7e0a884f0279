//! Integration tests of tka-testkit's fakes, and of tka-core's real implementations against them
//! (tka-core cannot use the testkit in its own tests without a dependency cycle). One binary,
//! one module per subject.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod cluster;
mod e2e;
mod fake_tailnet;
mod issuer_store;
mod localapi;
mod suite;
