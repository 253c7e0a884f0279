//! Snapshots of every command's `--help`, so wording changes are reviewed.

use crate::support::*;

#[test]
fn help_of_every_command() {
    let sandbox = Sandbox::new();
    for command in [
        &[][..],
        &["login"],
        &["logout"],
        &["credential"],
        &["prompt"],
        &["shell"],
        &["completion"],
        &["version"],
        &["policy", "explain"],
    ] {
        let out = run(sandbox.tka().args(command).arg("--help"));
        assert!(out.status.success());
        let name = if command.is_empty() {
            "help_tka".to_owned()
        } else {
            format!("help_{}", command[0])
        };
        insta::assert_snapshot!(name, stdout(&out));
    }
}

#[test]
fn usage_errors_exit_2_and_completion_scripts_are_printed() {
    let sandbox = Sandbox::new();
    let out = run(sandbox
        .tka()
        .args(["login", "Not_A_Cluster", "--server", "http://x"]));
    assert_eq!(out.status.code(), Some(2));
    insta::assert_snapshot!("usage_bad_cluster_name", stderr(&out));
    let out = run(sandbox.tka().args(["login", "prod", "--server", "ftp://x"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(sandbox.tka().args(["logout"]));
    assert_eq!(out.status.code(), Some(2));

    for shell in ["bash", "zsh", "fish", "powershell"] {
        let out = run(sandbox.tka().args(["completion", shell]));
        assert!(out.status.success(), "{shell}");
        assert!(stdout(&out).contains("credential"), "{shell}");
    }
    let out = run(sandbox.tka().args(["completion", "tcsh"]));
    assert_eq!(out.status.code(), Some(2));

    let out = run(sandbox.tka().arg("version"));
    assert_eq!(stdout(&out), format!("tka {}\n", env!("CARGO_PKG_VERSION")));
}
