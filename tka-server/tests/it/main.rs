//! Integration tests of tka-server: the real router and listeners on loopback, a scripted
//! tailnet and an in-memory issuer.

// Test code may panic on what it does not expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod adversarial;
mod api_proxy;
mod book;
mod deploy;
mod e2e_crash;
mod e2e_escalation;
mod e2e_idle;
mod e2e_image;
mod e2e_install;
mod e2e_listeners;
mod e2e_outage;
mod e2e_proxy;
mod e2e_proxy_revocation;
mod e2e_proxy_upgrades;
mod e2e_refusals;
mod e2e_soak;
mod e2e_tailnet;
mod flows;
mod kube;
mod listeners;
mod localapi;
mod logs;
mod openapi;
mod ops;
mod proxy;
mod refusals;
mod security;
mod serve;
mod shutdown;
mod support;
mod threat_model;
mod wiring;
