//! The commands of docs/benchmarks.md still work: every shell block of the page that runs a
//! benchmark binary as `$T/<bin>` runs here once, as a `bash` script, with `T` the directory of
//! this package's debug binaries (cargo builds them for this test; `tka` and `tka-server` must
//! be there too, as `cargo test --workspace` and `make test` leave them) and the measured sizes
//! replaced by the smallest that exercise the same path ([`SMOKE`]). Its output must hold what
//! the page's tables are read from. Nothing is timed and no timing is asserted.
//!
//! Not run here: commands that write into `$BENCH_OUT` (the scale, proxy and exec-plugin runs:
//! `make bench` and `make bench-exec` run them at their sizes, and the book test in tka-server
//! checks that those recipes hold them), builds (`make …`, `cargo …`: the binaries are built),
//! and `eval "$(tka-testkit/testenv/build.sh)"` (its `TKA_TESTENV_BIN` is passed through; a block
//! that needs it skips without it, or fails with `TKA_REQUIRE_TESTENV=1`). `/tmp/tka-cred`, where
//! the page's cache-hit block writes, becomes a temporary directory.

// Test code may panic on what it does not expect.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PAGE: &str = "docs/benchmarks.md";

/// A benchmark binary as the page runs it: the sizes to use here instead (each flag's value
/// replaced, or the flag added), and text its output must hold.
struct Smoke {
    bin: &'static str,
    args: &'static [(&'static str, &'static str)],
    shows: &'static [&'static str],
}

const SMOKE: &[Smoke] = &[
    Smoke {
        bin: "loadgen",
        args: &[("--requests", "200"), ("--seconds", "5")],
        shows: &[
            "latency (1 in flight): 200 logins ok, 0 failed",
            "throughput (32 in flight): 200 logins ok, 0 failed",
            "fake tailscaled: ",
        ],
    },
    Smoke {
        bin: "memory",
        args: &[("--sessions", "200")],
        shows: &[
            "idle server (API + ops listeners, 2 workers): RSS ",
            "sessions: 200;",
            "rate limiter, one cell per device: +",
            "reconciler validated map (uid → time): +",
            "listed Session objects (during a pass): +",
            "listed ServiceAccounts (during a pass): +",
            "final RSS ",
        ],
    },
    Smoke {
        bin: "revoke_latency",
        args: &[("--sessions", "2")],
        shows: &[
            "login (issue, created): n=2 p50=",
            "logout (revoke): n=2 p50=",
        ],
    },
    Smoke {
        bin: "seed_cache",
        args: &[],
        shows: &[],
    },
    Smoke {
        bin: "tka",
        args: &[],
        shows: &["\"kind\":\"ExecCredential\"", "\"token\":\""],
    },
    Smoke {
        bin: "exec_plugin",
        args: &[("--runs", "3"), ("--warmup", "1"), ("--seconds", "60")],
        shows: &[
            "| /bin/true (start a process) | 3 |",
            "| cat of the cache entry (start, read, print) | 3 |",
            "| tka credential, cache hit (seeded entry) | 3 |",
        ],
    },
];

/// A bound on one block's run (revoke_latency starts a control plane).
const BLOCK_TIMEOUT: Duration = Duration::from_secs(240);

const TESTENV: &str = "eval \"$(tka-testkit/testenv/build.sh)\"";

/// The `sh` blocks of a Markdown page, each as its logical commands (continuations joined,
/// comments dropped, whitespace collapsed).
fn sh_blocks(text: &str) -> Vec<Vec<String>> {
    let mut blocks = Vec::new();
    let mut open: Option<Vec<&str>> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if let Some(block) = &mut open {
            if trimmed.starts_with("```") {
                blocks.push(tka_testkit::shell::logical_commands(open.take().unwrap()));
            } else {
                block.push(line);
            }
        } else if let Some(info) = trimmed.strip_prefix("```")
            && matches!(info.trim(), "sh" | "bash" | "shell")
        {
            open = Some(Vec::new());
        }
    }
    blocks
}

/// The binary a command runs as `$T/<bin>`, if any.
fn bench_bin(command: &str) -> Option<&str> {
    let at = command.find("$T/")? + 3;
    let rest = &command[at..];
    let end = rest
        .find(|c: char| c.is_whitespace() || c == ')' || c == '"')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// `command` with each of `args` set: the value after the flag replaced, or the pair added
/// after the binary's own arguments (before any redirection).
fn with_sizes(command: &str, args: &[(&str, &str)]) -> String {
    let mut words: Vec<String> = command.split(' ').map(str::to_owned).collect();
    for (flag, value) in args {
        if let Some(i) = words.iter().position(|w| w == flag) {
            assert!(i + 1 < words.len(), "`{command}`: {flag} has no value");
            words[i + 1] = (*value).to_owned();
        } else {
            let at = words
                .iter()
                .position(|w| w.starts_with("2>") || w.starts_with('>') || w.starts_with('|'))
                .unwrap_or(words.len());
            words.insert(at, (*value).to_owned());
            words.insert(at, (*flag).to_owned());
        }
    }
    words.join(" ")
}

/// Runs `script` with bash, bounded; its status, stdout and stderr.
fn run_script(script: &str, env: &[(&str, &Path)]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("stdout");
    let err = dir.path().join("stderr");
    let mut command = Command::new("/bin/bash");
    command
        .args(["-eu", "-o", "pipefail", "-c", script])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BLOCK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("took over {BLOCK_TIMEOUT:?}:\n{script}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (
        status.success(),
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

#[test]
fn every_benchmark_command_of_the_book_runs_at_the_smallest_size() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let bins = Path::new(env!("CARGO_BIN_EXE_loadgen")).parent().unwrap();
    for bin in ["tka", "tka-server"] {
        assert!(
            bins.join(bin).is_file(),
            "{} is missing: build it with the same profile (`cargo build -p tka-cli -p tka-server`; `cargo test --workspace` does)",
            bins.join(bin).display()
        );
    }
    let page = std::fs::read_to_string(root.join(PAGE)).unwrap();
    let blocks = sh_blocks(&page);
    let mut ran: Vec<&str> = Vec::new();
    let mut problems = Vec::new();
    for block in &blocks {
        let runs_bench = block
            .iter()
            .any(|c| bench_bin(c).is_some() && !c.contains("$BENCH_OUT"));
        if !runs_bench {
            continue;
        }
        let mut script = Vec::new();
        let mut shows: Vec<&str> = Vec::new();
        let mut needs_testenv = false;
        for command in block {
            if command == TESTENV {
                needs_testenv = true;
                continue;
            }
            if command.starts_with("make ") || command.starts_with("cargo ") {
                continue;
            }
            if command.contains("$BENCH_OUT") {
                problems.push(format!(
                    "`{command}` writes into $BENCH_OUT beside commands this test runs; give it its own block"
                ));
                continue;
            }
            let mut line = command.clone();
            if let Some(bin) = bench_bin(command) {
                match SMOKE.iter().find(|s| s.bin == bin) {
                    Some(smoke) => {
                        line = with_sizes(&line, smoke.args);
                        shows.extend(smoke.shows);
                        ran.push(smoke.bin);
                    }
                    None => problems.push(format!(
                        "`{command}`: no smallest size for `{bin}` in SMOKE; add one"
                    )),
                }
            }
            script.push(line);
        }
        let testenv = match std::env::var_os("TKA_TESTENV_BIN") {
            Some(dir) => Some(PathBuf::from(dir)),
            None if needs_testenv => {
                assert!(
                    std::env::var_os("TKA_REQUIRE_TESTENV").is_none_or(|v| v != "1"),
                    "TKA_REQUIRE_TESTENV=1 but TKA_TESTENV_BIN is not set"
                );
                eprintln!("skipping (no TKA_TESTENV_BIN):\n{}", script.join("\n"));
                continue;
            }
            None => None,
        };
        let scratch = tempfile::tempdir().unwrap();
        let cred = scratch.path().join("tka-cred");
        let script = script
            .join("\n")
            .replace("/tmp/tka-cred", cred.to_str().unwrap());
        let home = scratch.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        let out = scratch.path().join("bench-out");
        let mut env: Vec<(&str, &Path)> = vec![("T", bins), ("HOME", &home), ("BENCH_OUT", &out)];
        if let Some(dir) = &testenv {
            env.push(("TKA_TESTENV_BIN", dir));
        }
        println!("$ {}", script.replace('\n', "\n$ "));
        let (ok, stdout, stderr) = run_script(&script, &env);
        println!("{stdout}");
        if !ok {
            problems.push(format!(
                "failed:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            ));
            continue;
        }
        for want in shows {
            if !stdout.contains(want) {
                problems.push(format!(
                    "the output of\n{script}\nhas no `{want}`:\n{stdout}"
                ));
            }
        }
    }
    for smoke in SMOKE {
        if !ran.contains(&smoke.bin) {
            problems.push(format!(
                "SMOKE has `{}`, which no block of {PAGE} runs any more",
                smoke.bin
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n\n"));
}
