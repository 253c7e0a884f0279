//! The server image (`make image`: tka-server/image/build.sh) on the real components. The OCI
//! image tarball is unpacked as a container runtime would (index, manifest, config, layers in
//! order), and its entrypoint is run with its `Cmd` and `User` from the image configuration:
//! `chroot --userspec=65532:65532 <root> /usr/local/bin/tka-server serve …` (ServerProcess with
//! an [`ImageRoot`]), so the binary finds nothing but what the image holds. It then serves a
//! login from the `laptop` node through the built `tka`, and kubectl reads with the credential;
//! a role the laptop does not hold is refused.
//!
//! Skips without `TKA_IMAGE` (the tarball; `make test` sets it and `TKA_REQUIRE_IMAGE=1`, which
//! turns the skip into a failure) or without the testenv, like the other e2e tests. Needs root
//! for chroot.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tka_testkit::testenv::{
    ImageRoot, KubeEnv, ServerProcess, TailnetEnv, bin_dir_or_skip, exclusive, viewer_mapping,
};

use super::e2e_tailnet::{CLUSTER, run};

/// The image tarball from `TKA_IMAGE`; `None` (skip) without it unless `TKA_REQUIRE_IMAGE=1`.
fn image_or_skip(test: &str) -> Option<PathBuf> {
    let required = std::env::var_os("TKA_REQUIRE_IMAGE").is_some_and(|v| v == "1");
    match std::env::var_os("TKA_IMAGE").map(PathBuf::from) {
        Some(path) if path.is_file() => Some(path),
        other => {
            let why = match other {
                Some(path) => format!("TKA_IMAGE={} does not exist", path.display()),
                None => "TKA_IMAGE is not set".to_owned(),
            };
            assert!(!required, "{test}: {why} (run `make image`)");
            eprintln!("skipping {test}: {why}; `make image` builds the image");
            None
        }
    }
}

/// The effective user ID of a process, from `/proc/<pid>/status`.
fn uid_of(pid: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

fn tar(args: &[&str]) {
    let out = std::process::Command::new("tar")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    let (algorithm, hex) = digest.split_once(':').unwrap();
    layout.join("blobs").join(algorithm).join(hex)
}

fn json_file(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The image unpacked into `dir`: its filesystem and its configuration.
struct Unpacked {
    root: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    user: String,
    platform: (String, String),
}

fn unpack(image: &Path, dir: &Path) -> Unpacked {
    let layout = dir.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    tar(&[
        "-xf",
        image.to_str().unwrap(),
        "-C",
        layout.to_str().unwrap(),
    ]);
    let oci_layout = json_file(&layout.join("oci-layout"));
    assert_eq!(oci_layout["imageLayoutVersion"], "1.0.0", "{oci_layout}");
    let index = json_file(&layout.join("index.json"));
    let manifests = index["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 1, "one image in the tarball: {index}");
    let manifest = json_file(&blob(&layout, manifests[0]["digest"].as_str().unwrap()));
    assert_eq!(
        manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{manifest}"
    );
    let config = json_file(&blob(
        &layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    for layer in manifest["layers"].as_array().unwrap() {
        let media = layer["mediaType"].as_str().unwrap();
        let path = blob(&layout, layer["digest"].as_str().unwrap());
        let flags = if media.ends_with("+gzip") {
            "-xzf"
        } else {
            "-xf"
        };
        tar(&[flags, path.to_str().unwrap(), "-C", root.to_str().unwrap()]);
    }
    Unpacked {
        root,
        entrypoint: strings(&config["config"]["Entrypoint"]),
        cmd: strings(&config["config"]["Cmd"]),
        user: config["config"]["User"].as_str().unwrap_or("").to_owned(),
        platform: (
            config["os"].as_str().unwrap_or("").to_owned(),
            config["architecture"].as_str().unwrap_or("").to_owned(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_image_entrypoint_serves_a_login_as_its_user_on_the_real_components() {
    const TEST: &str = "e2e_the_image_entrypoint_serves_a_login_as_its_user_on_the_real_components";
    let Some(image) = image_or_skip(TEST) else {
        return;
    };
    let Some(bin) = bin_dir_or_skip(TEST) else {
        return;
    };
    assert_eq!(
        uid_of("self"),
        Some(0),
        "running the image's entrypoint in a chroot of its filesystem needs root"
    );
    let _permit = exclusive().await;
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));
    let tka = server_bin.with_file_name("tka");
    assert!(tka.exists(), "{} is missing: build tka-cli", tka.display());

    // 1. The image as a runtime sees it: non-root, static, with CA certificates, nothing else.
    let work = tempfile::tempdir().unwrap();
    let unpacked = unpack(&image, work.path());
    assert_eq!(unpacked.platform, ("linux".to_owned(), "amd64".to_owned()));
    assert_eq!(unpacked.entrypoint, ["/usr/local/bin/tka-server"]);
    assert_eq!(unpacked.cmd, ["serve"]);
    assert_eq!(unpacked.user, "65532:65532", "the image runs as nonroot");
    let root = &unpacked.root;
    let ca = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        ca.matches("BEGIN CERTIFICATE").count() > 10,
        "the image's CA bundle holds certificates"
    );
    // No dynamic loader or libc to lean on: the entrypoint must be static to start at all.
    for dir in ["lib", "lib64", "usr/lib", "bin", "sbin"] {
        assert!(!root.join(dir).exists(), "the image has /{dir}");
    }
    let mut top: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["etc", "tmp", "usr"], "the image's top-level entries");

    // 2. The cluster with the CRDs and a mapping; the tailnet with a grant to the laptop.
    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.prepare_for_tka(&[viewer_mapping()]).await.unwrap();
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[])
        .await
        .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();

    // 3. The image's entrypoint and Cmd, as its User, in a chroot of its filesystem; the flags
    // after them are what a Deployment's args would add.
    let mut argv = unpacked.entrypoint.clone();
    argv.extend(unpacked.cmd.iter().cloned());
    let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
        .image(ImageRoot {
            root: root.clone(),
            argv,
            user: unpacked.user.clone(),
        })
        .start()
        .await
        .unwrap();
    let pid = server.pid().unwrap().to_string();
    assert_eq!(
        uid_of(&pid),
        Some(65532),
        "the server runs as the image's user"
    );
    // The process is the image's entrypoint, with the image's filesystem as its root.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, root.join("usr/local/bin/tka-server"));
    let process_root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert_eq!(process_root, *root, "the server's root is the image's");

    // 4. The laptop logs in through it and kubectl reads with the credential.
    let home = work.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let env: Vec<(&str, String)> = vec![
        (
            "PATH",
            format!(
                "{}:{}:/usr/bin:/bin",
                tka.parent().unwrap().display(),
                bin.display()
            ),
        ),
        ("HOME", home.display().to_string()),
        (
            "XDG_CONFIG_HOME",
            home.join(".config").display().to_string(),
        ),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("XDG_STATE_HOME", home.join(".state").display().to_string()),
        (
            "KUBECONFIG",
            home.join(".kube/config").display().to_string(),
        ),
        ("TKA_SOCKS5", format!("127.0.0.1:{}", laptop.socks5_port)),
        ("TKA_TAILSCALE_SOCKET", laptop.socket.display().to_string()),
    ];
    let server_url = server.url();
    let refused = run(
        &tka,
        &["login", CLUSTER, "--server", &server_url, "--role", "admin"],
        &env,
    )
    .await;
    assert!(!refused.ok, "a login for admin succeeded: {refused:?}");
    assert!(
        refused.stderr.contains("no grant for role 'admin'"),
        "{refused:?}\nserver log:\n{}",
        server.log()
    );
    let login = run(
        &tka,
        &["login", CLUSTER, "--server", &server_url, "-o", "json"],
        &env,
    )
    .await;
    assert!(
        login.ok,
        "tka login through the image: {login:?}\nserver log:\n{}",
        server.log()
    );
    let answer: Value = serde_json::from_str(&login.stdout).unwrap();
    assert_eq!(answer["role"], "viewer", "{answer}");
    assert_eq!(answer["caller"], "alice@example.com", "{answer}");
    let kubectl = kube.kubectl();
    let read = run(&kubectl, &["get", "ns", "-o", "name"], &env).await;
    assert!(
        read.ok && read.stdout.contains("namespace/tka-system"),
        "kubectl with the credential from the image's server: {read:?}\nserver log:\n{}",
        server.log()
    );
    let write = run(
        &kubectl,
        &["auth", "can-i", "create", "configmaps", "-n", "default"],
        &env,
    )
    .await;
    assert_eq!(write.stdout.trim(), "no", "{write:?}");
}
