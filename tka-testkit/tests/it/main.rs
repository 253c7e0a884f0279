//! Integration tests of tka-testkit: one binary, one module per fake.

mod cluster;
mod suite;
