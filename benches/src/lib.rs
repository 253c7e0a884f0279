//! Shared inputs for the benchmarks and load generators in this crate: a realistic caller with
//! five capability values, twenty GrantMappings, a fifty-entry kubeconfig, a cached token, and a
//! fast in-memory [`CredentialIssuer`](tka_core::issuer::CredentialIssuer).
//!
//! Nothing here measures or asserts a timing, and nothing here is meant for production code:
//! these are fixed, deterministic inputs so that two runs measure the same work.

pub mod cache_file;
pub mod fixtures;
pub mod issuer;
pub mod proxy;
pub mod real_main;
pub mod rss;
pub mod scale;
pub mod server;

/// An input that could not be built. Only a broken fixture (a bug in this crate) produces one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("benchmark input {what} is invalid: {reason}; fix the fixture in benches/src")]
pub struct FixtureError {
    /// Which input.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

impl FixtureError {
    /// An error about input `what`.
    pub fn new(what: &'static str, reason: impl std::fmt::Display) -> Self {
        Self {
            what,
            reason: reason.to_string(),
        }
    }
}

/// Builds an input or ends the process with the error: benchmark mains have nothing better to
/// do with a broken fixture, and the workspace lints forbid panicking.
pub fn or_exit<T>(input: Result<T, FixtureError>) -> T {
    match input {
        Ok(value) => value,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(2);
        }
    }
}
