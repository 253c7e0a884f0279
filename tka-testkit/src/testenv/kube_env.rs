//! [`KubeEnv`]: etcd, kube-apiserver and kube-controller-manager on free loopback ports with the
//! flags of `tka-testkit/testenv/README.md`, a PKI generated in-process, and admin access.
//!
//! It owns those three processes and their temporary directory; it must not change the API
//! server's flags per test (tests configure the cluster through the API).

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::PostParams;
use kube::{Api, ResourceExt as _};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tempfile::TempDir;
use tka_core::kubernetes::GrantMapping;

use super::{TestEnvError, Watchdog, free_port, io_err, log_tail, wait_tokio_child};

const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const API_TIMEOUT: Duration = Duration::from_secs(90);
const CONTROLLERS_TIMEOUT: Duration = Duration::from_secs(60);

/// A running control plane. Dropping it kills the three processes (controller-manager, API
/// server, etcd) and removes its directory.
pub struct KubeEnv {
    watchdog: Watchdog,
    /// In stop order: controller-manager, API server, etcd.
    children: Vec<(String, tokio::process::Child)>,
    client: kube::Client,
    api_url: String,
    ca_pem: String,
    admin_token: String,
    admin_kubeconfig: PathBuf,
    bin: PathBuf,
    /// kube-apiserver's flags, to start it again on the same port and etcd.
    api_args: Vec<String>,
    kubeconfigs: AtomicU32,
    dir: TempDir,
}

struct Pki {
    ca_pem: String,
    serving_cert: String,
    serving_key: String,
    sa_key: String,
    sa_pub: String,
}

fn pki() -> Result<Pki, TestEnvError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "tka-test-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_owned(),
        "kubernetes".to_owned(),
        "kubernetes.default".to_owned(),
        "kubernetes.default.svc".to_owned(),
        "kubernetes.default.svc.cluster.local".to_owned(),
    ])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress([127, 0, 0, 1].into()));
    serving
        .subject_alt_names
        .push(SanType::IpAddress([10, 0, 0, 1].into()));
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    // ServiceAccount tokens are signed with ECDSA P-256 (ES256), which kube-apiserver accepts;
    // the crypto backend in use generates no RSA keys.
    let sa = KeyPair::generate()?;
    Ok(Pki {
        ca_pem: ca_cert.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        sa_key: sa.serialize_pem(),
        sa_pub: sa.public_key_pem(),
    })
}

fn write(path: &Path, contents: &str) -> Result<(), TestEnvError> {
    std::fs::write(path, contents).map_err(io_err(format!("writing {}", path.display())))
}

pub(crate) fn write_secret(path: &Path, contents: &str) -> Result<(), TestEnvError> {
    write(path, contents)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io_err(format!("chmod {}", path.display())))
}

/// A kubeconfig for `server` with the CA embedded (when there is one) and a bearer token.
pub(crate) fn token_kubeconfig(server: &str, ca_pem: Option<&str>, token: &str) -> String {
    let ca = ca_pem
        .map(|pem| {
            format!(
                "\n    certificate-authority-data: {}",
                base64::engine::general_purpose::STANDARD.encode(pem)
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}{ca}\nusers:\n- name: user\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: user\ncurrent-context: test\n"
    )
}

async fn client_from(path: &Path) -> Result<kube::Client, TestEnvError> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| TestEnvError::Kube(format!("reading {}: {e}", path.display())))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| TestEnvError::Kube(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| TestEnvError::Kube(e.to_string()))
}

/// Polls `check` every 100 ms until it says ready, the child exits, or `limit` passes.
async fn wait_ready<F, Fut>(
    component: &str,
    child: &mut tokio::process::Child,
    log: &Path,
    limit: Duration,
    mut check: F,
) -> Result<(), TestEnvError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(TestEnvError::NotReady {
                component: component.to_owned(),
                detail: format!("it exited ({status}); {}", log_tail(log, 40)),
            });
        }
        if check().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(TestEnvError::NotReady {
                component: component.to_owned(),
                detail: format!("not ready after {limit:?}; {}", log_tail(log, 40)),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn spawn(
    watchdog: &mut Watchdog,
    bin: &Path,
    name: &str,
    dir: &Path,
    args: &[String],
) -> Result<tokio::process::Child, TestEnvError> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(io_err(format!("creating {}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io_err(format!("opening {}", log_path.display())))?;
    let child = tokio::process::Command::new(bin.join(name))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(io_err(format!("starting {}", bin.join(name).display())))?;
    watchdog.watch(child.id());
    Ok(child)
}

/// Waits (bounded) until kube-apiserver's `/readyz` says `ok`.
async fn wait_api_ready(
    client: &kube::Client,
    api: &mut tokio::process::Child,
    log: &Path,
) -> Result<(), TestEnvError> {
    wait_ready("kube-apiserver", api, log, API_TIMEOUT, || {
        let client = client.clone();
        async move {
            let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
                return false;
            };
            matches!(client.request_text(request).await, Ok(body) if body.trim() == "ok")
        }
    })
    .await
}

/// How many times [`KubeEnv::start`] starts the control plane when a port it picked was taken.
const START_ATTEMPTS: usize = 3;

/// Whether a start failed because a component could not bind its port (the error carries the
/// end of the component's log).
fn is_port_taken(error: &TestEnvError) -> bool {
    error.to_string().contains("address already in use")
}

impl std::fmt::Debug for KubeEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeEnv")
            .field("api_url", &self.api_url)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl KubeEnv {
    /// Starts etcd, the API server and the controller-manager from the binaries in `bin` (see
    /// [`bin_dir`](super::bin_dir)) and waits until the controllers have aggregated the
    /// default roles and published the namespace defaults.
    ///
    /// The ports are picked free and released before the components bind them, so another
    /// process can take one in between (an outgoing connection's ephemeral port, on a busy
    /// machine): a start that fails on a port already in use is made again, on new ports, up to
    /// [`START_ATTEMPTS`] times. The failed attempt's processes and directory are gone by then.
    pub async fn start(bin: &Path) -> Result<Self, TestEnvError> {
        let mut attempt = 1;
        loop {
            match Self::start_once(bin).await {
                Err(e) if attempt < START_ATTEMPTS && is_port_taken(&e) => {
                    eprintln!(
                        "testenv: a port was taken before the control plane bound it; starting again ({e})"
                    );
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn start_once(bin: &Path) -> Result<Self, TestEnvError> {
        let dir = tempfile::Builder::new()
            .prefix("tka-kube-")
            .tempdir()
            .map_err(io_err("creating the temporary directory"))?;
        let d = dir.path().to_path_buf();
        let mut watchdog = Watchdog::start()?;
        let pki = pki()?;
        write(&d.join("ca.crt"), &pki.ca_pem)?;
        write(&d.join("apiserver.crt"), &pki.serving_cert)?;
        write_secret(&d.join("apiserver.key"), &pki.serving_key)?;
        write_secret(&d.join("sa.key"), &pki.sa_key)?;
        write(&d.join("sa.pub"), &pki.sa_pub)?;
        let admin_token = format!("{:032x}", rand::random::<u128>());
        write_secret(
            &d.join("tokens.csv"),
            &format!("{admin_token},admin,admin-uid,\"system:masters\"\n"),
        )?;

        let etcd_client = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let api_url = format!("https://127.0.0.1:{api_port}");
        let p = |s: &str| d.join(s).display().to_string();

        let mut etcd = spawn(
            &mut watchdog,
            bin,
            "etcd",
            &d,
            &[
                "--name=tka-test".to_owned(),
                format!("--data-dir={}", p("etcd")),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=tka-test=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync".to_owned(),
                "--log-level=warn".to_owned(),
            ],
        )?;
        let etcd_addr = format!("127.0.0.1:{etcd_client}");
        wait_ready("etcd", &mut etcd, &d.join("etcd.log"), ETCD_TIMEOUT, || {
            let addr = etcd_addr.clone();
            async move {
                matches!(super::http::request(&addr, "GET", "/health", None).await,
                    Ok((200, body)) if body.contains("\"health\":\"true\""))
            }
        })
        .await?;
        let mut children = vec![("etcd".to_owned(), etcd)];

        let api_args = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={api_port}"),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-account-issuer={api_url}"),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--enable-priority-and-fairness=false".to_owned(),
        ];
        let mut api = spawn(&mut watchdog, bin, "kube-apiserver", &d, &api_args)?;
        let admin_kubeconfig = d.join("admin.kubeconfig");
        write_secret(
            &admin_kubeconfig,
            &token_kubeconfig(&api_url, Some(&pki.ca_pem), &admin_token),
        )?;
        let client = client_from(&admin_kubeconfig).await?;
        wait_api_ready(&client, &mut api, &d.join("kube-apiserver.log")).await?;
        children.insert(0, ("kube-apiserver".to_owned(), api));

        let mut kcm = spawn(
            &mut watchdog,
            bin,
            "kube-controller-manager",
            &d,
            &[
                format!("--kubeconfig={}", admin_kubeconfig.display()),
                "--secure-port=0".to_owned(),
                "--controllers=clusterrole-aggregation-controller,garbage-collector-controller,namespace-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller".to_owned(),
                "--use-service-account-credentials=false".to_owned(),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                "--leader-elect=false".to_owned(),
            ],
        )?;
        wait_ready(
            "kube-controller-manager",
            &mut kcm,
            &d.join("kube-controller-manager.log"),
            CONTROLLERS_TIMEOUT,
            || {
                let client = client.clone();
                async move {
                    let roles: Api<ClusterRole> = Api::all(client.clone());
                    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
                    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
                    let aggregated = matches!(roles.get_opt("view").await,
                        Ok(Some(r)) if r.rules.as_ref().is_some_and(|r| !r.is_empty()));
                    let sa = matches!(sas.get_opt("default").await, Ok(Some(_)));
                    let cm = matches!(cms.get_opt("kube-root-ca.crt").await, Ok(Some(_)));
                    aggregated && sa && cm
                }
            },
        )
        .await?;
        children.insert(0, ("kube-controller-manager".to_owned(), kcm));

        Ok(Self {
            watchdog,
            children,
            client,
            api_url,
            ca_pem: pki.ca_pem,
            admin_token,
            admin_kubeconfig,
            bin: bin.to_path_buf(),
            api_args,
            kubeconfigs: AtomicU32::new(0),
            dir,
        })
    }

    /// A client with `system:masters` rights.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// A kubeconfig file with the admin's static token.
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// The admin's static token (`system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// `https://127.0.0.1:PORT`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The cluster CA in PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The kubectl built with the API server.
    pub fn kubectl(&self) -> PathBuf {
        self.bin.join("kubectl")
    }

    /// The environment's temporary directory (logs are there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a kubeconfig that authenticates with `token` (https, the CA embedded).
    pub fn kubeconfig_for_token(&self, token: &str) -> Result<PathBuf, TestEnvError> {
        let n = self.kubeconfigs.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("token-{n}.kubeconfig"));
        write_secret(
            &path,
            &token_kubeconfig(&self.api_url, Some(&self.ca_pem), token),
        )?;
        Ok(path)
    }

    /// A kube client that authenticates with `token`.
    pub async fn client_for_token(&self, token: &str) -> Result<kube::Client, TestEnvError> {
        client_from(&self.kubeconfig_for_token(token)?).await
    }

    /// Creates tka's CRDs and waits (bounded) until the API server serves them.
    pub async fn install_crds(&self) -> Result<(), TestEnvError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        for crd in tka_core::kubernetes::crds() {
            match crds.create(&PostParams::default(), &crd).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(TestEnvError::Kube(format!("creating a CRD: {e}"))),
            }
        }
        self.wait_crds_established().await
    }

    /// Waits (bounded) until every tka CRD reports `Established`.
    pub async fn wait_crds_established(&self) -> Result<(), TestEnvError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let names: Vec<String> = tka_core::kubernetes::crds()
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for name in &names {
                let established = matches!(crds.get_opt(name).await, Ok(Some(crd)) if crd
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True"));
                all &= established;
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TestEnvError::NotReady {
                    component: "tka CRDs".to_owned(),
                    detail: "not Established after 30 s".to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What a test cluster needs before tka-server can start without deploy/: tka's CRDs, the
    /// `tka-system` namespace and `mappings`, created with the admin client.
    pub async fn prepare_for_tka(&self, mappings: &[GrantMapping]) -> Result<(), TestEnvError> {
        self.install_crds().await?;
        self.ensure_namespace("tka-system").await?;
        let api: Api<GrantMapping> = Api::all(self.client.clone());
        for mapping in mappings {
            api.create(&PostParams::default(), mapping)
                .await
                .map_err(|e| {
                    TestEnvError::Kube(format!("creating GrantMapping {}: {e}", mapping.name_any()))
                })?;
        }
        Ok(())
    }

    /// Creates a namespace unless it exists.
    pub async fn ensure_namespace(&self, name: &str) -> Result<(), TestEnvError> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let object = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            ..Default::default()
        };
        match namespaces.create(&PostParams::default(), &object).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(TestEnvError::Kube(format!(
                "creating namespace {name}: {e}"
            ))),
        }
    }
}

/// An API server outage: kube-apiserver stopped and started again on the same port, with the
/// same flags and the same etcd (everything stored survives; etcd and the controller-manager
/// keep running, the latter reconnecting on its own).
impl KubeEnv {
    /// Whether kube-apiserver is running (not stopped by [`KubeEnv::stop_api_server`]).
    pub fn api_server_running(&self) -> bool {
        self.children
            .iter()
            .any(|(name, _)| name == "kube-apiserver")
    }

    /// Stops kube-apiserver (SIGKILL, as a crashed or partitioned API server: no graceful
    /// goodbye to open watches) and waits until it has exited. Connections to its port are
    /// refused from then on. A no-op when it is already stopped.
    pub async fn stop_api_server(&mut self) -> Result<(), TestEnvError> {
        let Some(index) = self
            .children
            .iter()
            .position(|(name, _)| name == "kube-apiserver")
        else {
            return Ok(());
        };
        let (_, mut api) = self.children.remove(index);
        api.start_kill().map_err(io_err("killing kube-apiserver"))?;
        tokio::time::timeout(Duration::from_secs(10), api.wait())
            .await
            .map_err(|_| TestEnvError::NotReady {
                component: "kube-apiserver".to_owned(),
                detail: "did not exit within 10 s of SIGKILL".to_owned(),
            })?
            .map_err(io_err("waiting for kube-apiserver"))?;
        Ok(())
    }

    /// Starts kube-apiserver again after [`KubeEnv::stop_api_server`] (same port, flags, PKI
    /// and etcd) and waits (bounded) until its `/readyz` says `ok`. Its log goes on in the same
    /// file. A no-op when it is running.
    pub async fn start_api_server(&mut self) -> Result<(), TestEnvError> {
        if self.api_server_running() {
            return Ok(());
        }
        let d = self.dir.path().to_path_buf();
        let log_path = d.join("kube-apiserver.log");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&log_path)
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let log2 = log
            .try_clone()
            .map_err(io_err(format!("opening {}", log_path.display())))?;
        let mut api = tokio::process::Command::new(self.bin.join("kube-apiserver"))
            .args(&self.api_args)
            .current_dir(&d)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err("starting kube-apiserver again"))?;
        self.watchdog.watch(api.id());
        // The port was just released by the killed process; a bind that races its teardown
        // makes the new one exit, which `wait_ready` reports with the log.
        wait_api_ready(&self.client, &mut api, &log_path).await?;
        // Stop order stays controller-manager, API server, etcd.
        let at = self
            .children
            .iter()
            .position(|(name, _)| name == "etcd")
            .unwrap_or(self.children.len());
        self.children.insert(at, ("kube-apiserver".to_owned(), api));
        Ok(())
    }
}

impl Drop for KubeEnv {
    fn drop(&mut self) {
        // Stop order: controller-manager, API server, etcd (children is in that order).
        for (_, child) in &mut self.children {
            let _ = child.start_kill();
            wait_tokio_child(child, Duration::from_secs(5));
        }
        self.watchdog.fire();
    }
}

impl KubeEnv {
    /// Stops kube-controller-manager (bounded wait) and keeps the API server and etcd running:
    /// from then on nothing garbage-collects an object whose owner is gone, so a test sees what
    /// tka itself removes (DESIGN §5: garbage collection is a safety net only). What the
    /// controllers made at start (aggregated roles, namespace defaults) stays. Idempotent.
    pub fn stop_controller_manager(&mut self) {
        if let Some(at) = self
            .children
            .iter()
            .position(|(name, _)| name == "kube-controller-manager")
        {
            let (_, mut child) = self.children.remove(at);
            let _ = child.start_kill();
            wait_tokio_child(&mut child, Duration::from_secs(5));
        }
    }
}
