//! kubectl's exec plugins as kubectl runs them, timed as whole processes (spawn until exit, its
//! output read through pipes), all in one run with the runs interleaved: each round runs every
//! case once, in an order that rotates from round to round, so the machine's noise falls on all
//! of them alike.
//!
//! The cases:
//! - `/bin/true` and `cat` of the seeded cache entry: the floor (start a process; start, read a
//!   file, print);
//! - `tka credential` hitting a seeded cache entry (server on a closed loopback port);
//! - with the real components (`TKA_TESTENV_BIN`, see tka-testkit/testenv): a control plane, a
//!   tailnet of two real tailscaled nodes and the built `tka-server serve` on the "cluster"
//!   node; on the "laptop" node, `tka login` writes a kubeconfig, and the exec command it wrote
//!   is run exactly (its args and environment) for
//!   - a cache hit on the entry the live server issued, and
//!   - a refresh: the entry is removed before each run, so each run locks, calls `POST
//!     /api/v1/token` through the laptop's SOCKS5 proxy over the tailnet, the server asks the API
//!     server for a TokenRequest, and the CLI stores the entry and prints;
//! - `gke-gcloud-auth-plugin` serving from its own cache file: a kubeconfig with a current
//!   context in a temporary directory and `gke_gcloud_auth_plugin_cache` next to it (what the
//!   plugin writes after a gcloud call), holding a token valid until 2099 for that context. PATH
//!   holds no gcloud, so a cache miss would fail the run.
//!
//! Every run is checked, outside the timing: exit status 0, nothing on stderr, an ExecCredential
//! on stdout with the expected token (the seeded or the live one for hits); a refresh must have
//! stored a new entry. Before each run, also outside the timing, a hit's entry gets its "last
//! handed out" time set back 10 minutes (a second hit within 30 s of an older fetch would count
//! as "asked again", kubectl having got a 401, and refresh, by design).
//!
//! After the cases, with the live setup, `--logins N` times `tka login` itself on the laptop node
//! (default 30, after 2 warm-up logins): each login is preceded by `tka logout` (untimed, so
//! every login creates a session), timed from spawn until the process has exited (the
//! kubeconfig is written by then: the token in the cache, the exec entry in the kubeconfig),
//! then `kubectl get ns` with that kubeconfig is run and timed on its own and must list the
//! `default` namespace. These run after the cases because a logout ends the session their
//! entries belong to.
//!
//! Nothing here asserts a timing: it prints a table (and with `--json FILE` writes the summary
//! and every sample). Bounded: `--runs` rounds after `--warmup`, stopped early at `--seconds`.
//!
//! Usage: `exec_plugin [--runs N] [--warmup N] [--seconds S] [--no-live] [--no-gke]
//! [--logins N] [--tka PATH] [--tka-server PATH] [--gke PATH] [--json FILE]`. `tka` and `tka-server` default
//! to the binaries next to this one (build them with the same profile).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tka_benches::{cache_file, fixtures};
use tka_testkit::testenv::{KubeEnv, ServerProcess, TailnetEnv, bin_dir, viewer_mapping};

/// The cluster name of the live setup.
const LIVE_CLUSTER: &str = "bench";
/// The GKE plugin as the Google Cloud CLI's Debian package installs it.
const GKE_PLUGIN: &str = "/usr/bin/gke-gcloud-auth-plugin";
/// The token in the GKE plugin's cache file.
const GKE_TOKEN: &str = "ya29.bench-token-served-from-the-plugin-cache";
/// The GKE kubeconfig's context (the plugin's cache is valid for one current context).
const GKE_CONTEXT: &str = "gke_bench-project_europe-west1_bench";
/// A bound on any one setup command (`tka login`, `kubectl apply`).
const SETUP_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
struct Args {
    runs: usize,
    warmup: usize,
    seconds: u64,
    live: bool,
    logins: usize,
    tka: PathBuf,
    server: PathBuf,
    gke: Option<PathBuf>,
    json: Option<PathBuf>,
}

fn sibling(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this program: {e}"))?;
    exe.parent()
        .map(|d| d.join(name))
        .ok_or_else(|| "this program has no directory".to_owned())
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        runs: 500,
        warmup: 20,
        seconds: 300,
        live: true,
        logins: 30,
        tka: sibling("tka")?,
        server: sibling("tka-server")?,
        gke: Some(PathBuf::from(GKE_PLUGIN)),
        json: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--no-live" => out.live = false,
            "--no-gke" => out.gke = None,
            _ => {
                let value = it.next().ok_or(format!("{flag} needs a value"))?;
                let number = || {
                    value
                        .parse::<usize>()
                        .map_err(|e| format!("{flag} {value}: {e}"))
                };
                match flag.as_str() {
                    "--runs" => out.runs = number()?,
                    "--warmup" => out.warmup = number()?,
                    "--seconds" => out.seconds = number()? as u64,
                    "--logins" => out.logins = number()?.min(1_000),
                    "--tka" => out.tka = PathBuf::from(&value),
                    "--tka-server" => out.server = PathBuf::from(&value),
                    "--gke" => out.gke = Some(PathBuf::from(&value)),
                    "--json" => out.json = Some(PathBuf::from(&value)),
                    _ => return Err(format!("unknown flag {flag}")),
                }
            }
        }
    }
    for (what, path) in [("tka", &out.tka), ("tka-server", &out.server)] {
        if !path.is_file() && (what == "tka" || out.live) {
            return Err(format!(
                "{} is missing: build it (`cargo build --release -p tka-cli -p tka-server`) or \
                 pass --{what} PATH",
                path.display()
            ));
        }
    }
    if let Some(gke) = &out.gke
        && !gke.is_file()
    {
        return Err(format!(
            "{} is missing: install google-cloud-cli-gke-gcloud-auth-plugin, pass --gke PATH, \
             or run with --no-gke",
            gke.display()
        ));
    }
    Ok(out)
}

/// What happens before a run, outside the timing.
#[derive(Debug)]
enum Prepare {
    Nothing,
    /// A cache hit: set the entry's "last handed out" time back.
    Backdate(PathBuf),
    /// A refresh: remove the entries (`*.json`) of this cache directory.
    RemoveEntries(PathBuf),
}

/// What a run must have done, checked outside the timing.
#[derive(Debug)]
enum Check {
    /// Exit 0, nothing on stderr.
    Quiet,
    /// Also an ExecCredential on stdout with this token.
    Token(String),
    /// Also an ExecCredential, and an entry stored in this cache directory.
    Stored(PathBuf),
}

#[derive(Debug)]
struct Case {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    prepare: Prepare,
    check: Check,
    samples: Vec<Duration>,
    tokens: std::collections::HashSet<String>,
}

impl Case {
    fn new(name: &'static str, program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self {
            name,
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            env: Vec::new(),
            prepare: Prepare::Nothing,
            check: Check::Quiet,
            samples: Vec::new(),
            tokens: std::collections::HashSet::new(),
        }
    }

    fn env(mut self, env: &[(String, String)]) -> Self {
        self.env = env.to_vec();
        self
    }

    fn prepare(&self) -> Result<(), String> {
        match &self.prepare {
            Prepare::Nothing => Ok(()),
            Prepare::Backdate(path) => cache_file::backdate(path).map_err(|e| e.to_string()),
            Prepare::RemoveEntries(dir) => {
                for path in json_files(dir)? {
                    std::fs::remove_file(&path)
                        .map_err(|e| format!("removing {}: {e}", path.display()))?;
                }
                Ok(())
            }
        }
    }

    /// One timed run; the time from spawn until exit with the output read.
    fn run(&mut self, record: bool) -> Result<(), String> {
        self.prepare()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("{}: running {}: {e}", self.name, self.program.display()))?;
        let took = start.elapsed();
        let fail = |why: String| {
            format!(
                "{}: {why}\nstdout: {}\nstderr: {}",
                self.name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        };
        if !out.status.success() {
            return Err(fail(format!("exited with {}", out.status)));
        }
        if !out.stderr.is_empty() {
            return Err(fail("wrote to stderr".to_owned()));
        }
        match &self.check {
            Check::Quiet => {}
            Check::Token(expected) => {
                let token = exec_credential_token(&out.stdout).map_err(&fail)?;
                if &token != expected {
                    return Err(fail("printed another token than the cached one".to_owned()));
                }
            }
            Check::Stored(dir) => {
                let token = exec_credential_token(&out.stdout).map_err(&fail)?;
                if json_files(dir)?.is_empty() {
                    return Err(fail("stored no cache entry".to_owned()));
                }
                if record {
                    self.tokens.insert(token);
                }
            }
        }
        if record {
            self.samples.push(took);
        }
        Ok(())
    }
}

fn json_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    Ok(entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect())
}

/// The token of an `ExecCredential` printed on stdout.
fn exec_credential_token(stdout: &[u8]) -> Result<String, String> {
    let value: Value =
        serde_json::from_slice(stdout).map_err(|e| format!("stdout is not JSON: {e}"))?;
    if value["kind"] != "ExecCredential" {
        return Err("stdout is not an ExecCredential".to_owned());
    }
    match value["status"]["token"].as_str() {
        Some(token) if !token.is_empty() => Ok(token.to_owned()),
        _ => Err("the ExecCredential has no token".to_owned()),
    }
}

fn path_str(path: &Path) -> String {
    path.display().to_string()
}

/// The floor and `tka credential` on a seeded entry; no server anywhere.
fn seeded_cases(tka: &Path, dir: &Path) -> Result<Vec<Case>, String> {
    let server = "http://127.0.0.1:9";
    let entry = cache_file::seed(&dir.join("cache"), server).map_err(|e| e.to_string())?;
    let env = vec![
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), path_str(&dir.join("home"))),
        ("XDG_CACHE_HOME".to_owned(), path_str(&dir.join("cache"))),
        ("XDG_STATE_HOME".to_owned(), path_str(&dir.join("state"))),
        ("XDG_CONFIG_HOME".to_owned(), path_str(&dir.join("config"))),
        ("KUBECONFIG".to_owned(), path_str(&dir.join("kubeconfig"))),
        ("TZ".to_owned(), "UTC".to_owned()),
        (
            "TKA_TAILSCALE_SOCKET".to_owned(),
            path_str(&dir.join("none.sock")),
        ),
        ("TKA_TAILSCALE_CLI".to_owned(), path_str(&dir.join("none"))),
    ];
    let token = fixtures::token().expose().clone();
    let mut hit = Case::new(
        "tka credential, cache hit (seeded entry)",
        tka,
        &[
            "credential",
            fixtures::CLUSTER,
            "--server",
            server,
            "--identity",
            fixtures::DEVICE,
        ],
    )
    .env(&env);
    hit.prepare = Prepare::Backdate(entry.clone());
    hit.check = Check::Token(token);
    let cat = Case::new(
        "cat of the cache entry (start, read, print)",
        "/bin/cat",
        &[path_str(&entry).as_str()],
    )
    .env(&env);
    Ok(vec![
        Case::new("/bin/true (start a process)", "/bin/true", &[]).env(&env),
        cat,
        hit,
    ])
}

/// `gke-gcloud-auth-plugin` with a kubeconfig and the plugin's cache file next to it.
fn gke_case(gke: &Path, dir: &Path) -> Result<Case, String> {
    let kube = dir.join("kube");
    let empty = dir.join("empty-path");
    for d in [&kube, &empty, &dir.join("home")] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let kubeconfig = kube.join("config");
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {GKE_CONTEXT}\n  cluster:\n    \
         server: https://127.0.0.1:9\ncontexts:\n- name: {GKE_CONTEXT}\n  context:\n    \
         cluster: {GKE_CONTEXT}\n    user: {GKE_CONTEXT}\ncurrent-context: {GKE_CONTEXT}\n\
         users:\n- name: {GKE_CONTEXT}\n  user:\n    exec:\n      apiVersion: \
         client.authentication.k8s.io/v1beta1\n      command: gke-gcloud-auth-plugin\n      \
         provideClusterInfo: true\n      interactiveMode: Never\n"
    );
    std::fs::write(&kubeconfig, config)
        .map_err(|e| format!("writing {}: {e}", kubeconfig.display()))?;
    // The plugin's own cache: what it writes after asking gcloud, keyed by the current context
    // and the extra gcloud arguments (none here).
    let cache = json!({
        "current_context": GKE_CONTEXT,
        "access_token": GKE_TOKEN,
        "token_expiry": "2099-01-01T00:00:00Z",
        "extra_args": "",
    });
    let cache_path = kube.join("gke_gcloud_auth_plugin_cache");
    std::fs::write(&cache_path, cache.to_string())
        .map_err(|e| format!("writing {}: {e}", cache_path.display()))?;
    let env = vec![
        ("PATH".to_owned(), path_str(&empty)),
        ("HOME".to_owned(), path_str(&dir.join("home"))),
        ("KUBECONFIG".to_owned(), path_str(&kubeconfig)),
        ("TZ".to_owned(), "UTC".to_owned()),
    ];
    let mut case = Case::new("gke-gcloud-auth-plugin, cache hit", gke, &[]).env(&env);
    case.check = Check::Token(GKE_TOKEN.to_owned());
    Ok(case)
}

/// The real components, kept running while the cases run.
struct Live {
    server: ServerProcess,
    _tailnet: TailnetEnv,
    _kube: KubeEnv,
    /// `tka login` on the laptop, as the setup ran it.
    login: LoginCommands,
}

/// The laptop's `tka login`, `tka logout` and `kubectl get ns`, with the laptop's environment.
#[derive(Debug)]
struct LoginCommands {
    tka: PathBuf,
    kubectl: PathBuf,
    login: Vec<String>,
    logout: Vec<String>,
    env: Vec<(String, String)>,
}

async fn command(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SETUP_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("{} {args:?} took over {SETUP_TIMEOUT:?}", program.display()))?
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} failed: {}{}",
            program.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exec section of a kubeconfig user.
#[derive(Debug)]
struct Exec {
    command: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

/// The exec section of the current context's user in a kubeconfig.
fn exec_of(kubeconfig: &Path) -> Result<Exec, String> {
    let text = std::fs::read_to_string(kubeconfig)
        .map_err(|e| format!("reading {}: {e}", kubeconfig.display()))?;
    let config: Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", kubeconfig.display()))?;
    let by_name = |list: &str, name: &Value| {
        config[list]
            .as_array()
            .and_then(|items| items.iter().find(|i| &i["name"] == name).cloned())
    };
    let context = by_name("contexts", &config["current-context"])
        .ok_or("the kubeconfig has no current context")?;
    let user = by_name("users", &context["context"]["user"]).ok_or("no user for the context")?;
    let exec = &user["user"]["exec"];
    let command = exec["command"]
        .as_str()
        .ok_or("the user has no exec command")?;
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let env = exec["env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_owned(),
                        e["value"].as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Exec {
        command: PathBuf::from(command),
        args: strings(&exec["args"]),
        env,
    })
}

/// Starts the control plane, the tailnet and the server; logs the laptop in; returns the
/// components and the live hit and refresh cases.
async fn live(tka: &Path, server_bin: &Path, dir: &Path) -> Result<(Live, Vec<Case>), String> {
    let bin = bin_dir().map_err(|e| e.to_string())?;
    let err = |e: tka_testkit::testenv::TestEnvError| e.to_string();
    let kube = KubeEnv::start(&bin).await.map_err(err)?;
    kube.prepare_for_tka(&[viewer_mapping()])
        .await
        .map_err(err)?;
    let tailnet = TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[])
        .await
        .map_err(err)?;
    let cluster = tailnet.node("cluster").ok_or("no cluster node")?.clone();
    let laptop = tailnet.node("laptop").ok_or("no laptop node")?.clone();
    // Refreshes come back to back: lift the per-device rate limit (60/min, burst 20) out of
    // the way, or most of them would be answered 429.
    let server = ServerProcess::builder(server_bin, &kube, &cluster, LIVE_CLUSTER)
        .args([
            "--rate-limit-per-minute",
            "1000000",
            "--rate-limit-burst",
            "100000",
        ])
        .start()
        .await
        .map_err(err)?;

    let home = dir.join("laptop");
    let kubeconfig = home.join(".kube").join("config");
    let fetch_cache = home.join(".cache");
    let env = vec![
        ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), path_str(&home)),
        (
            "XDG_CONFIG_HOME".to_owned(),
            path_str(&home.join(".config")),
        ),
        ("XDG_CACHE_HOME".to_owned(), path_str(&fetch_cache)),
        ("XDG_STATE_HOME".to_owned(), path_str(&home.join(".state"))),
        ("KUBECONFIG".to_owned(), path_str(&kubeconfig)),
        ("TZ".to_owned(), "UTC".to_owned()),
        (
            "TKA_SOCKS5".to_owned(),
            format!("127.0.0.1:{}", laptop.socks5_port),
        ),
        ("TKA_TAILSCALE_SOCKET".to_owned(), path_str(&laptop.socket)),
    ];
    std::fs::create_dir_all(&home).map_err(|e| format!("creating {}: {e}", home.display()))?;
    let login_args = ["login", LIVE_CLUSTER, "--server", &server.url()].map(str::to_owned);
    if let Err(e) = command(tka, &login_args, &env).await {
        return Err(format!("{e}\nserver log:\n{}", server.log()));
    }
    // What kubectl runs: the exec section tka login wrote, with its environment on top.
    let Exec {
        command: program,
        args,
        env: exec_env,
    } = exec_of(&kubeconfig)?;
    let mut run_env = env.clone();
    run_env.extend(exec_env);
    let printed = command(&program, &args, &run_env).await?;
    let token = exec_credential_token(printed.as_bytes())?;
    // The hit case reads a copy of the live entry from its own cache directory.
    let entries = json_files(&fetch_cache.join("tka"))?;
    let [entry] = entries.as_slice() else {
        return Err(format!(
            "expected one cache entry after a credential, found {entries:?}"
        ));
    };
    let hit_cache = home.join("hit-cache");
    cache_file::copy_entry(entry, &hit_cache).map_err(|e| e.to_string())?;
    let hit_entry = hit_cache
        .join("tka")
        .join(entry.file_name().ok_or("entry without a name")?);
    let with_cache = |cache: &Path| {
        let mut e = run_env.clone();
        for (k, v) in &mut e {
            if k == "XDG_CACHE_HOME" {
                *v = path_str(cache);
            }
        }
        e
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut hit = Case::new("tka credential, cache hit (live entry)", &program, &args)
        .env(&with_cache(&hit_cache));
    hit.prepare = Prepare::Backdate(hit_entry);
    hit.check = Check::Token(token);
    let mut refresh = Case::new(
        "tka credential, refresh from the live server over the tailnet",
        &program,
        &args,
    )
    .env(&with_cache(&fetch_cache));
    refresh.prepare = Prepare::RemoveEntries(fetch_cache.join("tka"));
    refresh.check = Check::Stored(fetch_cache.join("tka"));
    let login = LoginCommands {
        tka: tka.to_owned(),
        kubectl: kube.kubectl(),
        login: login_args.to_vec(),
        logout: ["logout", LIVE_CLUSTER, "--server", &server.url()]
            .map(str::to_owned)
            .to_vec(),
        env,
    };
    Ok((
        Live {
            server,
            _tailnet: tailnet,
            _kube: kube,
            login,
        },
        vec![hit, refresh],
    ))
}

/// One process run to its end with `env` only; its time from spawn to exit (output read), or
/// an error with its output when it failed.
fn timed(
    program: &Path,
    args: &[String],
    env: &[(String, String)],
) -> Result<(Duration, String), String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("running {}: {e}", program.display()))?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "{} {args:?} exited with {}: {}{}",
            program.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// `tka login` wall times on the laptop (each after an untimed `tka logout`), then `kubectl get
/// ns` with the kubeconfig it wrote; `warmup` logins are not recorded. Bounded by `deadline`.
fn logins(
    commands: &LoginCommands,
    n: usize,
    warmup: usize,
    deadline: Instant,
) -> Result<Vec<Case>, String> {
    let mut login = Case::new(
        "tka login (new session, over the tailnet)",
        &commands.tka,
        &[],
    );
    let mut kubectl = Case::new(
        "kubectl get ns right after (exec plugin cache hit)",
        &commands.kubectl,
        &[],
    );
    let mut both = Case::new("tka login + kubectl get ns", &commands.tka, &[]);
    let get_ns: Vec<String> = ["get", "ns", "-o", "name", "--request-timeout=20s"]
        .map(str::to_owned)
        .to_vec();
    for i in 0..warmup + n {
        if Instant::now() > deadline {
            eprintln!("stopping the logins after {i}: the deadline was reached");
            break;
        }
        timed(&commands.tka, &commands.logout, &commands.env)?;
        let (took_login, _) = timed(&commands.tka, &commands.login, &commands.env)?;
        let (took_get, listed) = timed(&commands.kubectl, &get_ns, &commands.env)?;
        if !listed.lines().any(|l| l.trim() == "namespace/default") {
            return Err(format!(
                "kubectl get ns after tka login did not list namespace/default: {listed}"
            ));
        }
        if i >= warmup {
            login.samples.push(took_login);
            kubectl.samples.push(took_get);
            both.samples.push(took_login + took_get);
        }
    }
    Ok(vec![login, kubectl, both])
}

/// What the live server counted, from its ops listener's `/metrics`.
#[derive(Debug)]
struct ServerCounts {
    minted: u64,
    whois_count: u64,
    whois_mean_ms: f64,
}

/// Reads `/metrics` from the ops listener (plain HTTP/1.1 on loopback, bounded by 10 s).
fn server_counts(ops: std::net::SocketAddr) -> Result<ServerCounts, String> {
    use std::io::Read as _;
    let fail = |e: std::io::Error| format!("reading the server's metrics on {ops}: {e}");
    let mut stream =
        std::net::TcpStream::connect_timeout(&ops, Duration::from_secs(10)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(fail)?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {ops}\r\nConnection: close\r\n\r\n"
    )
    .map_err(fail)?;
    let mut text = String::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_string(&mut text)
        .map_err(fail)?;
    let value = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let whois_count = value("tka_whois_duration_seconds_count");
    Ok(ServerCounts {
        minted: value("tka_tokens_minted_total") as u64,
        whois_count: whois_count as u64,
        whois_mean_ms: value("tka_whois_duration_seconds_sum") * 1e3 / whois_count.max(1.0),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn report(cases: &[Case], rounds: usize, elapsed: Duration, load: (&str, &str)) -> (String, Value) {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "{rounds} interleaved rounds in {:.1} s; load average {} at the start, {} at the end\n",
        elapsed.as_secs_f64(),
        load.0,
        load.1
    );
    let _ = writeln!(
        table,
        "| case | runs | median | p90 | p99 | mean | min | max |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|---|---|");
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for case in cases {
        let mut sorted = case.samples.clone();
        sorted.sort();
        let mean = if sorted.is_empty() {
            Duration::ZERO
        } else {
            sorted.iter().sum::<Duration>() / sorted.len() as u32
        };
        let (median, p90, p99) = (
            percentile(&sorted, 50.0),
            percentile(&sorted, 90.0),
            percentile(&sorted, 99.0),
        );
        let (min, max) = (
            sorted.first().copied().unwrap_or_default(),
            sorted.last().copied().unwrap_or_default(),
        );
        medians.push((case.name, median));
        let _ = writeln!(
            table,
            "| {} | {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            case.name,
            sorted.len(),
            ms(median),
            ms(p90),
            ms(p99),
            ms(mean),
            ms(min),
            ms(max)
        );
        rows.push(json!({
            "case": case.name,
            "runs": sorted.len(),
            "median_ms": ms(median),
            "p90_ms": ms(p90),
            "p99_ms": ms(p99),
            "mean_ms": ms(mean),
            "min_ms": ms(min),
            "max_ms": ms(max),
            "distinct_tokens": (!case.tokens.is_empty()).then_some(case.tokens.len()),
            "samples_ms": case.samples.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        }));
    }
    if cases.iter().any(|c| c.name.starts_with("tka login (")) {
        let _ = writeln!(
            table,
            "\nThe last three rows ran after the rounds, one login after another (each after an \
             untimed `tka logout`; 2 warm-up logins not recorded), not interleaved with the others."
        );
    }
    for case in cases.iter().filter(|c| !c.tokens.is_empty()) {
        let _ = writeln!(
            table,
            "\n{}: {} distinct tokens in {} runs",
            case.name,
            case.tokens.len(),
            case.samples.len()
        );
    }
    let find = |prefix: &str| {
        medians
            .iter()
            .find(|(n, _)| n.starts_with(prefix))
            .map(|m| m.1)
    };
    if let (Some(tka), Some(gke)) = (
        find("tka credential, cache hit (seeded"),
        find("gke-gcloud-auth-plugin"),
    ) {
        let _ = writeln!(
            table,
            "\ncache hit medians: tka {:.2} ms, gke-gcloud-auth-plugin {:.2} ms ({:.2}x)",
            ms(tka),
            ms(gke),
            gke.as_secs_f64() / tka.as_secs_f64().max(f64::EPSILON)
        );
    }
    let summary = json!({
        "rounds": rounds,
        "seconds": elapsed.as_secs_f64(),
        "loadavg_start": load.0,
        "loadavg_end": load.1,
        "cases": rows,
    });
    (table, summary)
}

fn measure(cases: &mut [Case], args: &Args) -> Result<(usize, Duration), String> {
    for round in 0..args.warmup {
        for i in 0..cases.len() {
            let n = cases.len();
            cases[(i + round) % n].run(false)?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let started = Instant::now();
    let mut rounds = 0;
    for round in 0..args.runs {
        if Instant::now() > deadline {
            eprintln!(
                "stopping after {round} rounds: --seconds {} reached",
                args.seconds
            );
            break;
        }
        let n = cases.len();
        for i in 0..n {
            cases[(i + round) % n].run(true)?;
        }
        rounds += 1;
    }
    Ok((rounds, started.elapsed()))
}

fn run() -> Result<(), String> {
    let args = args()?;
    let work = tempfile::Builder::new()
        .prefix("tka-exec-bench-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let mut cases = seeded_cases(&args.tka, &work.path().join("seeded"))?;
    if let Some(gke) = &args.gke {
        cases.push(gke_case(gke, &work.path().join("gke"))?);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))?;
    let live = if args.live {
        eprintln!("starting the control plane, the tailnet and tka-server (some seconds)");
        let live_dir = work.path().join("live");
        std::fs::create_dir_all(&live_dir)
            .map_err(|e| format!("creating {}: {e}", live_dir.display()))?;
        let (live, more) = runtime.block_on(live(&args.tka, &args.server, &live_dir))?;
        cases.extend(more);
        Some(live)
    } else {
        None
    };
    let load_start = loadavg();
    let mut outcome = measure(&mut cases, &args);
    if args.logins > 0
        && outcome.is_ok()
        && let Some(live) = &live
    {
        eprintln!("timing {} tka logins on the laptop", args.logins);
        let deadline = Instant::now() + Duration::from_secs(args.seconds);
        match logins(&live.login, args.logins, 2, deadline) {
            Ok(more) => cases.extend(more),
            Err(e) => outcome = Err(e),
        }
    }
    let load_end = loadavg();
    if let (Err(_), Some(live)) = (&outcome, &live) {
        eprintln!("server log:\n{}", live.server.log());
    }
    let server = live.as_ref().map(|l| server_counts(l.server.ops()));
    runtime.block_on(async move { drop(live) });
    let (rounds, elapsed) = outcome?;
    let (mut table, mut summary) = report(&cases, rounds, elapsed, (&load_start, &load_end));
    if let Some(server) = server {
        let server = server?;
        let logins = 1 + cases
            .iter()
            .find(|c| c.name.starts_with("tka login ("))
            .map_or(0, |c| c.samples.len() + 2);
        let _ = writeln!(
            table,
            "\nthe server's metrics: {} tokens minted, for {logins} logins and {} refreshes \
             (warm-up included); whois answered by tailscaled in {:.2} ms on average ({} calls)",
            server.minted,
            args.warmup + rounds,
            server.whois_mean_ms,
            server.whois_count
        );
        summary["server"] = json!({
            "tokens_minted": server.minted,
            "whois_mean_ms": server.whois_mean_ms,
            "whois_count": server.whois_count,
        });
    }
    let _ = write!(std::io::stdout(), "{table}");
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("exec_plugin: {e}");
            std::process::ExitCode::from(2)
        }
    }
}
