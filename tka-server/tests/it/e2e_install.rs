//! docs/operations.md's Install and Uninstall steps, run as the page shows them, on a real API
//! server. The page's overlay (`overlays/prod/kustomization.yaml`) is written into a temporary
//! directory beside a copy of `tka-server/deploy`, and every shell command of the two sections
//! runs there with `bash -c`, word for word: the namespace, the sidecar's Secret (with the
//! page's placeholder auth key, so a dummy), `kubectl apply -k overlays/prod`, the example
//! GrantMappings and `kubectl get grantmappings`. Then the overlay's values are checked in the
//! cluster, the server runs with the ServiceAccount the base makes, and every example mapping
//! must be `Ready` (the server judged it with deploy/'s RBAC) and `read-only` must serve a login.
//! Uninstall: `tka-server drain --timeout 60s` as the page's `kubectl exec` would run it in the
//! pod (no kubelet here: the same command with the ServiceAccount's kubeconfig), then
//! `kubectl delete -k overlays/prod`, after which no CRD, namespace or tka object is left.
//! Last, README's quickstart commands run the same way on the emptied cluster, and its
//! GrantMapping is there.
//!
//! Skips without `TKA_TESTENV_BIN` (fails with `TKA_REQUIRE_TESTENV=1`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tka_testkit::testenv::{KubeEnv, ServerProcess, TailnetEnv, bin_dir_or_skip, exclusive};

use super::book;
use super::e2e_refusals::{Http, NS, admin_kubectl};
use super::e2e_tailnet::managed_objects;

const PAGE: &str = "docs/operations.md";
/// The first line of the page's overlay block: the file's path.
const OVERLAY_MARK: &str = "# overlays/prod/kustomization.yaml";

/// The lines of `## heading` of `text`, up to the next second-level heading.
fn section(text: &str, heading: &str) -> String {
    let mut lines = text.lines().skip_while(|l| *l != format!("## {heading}"));
    let first = lines
        .next()
        .unwrap_or_else(|| panic!("{PAGE} has no section `## {heading}`"));
    let mut out = vec![first];
    out.extend(lines.take_while(|l| !l.starts_with("## ")));
    out.join("\n")
}

/// A code block's lines without the indentation they share (blocks inside list items).
fn dedent(lines: &[String]) -> String {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out: Vec<&str> = lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect();
    out.push("");
    out.join("\n")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Runs one command of the page with `bash -c` in `dir`, kubectl on `PATH` and the admin's
/// kubeconfig as `KUBECONFIG`; must succeed within 90 s; its stdout.
async fn shell(kube: &KubeEnv, dir: &Path, command: &str) -> String {
    let kubectl_dir = kube.kubectl().parent().unwrap().to_owned();
    let mut cmd = tokio::process::Command::new("/bin/bash");
    cmd.args(["-c", command])
        .current_dir(dir)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", kubectl_dir.display()))
        .env("KUBECONFIG", kube.admin_kubeconfig())
        .env("HOME", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let out = tokio::time::timeout(
        Duration::from_secs(90),
        cmd.spawn().unwrap().wait_with_output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`{command}` took over 90 s"))
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`{command}` failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubectl get grantmappings` as a table: for each row, its column values by header.
fn table(text: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = text.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    // Columns start where a header word starts after two or more spaces (headers such as
    // `DEFAULT TTL` hold one space).
    let mut starts = vec![0];
    let bytes = header.as_bytes();
    for i in 2..bytes.len() {
        if bytes[i] != b' ' && bytes[i - 1] == b' ' && bytes[i - 2] == b' ' {
            starts.push(i);
        }
    }
    let cell = |line: &str, k: usize| -> String {
        let from = starts[k].min(line.len());
        let to = starts
            .get(k + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(from..to).unwrap_or("").trim().to_owned()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            (0..starts.len())
                .map(|k| (cell(header, k), cell(line, k)))
                .collect()
        })
        .collect()
}

fn column<'a>(row: &'a [(String, String)], name: &str) -> &'a str {
    row.iter()
        .find(|(h, _)| h == name)
        .map_or("", |(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown() {
    let Some(bin) =
        bin_dir_or_skip("e2e_the_install_and_uninstall_steps_of_the_operations_page_work_as_shown")
    else {
        return;
    };
    let _permit = exclusive().await;
    let root = book::workspace();
    let page = book::read(&root.join(PAGE));
    let install = book::parse_page(&section(&page, "Install"));
    let uninstall = book::parse_page(&section(&page, "Uninstall"));

    // The page's overlay, beside a copy of the base, as its `resources` path expects.
    let work = tempfile::tempdir().unwrap();
    let overlay = install
        .blocks
        .iter()
        .find(|b| b.lines.first().is_some_and(|l| l.trim() == OVERLAY_MARK))
        .unwrap_or_else(|| panic!("{PAGE}'s Install has no block starting `{OVERLAY_MARK}`"));
    std::fs::create_dir_all(work.path().join("overlays/prod")).unwrap();
    std::fs::write(
        work.path().join("overlays/prod/kustomization.yaml"),
        dedent(&overlay.lines),
    )
    .unwrap();
    copy_dir(
        &root.join("tka-server/deploy"),
        &work.path().join("tka-server/deploy"),
    );

    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.ensure_namespace("team-a").await.unwrap();

    // Every command of Install, in order.
    let commands = book::commands(&install);
    let expected = [
        "kubectl create namespace tka-system",
        "kubectl -n tka-system create secret generic tka-tailscale-auth",
        "kubectl apply -k overlays/prod",
        "kubectl apply -f tka-server/deploy/examples/grantmappings.yaml",
        "kubectl get grantmappings",
    ];
    for start in expected {
        assert!(
            commands.iter().any(|c| c.starts_with(start)),
            "{PAGE}'s Install shows no `{start}…`: {commands:?}"
        );
    }
    let mut listed = String::new();
    for command in &commands {
        listed = shell(&kube, work.path(), command).await;
    }
    assert!(
        commands
            .last()
            .unwrap()
            .starts_with("kubectl get grantmappings"),
        "{commands:?}"
    );

    // What the steps made: the Secret with the key the sidecar reads, the overlay's settings
    // and image, the base's objects.
    let secret: Value = serde_json::from_str(
        &admin_kubectl(
            &kube,
            &[
                "-n",
                NS,
                "get",
                "secret",
                "tka-tailscale-auth",
                "-o",
                "json",
            ],
        )
        .await,
    )
    .unwrap();
    assert!(secret["data"]["TS_AUTHKEY"].is_string(), "{secret}");
    let deployment: Value = serde_json::from_str(
        &admin_kubectl(
            &kube,
            &["-n", NS, "get", "deployment", "tka-server", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    let containers = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let secret_refs: Vec<&Value> = containers
        .iter()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .filter_map(|e| e["valueFrom"]["secretKeyRef"].as_object().map(|_| e))
        .collect();
    assert!(
        secret_refs.iter().any(|e| e["name"] == "TS_AUTHKEY"
            && e["valueFrom"]["secretKeyRef"]["name"] == "tka-tailscale-auth"
            && e["valueFrom"]["secretKeyRef"]["key"] == "TS_AUTHKEY"),
        "the sidecar does not read the Secret the page creates: {secret_refs:?}"
    );
    let server_container = containers
        .iter()
        .find(|c| c["name"] == "tka-server")
        .unwrap();
    assert_eq!(
        server_container["image"], "ghcr.io/tka-dev/tka-server:v0.1.0",
        "the overlay's images entry"
    );
    let config_name = server_container["envFrom"][0]["configMapRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let config: Value = serde_json::from_str(
        &admin_kubectl(
            &kube,
            &["-n", NS, "get", "configmap", &config_name, "-o", "json"],
        )
        .await,
    )
    .unwrap();
    let cluster = config["data"]["TKA_CLUSTER_NAME"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cluster, "prod", "{config}");
    assert_eq!(
        config["data"]["TKA_API_SERVER_URL"],
        "https://prod.example.com:6443"
    );
    let examples: Vec<String> = {
        let text = book::read(&root.join("tka-server/deploy/examples/grantmappings.yaml"));
        text.lines()
            .skip_while(|l| !l.starts_with("kind: GrantMapping"))
            .filter_map(|l| l.trim().strip_prefix("name: ").map(str::to_owned))
            .collect()
    };
    assert!(examples.len() >= 3, "{examples:?}");
    let rows = table(&listed);
    for name in &examples {
        assert!(
            rows.iter().any(|r| column(r, "NAME") == name),
            "`kubectl get grantmappings` does not list {name}:\n{listed}"
        );
    }

    // The server as the Deployment runs it: the base's ServiceAccount, the overlay's cluster
    // name. It judges the mappings; `kubectl get grantmappings` shows READY and REASON.
    let token = admin_kubectl(
        &kube,
        &["create", "token", "tka-server", "-n", NS, "--duration=1h"],
    )
    .await;
    let server_kubeconfig = kube.kubeconfig_for_token(token.trim()).unwrap();
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["read-only"], &[])
        .await
        .unwrap();
    let node = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let mut server = ServerProcess::builder(&server_bin, &kube, &node, &cluster)
        .kubeconfig(&server_kubeconfig)
        .pod_name("tka-server-install-0")
        .start()
        .await
        .unwrap();
    let log = || std::fs::read_to_string(server.log_path()).unwrap_or_default();
    let get = commands.last().unwrap().clone();
    let mut judged = Vec::new();
    for _ in 0..120 {
        judged = table(&shell(&kube, work.path(), &get).await);
        if judged.len() == examples.len() && judged.iter().all(|r| !column(r, "READY").is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        judged.len(),
        examples.len(),
        "`{get}` after the server judged the mappings: {judged:?}"
    );
    for row in &judged {
        assert_eq!(
            (column(row, "READY"), column(row, "REASON")),
            ("True", "Ready"),
            "{row:?}\nserver log:\n{}",
            log()
        );
    }
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: format!("http://{}:{}", node.ipv4, server.port()),
    };
    let (status, answer) = alice.login(r#"{"role":"read-only"}"#).await;
    assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
    assert_eq!(answer["session"]["role"], "read-only", "{answer}");
    assert!(!managed_objects(&kube).await.is_empty());

    // Uninstall, as the page shows it: drain (what `kubectl exec` runs in the pod), then delete.
    server.stop();
    let commands = book::commands(&uninstall);
    assert_eq!(commands.len(), 2, "{PAGE}'s Uninstall: {commands:?}");
    let drain = commands[0]
        .split_once(" -- ")
        .map(|(_, inner)| inner.to_owned())
        .unwrap_or_else(|| panic!("`{}` is not a `kubectl exec … -- …`", commands[0]));
    let drain = drain
        .strip_prefix("tka-server ")
        .unwrap_or_else(|| panic!("`{drain}` does not run tka-server"));
    let drain = format!(
        "{} {drain} --kubeconfig {}",
        server_bin.display(),
        server_kubeconfig.display()
    );
    shell(&kube, work.path(), &drain).await;
    assert!(
        managed_objects(&kube).await.is_empty(),
        "drain left tka's objects"
    );
    assert!(commands[1].starts_with("kubectl delete -k overlays/prod"));
    shell(&kube, work.path(), &commands[1]).await;
    let left = admin_kubectl(
        &kube,
        &["get", "crd,namespaces", "-o", "name", "--ignore-not-found"],
    )
    .await;
    for gone in [
        "grantmappings.tka.dev",
        "sessions.tka.dev",
        "namespace/tka-system",
    ] {
        assert!(!left.contains(gone), "{gone} is still there:\n{left}");
    }

    // README's quickstart on the emptied cluster: each of its `sh` blocks as one script (the
    // last one holds a here-document), with the same overlay.
    let readme = book::read(&root.join("README.md"));
    let quickstart = book::parse_page(&section(&readme, "Quickstart on a real cluster"));
    let scripts: Vec<String> = quickstart
        .blocks
        .iter()
        .filter(|b| b.lang == "sh")
        .map(|b| dedent(&b.lines))
        .collect();
    assert!(
        scripts.len() >= 2
            && scripts[0].contains("kubectl apply -k overlays/prod")
            && scripts.iter().any(|s| s.contains("kind: GrantMapping")),
        "README's quickstart: {scripts:?}"
    );
    for script in &scripts {
        shell(&kube, work.path(), &format!("set -euo pipefail\n{script}")).await;
    }
    let view = admin_kubectl(
        &kube,
        &["get", "grantmapping", "view", "-o", "jsonpath={.spec}"],
    )
    .await;
    let view: Value = serde_json::from_str(&view).unwrap();
    assert_eq!(view["clusterRoles"], json!(["view"]), "{view}");
    assert_eq!(view["maxTTL"], "8h", "{view}");
    assert_eq!(
        admin_kubectl(
            &kube,
            &[
                "-n",
                NS,
                "get",
                "secret",
                "tka-tailscale-auth",
                "-o",
                "name"
            ],
        )
        .await
        .trim(),
        "secret/tka-tailscale-auth"
    );
}
