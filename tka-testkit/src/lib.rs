//! Test support for tka and for tools that embed tka-core: fake tailnets and fake clusters that
//! behave like the real ones, and the harness that starts the real components.
//! It is for tests only: production code must not depend on it, and nothing in it may talk
//! beyond loopback or the network namespaces it creates.

pub mod cluster;
pub mod jwt;
pub mod shell;
pub mod suite;
pub mod tailnet;
pub mod testenv;

pub use tailnet::{DaemonStyle, FakeLocalApi, FakePeer, FakeTailnet, PeerSpec};
