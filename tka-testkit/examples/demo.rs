//! `make demo`: tka's story on loopback, narrated, with the real server and CLI. It starts a
//! real Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) and a real
//! tailnet ("cluster" tagged `tag:tka`, "laptop" owned by alice@example.com), applies a
//! GrantMapping, runs the built `tka-server serve` on the cluster node, and drives the built
//! `tka` CLI as the laptop: `tka list`, `tka login`, kubectl through the exec plugin, `tka
//! logout`, and kubectl refused afterwards. Everything stops and is removed at the end; the
//! whole run is bounded. It must not touch anything outside its temporary directory and loopback.
//!
//! Needs `TKA_TESTENV_BIN` (`eval "$(tka-testkit/testenv/build.sh)"`) and the built
//! `tka-server` and `tka` binaries: `TKA_SERVER_BIN` and `TKA_BIN`, or else next to this
//! example's own executable's directory (`target/debug/`). `make demo` does all of it.

// Narrating on stdout is this program's job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;
use tka_core::kubernetes::GrantMapping;
use tka_core::policy::GrantMappingSpec;
use tka_testkit::testenv::{
    KubeEnv, ServerProcess, TailnetEnv, TailnetGrant, TailnetNodeSpec, bin_dir,
};

type Result<T> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

const CAP: &str = "tka.dev/cap/kubernetes";
const NAMESPACE: &str = "tka-system";
const CLUSTER: &str = "prod";

fn step(n: u32, text: &str) {
    println!("\n==> {n}. {text}");
}

fn say(text: &str) {
    println!("    {text}");
}

/// The path of a built binary: `$var`, else `name` in the directory above this example's
/// executable (`target/debug/examples/demo` -> `target/debug/name`).
fn built(var: &str, name: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join(name))
        .ok_or("cannot locate the target directory")?;
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p tka-server -p tka-cli` or set {var}",
            path.display()
        )
        .into())
    }
}

struct Run {
    ok: bool,
    stdout: String,
}

/// Runs `program ARGS…` with exactly `env` (bounded by 60 s), echoing the command and its
/// output (indented) when `show` is set.
async fn run(
    label: &str,
    program: &Path,
    args: &[&str],
    env: &[(&str, String)],
    show: bool,
) -> Result<Run> {
    if show {
        println!("    $ {label} {}", args.join(" "));
    }
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .map_err(|_| format!("{label} {args:?} took over 60 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if show {
        for line in stdout
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("      {line}");
        }
    }
    Ok(Run {
        ok: out.status.success(),
        stdout,
    })
}

async fn demo() -> Result<()> {
    let bin = bin_dir()?;
    let server_bin = built("TKA_SERVER_BIN", "tka-server")?;
    let tka = built("TKA_BIN", "tka")?;
    let started = Instant::now();
    let work = tempfile::tempdir()?;

    step(1, "A control plane and a tailnet on loopback");
    let kube = KubeEnv::start(&bin).await?;
    kube.install_crds().await?;
    kube.ensure_namespace(NAMESPACE).await?;
    say(&format!(
        "etcd, kube-apiserver ({}) and kube-controller-manager are up; tka's CRDs are installed",
        kube.api_url()
    ));
    let tailnet = TailnetEnv::start(
        &bin,
        &[
            TailnetNodeSpec::tagged("cluster", &["tag:tka"]),
            TailnetNodeSpec::user("laptop", "alice@example.com"),
        ],
        &[TailnetGrant::new(
            "laptop",
            "cluster",
            CAP,
            vec![json!({"role": "viewer"})],
        )],
    )
    .await?;
    let cluster = tailnet.node("cluster").ok_or("no cluster node")?.clone();
    let laptop = tailnet.node("laptop").ok_or("no laptop node")?.clone();
    say(&format!(
        "cluster (tag:tka) is {}, laptop (alice@example.com) is {}",
        cluster.ipv4, laptop.ipv4
    ));
    say(&format!(
        "the tailnet policy grants laptop -> cluster: {CAP} = [{{\"role\":\"viewer\"}}]"
    ));

    step(
        2,
        "The cluster admin maps the role \"viewer\" to the ClusterRole view",
    );
    let spec = GrantMappingSpec {
        cluster_roles: vec!["view".to_owned()],
        default_ttl: Some("1h".to_owned()),
        max_ttl: Some("8h".to_owned()),
        ..GrantMappingSpec::default()
    };
    let mappings: kube::Api<GrantMapping> = kube::Api::all(kube.client());
    mappings
        .create(&Default::default(), &GrantMapping::new("viewer", spec))
        .await?;
    let kubectl = kube.kubectl();
    let admin_env = vec![("HOME", work.path().display().to_string())];
    let admin_kubeconfig = kube
        .admin_kubeconfig()
        .to_str()
        .ok_or("non-UTF-8 path")?
        .to_owned();
    run(
        "kubectl",
        &kubectl,
        &["--kubeconfig", &admin_kubeconfig, "get", "grantmappings"],
        &admin_env,
        true,
    )
    .await?;

    step(3, "tka-server on the cluster node");
    let server = ServerProcess::start(&server_bin, &kube, &cluster, CLUSTER).await?;
    let port = server.port();
    say(&format!(
        "tka-server serves cluster \"{CLUSTER}\" on {} (the tailnet) and is ready (/readyz on {})",
        server.url(),
        server.ops()
    ));

    // The laptop: its own HOME, config and kubeconfig, reaching the tailnet via SOCKS5.
    let home = work.path().join("home");
    std::fs::create_dir_all(&home)?;
    let tka_dir = tka.parent().ok_or("tka has no directory")?;
    let env: Vec<(&str, String)> = vec![
        (
            "PATH",
            format!("{}:{}:/usr/bin:/bin", tka_dir.display(), bin.display()),
        ),
        ("HOME", home.display().to_string()),
        (
            "XDG_CONFIG_HOME",
            home.join(".config").display().to_string(),
        ),
        ("XDG_CACHE_HOME", home.join(".cache").display().to_string()),
        ("XDG_STATE_HOME", home.join(".state").display().to_string()),
        ("XDG_DATA_HOME", home.join(".data").display().to_string()),
        (
            "KUBECONFIG",
            home.join(".kube").join("config").display().to_string(),
        ),
        ("TKA_SOCKS5", format!("127.0.0.1:{}", laptop.socks5_port)),
        ("TKA_TAILSCALE_SOCKET", laptop.socket.display().to_string()),
    ];
    let server_url = server.url();

    step(
        4,
        &format!("tka list and tka login {CLUSTER} from the laptop"),
    );
    let list = run(
        "tka",
        &tka,
        &["list", "--server-port", &port.to_string()],
        &env,
        true,
    )
    .await?;
    let login = run(
        "tka",
        &tka,
        &["login", CLUSTER, "--server", &server_url],
        &env,
        true,
    )
    .await?;
    if !list.ok || !login.ok {
        let log = server.log();
        return Err(format!("tka list or tka login failed; server log:\n{log}").into());
    }

    step(
        5,
        "kubectl through the exec plugin: reading is allowed, writing is not",
    );
    let read = run(
        "kubectl",
        &kubectl,
        &["get", "ns", "--request-timeout=20s"],
        &env,
        true,
    )
    .await?
    .ok;
    say(if read {
        "allowed: the viewer reads"
    } else {
        "UNEXPECTED: reading was refused"
    });
    let write = run(
        "kubectl",
        &kubectl,
        &[
            "-n",
            "default",
            "create",
            "configmap",
            "demo",
            "--from-literal=a=b",
            "--request-timeout=20s",
        ],
        &env,
        true,
    )
    .await?
    .ok;
    say(if write {
        "UNEXPECTED: writing was allowed"
    } else {
        "refused: the viewer does not write"
    });

    // The token kubectl was using, to try it again after the logout.
    let credential = run(
        "tka",
        &tka,
        &["credential", CLUSTER, "--server", &server_url],
        &env,
        false,
    )
    .await?;
    let credential: serde_json::Value = serde_json::from_str(&credential.stdout)?;
    let token = credential["status"]["token"]
        .as_str()
        .ok_or("tka credential gave no token")?;
    let stale = kube.kubeconfig_for_token(token)?;
    let stale_env = vec![
        ("HOME", work.path().display().to_string()),
        ("KUBECONFIG", stale.display().to_string()),
    ];

    step(6, "tka logout from the laptop");
    let logout = run("tka", &tka, &["logout", CLUSTER], &env, true).await?;
    if !logout.ok {
        return Err("tka logout failed".into());
    }
    run("kubectl", &kubectl, &["config", "get-contexts"], &env, true).await?;

    step(7, "kubectl with the token it was using, after the logout");
    say("the kubeconfig below holds the token the exec plugin handed kubectl before the logout");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut refused = false;
    while Instant::now() < deadline {
        let r = run(
            "kubectl",
            &kubectl,
            &["get", "ns", "--request-timeout=5s"],
            &stale_env,
            false,
        )
        .await?;
        if !r.ok {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    run(
        "kubectl",
        &kubectl,
        &["get", "ns", "--request-timeout=5s"],
        &stale_env,
        true,
    )
    .await?;
    say(if refused {
        "refused: after tka logout, kubectl no longer gets in; the demo ends here"
    } else {
        "UNEXPECTED: kubectl still works 15 s after tka logout"
    });

    println!(
        "\ndemo finished in {:.1} s; stopping everything",
        started.elapsed().as_secs_f64()
    );
    if read && !write && refused {
        Ok(())
    } else {
        Err("the demo saw something unexpected (see above)".into())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tokio::time::timeout(Duration::from_secs(300), demo()).await {
        Ok(Ok(())) => std::process::ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("demo failed: {e}");
            std::process::ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("demo took over 5 minutes; stopped");
            std::process::ExitCode::FAILURE
        }
    }
}
