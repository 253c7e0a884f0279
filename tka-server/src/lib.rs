//! The HTTP side of `tka-server`: the login API under `/api/v1` (tailnet only), the optional
//! tailnet API proxy to the Kubernetes API server, the ops endpoints (`/healthz`, `/readyz`,
//! `/metrics`), the listeners they run on, and the validated settings that configure them.
//!
//! This crate is a thin layer: who is calling comes from a [`tka_core::IdentityProvider`], what
//! they may get from [`tka_core::policy`], and the credentials from a
//! [`tka_core::issuer::CredentialIssuer`]. It owns only the HTTP contract (DESIGN §6): the
//! security checks every request passes, the mapping of domain errors to RFC 9457 problems (in
//! [`error::ApiError`], the one place that does it), the audit records, the metrics and graceful
//! shutdown. It must not decide policy, talk to tailscaled itself, or log a token; the one module
//! that talks to Kubernetes is [`kubernetes`], which feeds the server from tka-core's backend.
//!
//! Inside, data flows one way (DESIGN §6): [`settings`] → [`wiring`] → shared [`state`] (the
//! backends, the rate limiter, the metrics) → the [`sessions`] service (login, token, logout,
//! each to an outcome that one observer turns into audit records and metrics) → thin fronts
//! ([`api`] handlers behind [`guard`] and [`body`], assembled by [`routes`]; the tailnet API
//! [`proxy`]; [`ops`]). Nothing below a front imports the front.
//!
//! The binary (`main.rs`) parses flags into [`settings::Settings`], has [`wiring::server`] build
//! the real server (the one place the real implementations are constructed, so the binary, the
//! end-to-end tests and the demo run the same construction), and calls [`server::Server::run`].
//! Tests boot the same router with fakes.

pub mod api;
pub mod audit;
pub mod body;
pub mod cli;
pub mod connections;
pub mod error;
#[cfg(feature = "fault-injection")]
mod fault;
pub mod framing;
pub mod guard;
pub mod hosts;
pub mod kubeconfig;
pub mod kubernetes;
pub mod listener;
pub mod logging;
pub mod mappings;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod proxy;
pub mod ratelimit;
pub mod request_id;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod settings;
pub mod state;
pub mod tailscale;
pub mod wiring;

pub use error::ApiError;
pub use listener::{ApiListener, ListenMode, Peer};
pub use mappings::{InMemoryMappings, MappingStore};
pub use metrics::{Metrics, SessionCounter};
pub use ops::{ReadinessCheck, ops_router};
pub use routes::api_router;
pub use server::Server;
pub use sessions::{Caller, Sessions};
pub use settings::{Settings, SettingsError};
pub use state::{ApiConfig, ApiState, Backends};
