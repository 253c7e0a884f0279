//! Replays every checked-in input of every fuzz target (`tka-fuzz/seeds/<target>/`): the
//! seeds the fuzzer starts from and the inputs that once broke a property, kept as regression
//! tests. A failure names the file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may fail loudly

use std::path::{Path, PathBuf};

fn seeds(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seeds")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    let run = tka_fuzz::target(target).unwrap();
    let files = seeds(target);
    assert!(!files.is_empty(), "target {target} has no seeds");
    for file in files {
        let data = std::fs::read(&file).unwrap();
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("{target}: {} broke a property: {message}", file.display());
        }
    }
}

#[test]
fn every_target_has_a_seed_directory_and_no_directory_lacks_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = tka_fuzz::TARGETS
        .iter()
        .map(|(n, _)| (*n).to_owned())
        .collect();
    targets.sort();
    assert_eq!(dirs, targets);
}

#[test]
fn whois() {
    replay("whois");
    smoke("whois");
}

#[test]
fn localapi() {
    replay("localapi");
    smoke("localapi");
    tka_fuzz::localapi::remove_socket();
}

#[test]
fn capability() {
    replay("capability");
    smoke("capability");
}

#[test]
fn grant_mapping() {
    replay("grant_mapping");
    smoke("grant_mapping");
}

#[test]
fn kubeconfig() {
    replay("kubeconfig");
    smoke("kubeconfig");
}

#[test]
fn api_body() {
    replay("api_body");
    smoke("api_body");
}

#[test]
fn proxy_header() {
    replay("proxy_header");
    smoke("proxy_header");
}

#[test]
fn framing() {
    replay("framing");
    smoke("framing");
}

/// How many mutated inputs the smoke feeds each target (`TKA_FUZZ_SMOKE_INPUTS` to change).
const SMOKE_INPUTS: usize = 2_000;

/// A small deterministic generator (xorshift64*): the smoke's inputs are the same on every
/// run unless `TKA_FUZZ_SMOKE_SEED` names another seed, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }
}

/// Bytes that matter to the parsers: structure of JSON, YAML and HTTP, and values at edges.
const TOKENS: &[&[u8]] = &[
    b"\0",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"\n",
    b"\r\n",
    b"\r\n\r\n",
    b"- ",
    b"&a ",
    b"*a",
    b"!!binary ",
    b"null",
    b"~",
    b"-1",
    b"9223372036854775807",
    b"1e309",
    b"\\u0000",
    b"\xff",
    b"\xc3\x28",
    b"0\r\n\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: ",
    b"tag:",
    b"autogroup:member",
    b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a",
];

/// One mutation of `input`, drawing on every seed of the target for splices.
fn mutate(rng: &mut Rng, input: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(7) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = u8::try_from(rng.below(256)).unwrap();
            }
            2 => {
                let end = (at + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                out.splice(at..at, token.iter().copied());
            }
            4 => {
                let other = &seeds[rng.below(seeds.len())];
                let from = rng.below(other.len() + 1);
                let to = (from + rng.below(64)).min(other.len());
                out.splice(at..at, other[from..to].iter().copied());
            }
            5 if !out.is_empty() => {
                // Repeat a slice: deep nesting and long runs.
                let end = (at + 1 + rng.below(8)).min(out.len());
                let piece = out[at.min(end)..end].to_vec();
                for _ in 0..rng.below(64) {
                    out.splice(at..at, piece.iter().copied());
                }
            }
            _ => out.truncate(at),
        }
    }
    out.truncate(8192);
    out
}

/// The smoke `make test` runs after each target's replay: [`SMOKE_INPUTS`] mutations of the
/// target's seeds on the stable toolchain (no coverage guidance; `make fuzz` runs libFuzzer for
/// that). A broken property fails the test and writes the input to a temporary file named in
/// the message, to be kept under `tka-fuzz/seeds/<target>/`.
fn smoke(name: &str) {
    let run = tka_fuzz::target(name).unwrap();
    let inputs = std::env::var("TKA_FUZZ_SMOKE_INPUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SMOKE_INPUTS);
    let seed = std::env::var("TKA_FUZZ_SMOKE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7ca5_eed5_u64);
    let seeds: Vec<Vec<u8>> = seeds(name)
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut rng = Rng((seed ^ (name.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1);
    for i in 0..inputs {
        let base = &seeds[rng.below(seeds.len())];
        let data = mutate(&mut rng, base, &seeds);
        if let Err(panic) = std::panic::catch_unwind(|| run(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let path = std::env::temp_dir().join(format!("tka-fuzz-smoke-{name}-{i}"));
            std::fs::write(&path, &data).unwrap();
            panic!(
                "{name}: mutated input {i} (seed {seed}) broke a property: {message}; input saved to {}",
                path.display()
            );
        }
    }
}
