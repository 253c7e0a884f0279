//! The documented exit codes (docs/cli.md): one enum and its conversion to a process exit code.
//!
//! It owns the numbers only. It must not decide which failure gets which code (each error type
//! does that in its `exit()`), and it imports nothing from this crate, so every module may use it.

use std::process::ExitCode;

/// The documented exit codes (docs/cli.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Exit {
    /// Success.
    Ok = 0,
    /// Any failure without a more specific code.
    Failure = 1,
    /// The command line is wrong (clap uses 2 as well).
    Usage = 2,
    /// The server refused: no grant for what was asked.
    NotAuthorized = 3,
    /// The session ended (logged out, expired, revoked): log in again.
    SessionEnded = 4,
    /// The tka server could not be reached, timed out or failed.
    Unreachable = 5,
    /// The kubeconfig cannot be read or written; it was left untouched.
    Kubeconfig = 6,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit as u8)
    }
}
