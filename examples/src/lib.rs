//! Programs that embed tka-core; each is an example target (`cargo run -p tka-examples --example NAME`).
//! The library itself holds nothing: examples must use only tka-core's public API.
