//! Fault injection, compiled only with the cargo feature `fault-injection`: the hidden
//! `serve --fault-abort-after <checkpoint>` flag aborts the process right after the issuer
//! reaches that checkpoint (tka-core's `Checkpoint`: between two writes of a login, a role change
//! or the end of a session), so the end-to-end tests can prove that a server killed there
//! recovers on restart.
//!
//! A build without the feature (`cargo build --release -p tka-server`, the images) has neither
//! this module nor the flag; no environment variable turns it on. `cargo test` enables the
//! feature through tka-server's dev-dependency on itself. This module must not do anything but
//! abort.

use std::sync::Arc;

use tka_core::kubernetes::{Checkpoint, CheckpointHook};

/// A hook that aborts the process (no destructors, no graceful shutdown, no Lease release: as a
/// SIGKILL would) when the issuer reaches `point`.
pub(crate) fn abort_after(point: Checkpoint) -> CheckpointHook {
    tracing::warn!(checkpoint = %point, "fault injection armed: the process aborts at this checkpoint");
    Arc::new(move |reached, session| {
        if reached == point {
            // Straight to stderr (unbuffered), so the line is in the log before the process dies.
            eprintln!("tka-server: fault injection: aborting after {point} of session {session}");
            std::process::abort();
        }
    })
}
