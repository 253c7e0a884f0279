//! Programs that embed tka-core; each is an example target (`cargo run -p tka-examples --example NAME`).
//! The library itself holds nothing: examples must use only tka-core's public API, except that
//! `login_and_list_namespaces` stages an in-process tka-server (and tka-testkit's fakes) to log in
//! to, since real components are not cheap to start from an example.
