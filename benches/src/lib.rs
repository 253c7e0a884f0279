//! Benchmarks live in `benches/`; this library holds shared inputs for them.
