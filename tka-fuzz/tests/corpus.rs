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
}

#[test]
fn localapi() {
    replay("localapi");
    tka_fuzz::localapi::remove_socket();
}

#[test]
fn capability() {
    replay("capability");
}

#[test]
fn grant_mapping() {
    replay("grant_mapping");
}

#[test]
fn kubeconfig() {
    replay("kubeconfig");
}

#[test]
fn api_body() {
    replay("api_body");
}

#[test]
fn proxy_header() {
    replay("proxy_header");
}

#[test]
fn framing() {
    replay("framing");
}
