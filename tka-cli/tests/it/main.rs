//! Integration tests of the `tka` binary: each test runs the built binary in an isolated home
//! against a loopback test server (and the machine's kubectl where a kubeconfig must work).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

mod book;
mod cookbook;
mod credential;
mod discovery;
mod explain;
mod help;
mod hostile;
mod kubectl_reads_the_same;
mod login;
mod status;
mod support;
