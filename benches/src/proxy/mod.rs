//! The proxy benchmark on the real components (`benches/src/bin/proxy.rs`, issue 12 Measure 4):
//! the release `tka-server` with `--proxy-listen` in front of the testenv's kube-apiserver, on
//! the scale run's stage ([`crate::scale::env`]). What the proxy adds to a kubectl-shaped
//! request mix against the same requests sent directly, throughput both ways, the server's
//! memory per open proxied watch, and the time from a logout until the session's proxied
//! streams are closed. Measures and reports only: nothing here asserts a timing.
//!
//! Modules: [`client`] (the two routes and the mix), [`run`] (the scenario), [`output`]
//! (Markdown and JSON).

pub mod client;
pub mod output;
pub mod run;
