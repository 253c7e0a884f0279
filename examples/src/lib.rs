//! Programs that embed tka-core; each is an example target (`cargo run -p tka-examples --example NAME`).
