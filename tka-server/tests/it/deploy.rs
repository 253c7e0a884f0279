//! The kustomize base in `tka-server/deploy`: the checked-in CRDs equal the generated ones, the
//! RBAC is exactly DESIGN §5.1 (no wildcards, no escalate/impersonate, `bind` only on the
//! allowlist, which the admission policy repeats), the token reaches the server container only,
//! and the base renders with the machine's kubectl.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(file)).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[test]
fn the_checked_in_crds_are_the_generated_ones() {
    let checked_in = std::fs::read_to_string(deploy_dir().join("crds.yaml")).unwrap();
    assert_eq!(
        checked_in.trim_end(),
        tka_core::kubernetes::crds_yaml().trim_end(),
        "deploy/crds.yaml drifted: regenerate it with `tka-server crds > tka-server/deploy/crds.yaml`"
    );
}

#[test]
fn rbac_is_least_privilege_with_bind_only_on_the_allowlist() {
    let docs = documents("rbac.yaml");
    let mut bind_names = Vec::new();
    let mut binding_verbs = Vec::new();
    for doc in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
    {
        for rule in doc["rules"].as_array().unwrap() {
            let verbs = strings(&rule["verbs"]);
            for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                assert!(
                    !strings(&rule[field]).iter().any(|s| s.contains('*')),
                    "wildcard in {rule}"
                );
            }
            for forbidden in ["escalate", "impersonate"] {
                assert!(
                    !verbs.iter().any(|v| v == forbidden),
                    "{forbidden} in {rule}"
                );
            }
            if verbs.iter().any(|v| v == "bind") {
                let names = strings(&rule["resourceNames"]);
                assert!(!names.is_empty(), "bind without resourceNames: {rule}");
                bind_names.extend(names);
            }
            if strings(&rule["resources"])
                .iter()
                .any(|r| r == "clusterrolebindings" || r == "rolebindings")
            {
                binding_verbs.extend(verbs);
            }
            // ServiceAccounts and tokens only in the server's own namespace.
            if strings(&rule["resources"])
                .iter()
                .any(|r| r.starts_with("serviceaccounts"))
            {
                assert_eq!(doc["kind"], "Role", "{rule}");
                assert_eq!(doc["metadata"]["namespace"], "tka-system");
            }
        }
    }
    // The default allowlist; bindings are created and deleted, never updated or patched.
    assert_eq!(bind_names, ["view", "edit"]);
    assert!(binding_verbs.iter().any(|v| v == "create"));
    assert!(binding_verbs.iter().any(|v| v == "delete"));
    assert!(!binding_verbs.iter().any(|v| v == "update" || v == "patch"));

    // The admission policy repeats the same allowlist.
    let admission = documents("admission.yaml");
    let bindings_policy = admission
        .iter()
        .find(|d| {
            d["metadata"]["name"] == "tka-server-bindings"
                && d["kind"] == "ValidatingAdmissionPolicy"
        })
        .unwrap();
    let allowed = bindings_policy["spec"]["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "allowedRoles")
        .unwrap()["expression"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(allowed, "['view', 'edit']");
    // Both policies are bound, so they are enforced.
    for policy in ["tka-server-bindings", "tka-sessions"] {
        assert!(
            admission
                .iter()
                .any(|d| d["kind"] == "ValidatingAdmissionPolicyBinding"
                    && d["spec"]["policyName"] == policy
                    && strings(&d["spec"]["validationActions"]) == ["Deny"])
        );
    }
}

#[test]
fn the_servers_token_reaches_the_server_container_only() {
    let docs = documents("deployment.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["securityContext"]["sysctls"][0]["name"],
        "net.ipv4.ip_unprivileged_port_start"
    );
    let token_volumes: Vec<String> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| {
            v["projected"]["sources"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s.get("serviceAccountToken").is_some()))
        })
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(token_volumes.len(), 1);
    let mounts = |container: &str| -> Vec<String> {
        let c = pod["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == container)
            .unwrap();
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(mounts("tka-server").contains(&token_volumes[0]));
    assert!(!mounts("tailscaled").contains(&token_volumes[0]));
    // The sidecar opens no proxy on the pod network and keeps its state to itself.
    let sidecar = pod["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tailscaled")
        .unwrap();
    let env: Vec<(String, String)> = sidecar["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap_or("<from>").to_owned(),
            )
        })
        .collect();
    let has = |name: &str| env.iter().any(|(n, _)| n == name);
    assert!(!has("TS_SOCKS5_SERVER") && !has("TS_OUTBOUND_HTTP_PROXY_LISTEN"));
    assert!(env.contains(&("TS_KUBE_SECRET".into(), String::new())));
    assert!(env.contains(&("TS_USERSPACE".into(), "true".into())));
    assert!(has("TS_AUTHKEY"));
}

#[test]
fn the_base_renders_with_kubectl() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let out = match std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(deploy_dir())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "skipped: {kubectl} cannot run here ({e}); the structure tests above still check the files"
            );
            return;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| Value::deserialize(d).unwrap())
        .map(|v| v["kind"].as_str().unwrap().to_owned())
        .collect();
    for kind in [
        "Namespace",
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "Role",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "Deployment",
        "NetworkPolicy",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing: {kinds:?}");
    }
    assert!(
        !kinds.iter().any(|k| k == "GrantMapping"),
        "examples are not part of the base"
    );
}

/// Renders `deploy/` with the `components/proxy` component through an overlay in a temporary
/// directory (kustomize wants relative paths, and an overlay outside the base); `None` when
/// kubectl cannot run here.
fn render_with_proxy_component() -> Option<Vec<Value>> {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let overlay = tempfile::tempdir().unwrap();
    let up = "../".repeat(overlay.path().components().count() - 1);
    let base = deploy_dir();
    let base = base.to_str().unwrap().trim_start_matches('/');
    std::fs::write(
        overlay.path().join("kustomization.yaml"),
        format!("resources: [\"{up}{base}\"]\ncomponents: [\"{up}{base}/components/proxy\"]\n"),
    )
    .unwrap();
    let out = match std::process::Command::new(&kubectl)
        .arg("kustomize")
        .arg(overlay.path())
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: {kubectl} cannot run here ({e})");
            return None;
        }
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8(out.stdout).unwrap();
    Some(
        serde_yaml::Deserializer::from_str(&rendered)
            .map(|d| Value::deserialize(d).unwrap())
            .collect(),
    )
}

/// The `components/proxy` kustomize component turns the proxy on, and what it renders (its
/// ConfigMap values with the base's, and the container's environment) is accepted by the
/// server's own flag parsing: a loopback proxy listener in userspace mode, the advertised URL.
#[test]
fn the_proxy_component_turns_the_proxy_on_with_settings_the_server_accepts() {
    use clap::{CommandFactory as _, Parser as _};
    use tka_server::cli::{Cli, Command};

    let Some(docs) = render_with_proxy_component() else {
        return;
    };
    let config = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "tka-server")
        .expect("the server's ConfigMap");
    let data = config["data"].as_object().unwrap();
    assert_eq!(data["TKA_PROXY_LISTEN"], "127.0.0.1:8443");
    assert!(
        data["TKA_PROXY_URL"]
            .as_str()
            .unwrap()
            .starts_with("http://")
    );
    assert!(!data.contains_key("TKA_PROXY_ONLY"), "proxy-only is opt-in");

    // The container's environment: the ConfigMap, then its own `env` (the pod's fields filled
    // in as the kubelet would).
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tka-server")
        .unwrap();
    let mut env: Vec<(String, String)> = data
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect();
    let ca = tempfile::NamedTempFile::new().unwrap();
    let pair = rcgen::generate_simple_self_signed(vec!["kubernetes".to_owned()]).unwrap();
    std::fs::write(ca.path(), pair.cert.pem()).unwrap();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = match (name.as_str(), e["value"].as_str()) {
            ("TKA_NAMESPACE", _) => "tka-system".to_owned(),
            ("TKA_API_SERVER_CA_FILE", _) => ca.path().display().to_string(),
            (_, Some(v)) => v.replace("$(POD_IP)", "10.244.0.7"),
            (_, None) => continue,
        };
        env.push((name, value));
    }
    // Each variable becomes the flag whose environment twin it is (as clap reads them in the
    // pod); TS_* belong to the sidecar.
    let command = Cli::command();
    let serve = command.find_subcommand("serve").unwrap();
    let mut argv = vec!["tka-server".to_owned(), "serve".to_owned()];
    for (name, value) in &env {
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()))
        else {
            assert!(name.starts_with("TS_"), "{name} is no flag's twin");
            continue;
        };
        argv.push(format!("--{}", arg.get_long().unwrap()));
        if arg.get_action().takes_values() {
            argv.push(value.clone());
        } else {
            assert_eq!(value, "true", "{name}");
        }
    }
    let cli = Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
    let Command::Serve(args) = cli.command else {
        panic!("serve expected");
    };
    let settings = tka_server::Settings::try_from(*args).unwrap_or_else(|e| panic!("{e}"));
    let proxy = settings.proxy.as_ref().expect("the proxy is on");
    assert_eq!(proxy.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(Some(proxy.url.clone()), settings.cluster.proxy);
    assert!(settings.cluster.direct_tokens);
}
