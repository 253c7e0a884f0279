//! The scale run on the real components (`benches/src/bin/scale.rs`): the release `tka-server`
//! process with deploy/'s RBAC on the testenv's kube-apiserver, logins against a direct-kube
//! baseline, resident memory and CPU at 0, 1,000 and 10,000 sessions, the API server's request
//! counts, and expiry lag. Measures and reports only: nothing here asserts a timing.
//!
//! Modules: [`env`] starts the stage, [`login`] drives logins (tka and the baseline), [`seed`]
//! makes sessions with tka-core's issuer, [`expiry`] watches sessions end, [`probe`] reads
//! `/proc` and `/metrics`, [`stats`] summarizes, [`plot`] draws, [`run`] is the scenario.

pub mod env;
pub mod expiry;
pub mod login;
pub mod output;
pub mod plot;
pub mod probe;
pub mod run;
pub mod seed;
pub mod stats;

/// Why the scale run stopped.
#[derive(Debug, thiserror::Error)]
#[error("scale run: {0}")]
pub struct ScaleError(String);

impl ScaleError {
    /// An error with this message (say what failed and, where it helps, what to do).
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// An error from anything displayable.
    pub fn from_display(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
    }
}
