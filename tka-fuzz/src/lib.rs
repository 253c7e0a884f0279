//! Fuzz targets for every parser of tka that reads outside input: tailscaled's whois and status
//! answers (and the LocalAPI client's HTTP exchange that carries them), capability values, GrantMapping specs, the kubeconfig files the CLI merges into, API
//! request and response bodies, the PROXY protocol v2 header, and the HTTP/1.1 framing
//! follower in front of the login API.
//!
//! Each target is a plain `fn(&[u8])` that panics when a property fails, so one body serves
//! both the libFuzzer harness (`tka-fuzz/fuzz`, nightly, outside the workspace) and the
//! ordinary `cargo test` that replays every checked-in input under `tka-fuzz/seeds/<target>/`.
//! A target asserts properties beyond "no panic" wherever they are cheap: parse → write →
//! parse round trips, a kubeconfig merge that keeps every foreign entry, one verdict sequence
//! whatever the split of the bytes, errors returned as `Err`. Targets work in memory, except
//! `localapi`, which needs a Unix socket for the real client (see [`localapi`]).
//!
//! Structured targets read several inputs from one byte string, separated by NUL bytes (see
//! each target's doc), so the seeds stay readable text.

// A fuzz target reports a broken property by panicking; that is its whole job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

pub mod api_body;
pub mod capability;
pub mod framing;
pub mod grant_mapping;
pub mod kubeconfig;
pub mod localapi;
pub mod proxy_header;
mod support;
pub mod whois;

/// A fuzz target: panics when a property of the parser it drives does not hold for `data`.
pub type Target = fn(&[u8]);

/// Every target, by the name its seed directory and `make fuzz` use.
pub const TARGETS: &[(&str, Target)] = &[
    ("whois", whois::target),
    ("localapi", localapi::target),
    ("capability", capability::target),
    ("grant_mapping", grant_mapping::target),
    ("kubeconfig", kubeconfig::target),
    ("api_body", api_body::target),
    ("proxy_header", proxy_header::target),
    ("framing", framing::target),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}
