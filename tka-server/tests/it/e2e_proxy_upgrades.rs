//! `kubectl exec` and `kubectl port-forward` through the tailnet API proxy (DESIGN §8), over
//! WebSocket and over SPDY: real kubectl on the `laptop` node (through its SOCKS5 proxy, a
//! kubeconfig with no credential), the built `tka-server` with its proxy listener on the
//! `cluster` node's userspace tailscaled, and behind it the fake upstream API server
//! (`FakeUpstream`: the test environment has no kubelet, see docs/testing.md). The session and
//! its token are real (KubeEnv's API server). Bytes go both ways; the upstream sees the
//! session's ServiceAccount token, never a client credential; a device without a session gets
//! the 401 and reaches nothing; the streams end when the session does.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tka_testkit::testenv::{
    FakeUpstream, KubeEnv, KubectlPortForward, RecordedRequest, ServerProcess, StreamProtocol,
    TailnetEnv, TailnetNode, bin_dir_or_skip, exclusive, kubectl_exec, viewer_mapping,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::e2e_refusals::Http;
use crate::e2e_tailnet::{CLUSTER, free_port, run};

/// A kubeconfig for the proxy as a proxied `tka login` writes it: the proxy URL, the node's
/// SOCKS5 proxy, and a user with no credential at all.
pub(super) fn proxied_kubeconfig(
    dir: &Path,
    name: &str,
    proxy_url: &str,
    node: &TailnetNode,
) -> PathBuf {
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: proxy\n  cluster:\n    server: {proxy_url}\n    proxy-url: socks5://127.0.0.1:{}\nusers:\n- name: nobody\n  user: {{}}\ncontexts:\n- name: proxy\n  context:\n    cluster: proxy\n    user: nobody\ncurrent-context: proxy\n",
            node.socks5_port
        ),
    )
    .unwrap();
    path
}

fn payload() -> Vec<u8> {
    (0..65_536u32)
        .map(|i| u8::try_from((i * 7 + i / 256) % 256).unwrap())
        .collect()
}

fn upgrades<'a>(
    requests: &'a [RecordedRequest],
    subresource: &str,
    protocol: StreamProtocol,
) -> Vec<&'a RecordedRequest> {
    requests
        .iter()
        .filter(|r| r.path == format!("/api/v1/namespaces/default/pods/echo/{subresource}"))
        .filter(|r| {
            r.upgrade()
                .is_some_and(|u| u.eq_ignore_ascii_case(protocol.upgrade_header()))
        })
        .collect()
}

/// `kubectl exec -i echo -- cat` with stdin held open: the child, its stdin and stdout.
pub(super) struct HeldExec {
    pub(super) child: tokio::process::Child,
    pub(super) stdin: tokio::process::ChildStdin,
    pub(super) stdout: tokio::process::ChildStdout,
}

pub(super) async fn held_exec(
    kubectl: &Path,
    kubeconfig: &Path,
    protocol: StreamProtocol,
    home: &Path,
) -> HeldExec {
    let mut child = tokio::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["exec", "-i", "echo", "--", "cat"])
        .env_remove("KUBECONFIG")
        .env("HOME", home)
        .envs(protocol.kubectl_env())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"before logout\n").await.unwrap();
    stdin.flush().await.unwrap();
    let mut line = vec![0u8; 14];
    tokio::time::timeout(Duration::from_secs(60), stdout.read_exact(&mut line))
        .await
        .expect("no echo within 60 s")
        .unwrap();
    assert_eq!(line, b"before logout\n");
    HeldExec {
        child,
        stdin,
        stdout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_kubectl_exec_and_port_forward_through_the_proxy_over_websocket_and_spdy() {
    let Some(bin) = bin_dir_or_skip(
        "e2e_kubectl_exec_and_port_forward_through_the_proxy_over_websocket_and_spdy",
    ) else {
        return;
    };
    let _permit = exclusive().await;
    let server_bin = PathBuf::from(env!("CARGO_BIN_EXE_tka-server"));

    let kube = KubeEnv::start(&bin).await.unwrap();
    kube.prepare_for_tka(&[viewer_mapping()]).await.unwrap();
    let tailnet =
        TailnetEnv::start_cluster_and_laptop(&bin, &["viewer"], &[("other", "bob@example.com")])
            .await
            .unwrap();
    let cluster = tailnet.node("cluster").unwrap().clone();
    let laptop = tailnet.node("laptop").unwrap().clone();
    let other = tailnet.node("other").unwrap().clone();

    let upstream = FakeUpstream::start(&bin).await.unwrap();
    let proxy_port = free_port();
    let proxy_url = format!("http://{}:{proxy_port}", cluster.ipv4);
    let server = ServerProcess::builder(&server_bin, &kube, &cluster, CLUSTER)
        .args([
            "--proxy-listen".to_owned(),
            format!("127.0.0.1:{proxy_port}"),
            "--proxy-upstream".to_owned(),
            upstream.url().to_owned(),
            "--proxy-upstream-ca".to_owned(),
            upstream.ca_file().unwrap().display().to_string(),
            "--proxy-url".to_owned(),
            proxy_url.clone(),
        ])
        .start()
        .await
        .unwrap();
    let log = || server.log();
    let api = format!("http://{}:{}", cluster.ipv4, server.port());
    let alice = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: api.clone(),
    };

    let work = tempfile::tempdir().unwrap();
    let home = work.path();
    let laptop_config = proxied_kubeconfig(home, "laptop", &proxy_url, &laptop);
    let other_config = proxied_kubeconfig(home, "other", &proxy_url, &other);
    let mut kubectls = vec![kube.kubectl()];
    if Path::new("/usr/bin/kubectl").exists() {
        kubectls.push(PathBuf::from("/usr/bin/kubectl"));
    }
    let input = payload();

    // Refused first: the laptop has no session yet, so the proxy answers 401 with what to run
    // and forwards nothing.
    let refused = kubectl_exec(
        &kube.kubectl(),
        &laptop_config,
        StreamProtocol::WebSocket,
        home,
        &["exec", "-i", "echo", "--", "cat"],
        b"x",
    )
    .await
    .unwrap();
    assert!(!refused.status.success(), "{refused:?}");
    // kubectl reports the 401 in its own words (the proxy forwards the discovery of a granted
    // device without a session, so the refusal is the exec request's).
    assert!(
        refused
            .stderr
            .contains("You must be logged in to the server"),
        "{refused:?}\nserver log:\n{}",
        log()
    );
    // The proxy's answer itself says what to run.
    let laptop_proxy = Http {
        socks5: format!("127.0.0.1:{}", laptop.socks5_port),
        base: proxy_url.clone(),
    };
    let (status, answer) = laptop_proxy
        .send("GET", "/api/v1/namespaces/default/pods/echo", &[], None)
        .await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["kind"], "Status", "{answer}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.contains(&format!("tka login {CLUSTER}"))),
        "{answer}"
    );
    assert_eq!(upstream.requests().unwrap(), Vec::new());

    for protocol in StreamProtocol::ALL {
        // Allowed: a session for the laptop (a login on the API).
        let (status, answer) = alice.login(r#"{"role":"viewer"}"#).await;
        assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());

        for kubectl in &kubectls {
            let tag = format!("{} {protocol:?}", kubectl.display());
            let out = kubectl_exec(
                kubectl,
                &laptop_config,
                protocol,
                home,
                &["exec", "-i", "echo", "--", "cat"],
                &input,
            )
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "{tag}: {}\nserver log:\n{}",
                out.stderr,
                log()
            );
            assert!(out.stdout == input, "{tag}: the echo differs");

            let forward =
                KubectlPortForward::start(kubectl, &laptop_config, protocol, home, "pod/echo", 80)
                    .await
                    .unwrap();
            let answer = forward.exchange(&input).await.unwrap();
            assert!(
                answer == input,
                "{tag}: the port-forward echo differs ({} bytes back); {}",
                answer.len(),
                forward.stderr()
            );
        }

        // What reached the upstream: the session's token on every upgrade, the same one.
        let requests = upstream.requests().unwrap();
        let mut tokens: Vec<&str> = Vec::new();
        for sub in ["exec", "portforward"] {
            let seen = upgrades(&requests, sub, protocol);
            assert_eq!(
                seen.len(),
                kubectls.len(),
                "{sub} {protocol:?}: {requests:#?}"
            );
            for request in seen {
                let token = request
                    .authorization()
                    .and_then(|a| a.strip_prefix("Bearer "))
                    .unwrap_or_else(|| panic!("no bearer token upstream: {request:?}"));
                assert!(request.header("Impersonate-User").is_none(), "{request:?}");
                tokens.push(token);
            }
        }
        tokens.dedup();
        assert_eq!(tokens.len(), 1, "one session, one token");
        // It is a real token of the session's ServiceAccount.
        let token_config = kube.kubeconfig_for_token(tokens[0]).unwrap();
        let whoami = run(
            &kube.kubectl(),
            &[
                "--kubeconfig",
                token_config.to_str().unwrap(),
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
            &[("HOME", home.display().to_string())],
        )
        .await;
        assert!(
            whoami.ok
                && whoami
                    .stdout
                    .starts_with("system:serviceaccount:tka-system:"),
            "{whoami:?}"
        );

        // The client's own Authorization is dropped for the session's token; an impersonation
        // attempt is refused and reaches nothing.
        let session_token = format!("Bearer {}", tokens[0]);
        let before = upstream.requests().unwrap().len();
        let (status, answer) = laptop_proxy
            .send(
                "GET",
                "/api/v1/namespaces/default/pods/echo",
                &["Authorization: Bearer client-chosen-token"],
                None,
            )
            .await;
        assert_eq!(status, 200, "{answer}\nserver log:\n{}", log());
        let requests = upstream.requests().unwrap();
        assert_eq!(requests.len(), before + 1, "{requests:#?}");
        assert_eq!(
            requests[before].authorization(),
            Some(session_token.as_str()),
            "{:?}",
            requests[before]
        );
        let (status, answer) = laptop_proxy
            .send(
                "GET",
                "/api/v1/namespaces/default/pods/echo",
                &["Impersonate-User: system:admin"],
                None,
            )
            .await;
        assert_eq!(status, 403, "{answer}");
        assert_eq!(upstream.requests().unwrap().len(), before + 1);

        // Refused: the other device, with no session, is told what to run and reaches nothing.
        let before = upstream.requests().unwrap().len();
        let refused = kubectl_exec(
            &kube.kubectl(),
            &other_config,
            protocol,
            home,
            &["exec", "-i", "echo", "--", "cat"],
            b"x",
        )
        .await
        .unwrap();
        assert!(!refused.status.success(), "{refused:?}");
        assert!(
            refused
                .stderr
                .contains("You must be logged in to the server"),
            "{refused:?}"
        );
        assert_eq!(upstream.requests().unwrap().len(), before);

        // The streams end with the session: an exec with stdin open and a port-forward.
        let seen_before = upstream.requests().unwrap().last().map_or(0, |r| r.seq);
        let mut held = held_exec(&kube.kubectl(), &laptop_config, protocol, home).await;
        let mut forward = KubectlPortForward::start(
            &kube.kubectl(),
            &laptop_config,
            protocol,
            home,
            "pod/echo",
            80,
        )
        .await
        .unwrap();
        assert_eq!(forward.exchange(b"ping").await.unwrap(), b"ping");
        let open: Vec<u64> = upgrades(&upstream.requests().unwrap(), "portforward", protocol)
            .iter()
            .filter(|r| r.seq > seen_before)
            .map(|r| r.seq)
            .collect();
        assert_eq!(open.len(), 1, "{:#?}", upstream.requests().unwrap());

        let (status, answer) = alice.send("DELETE", "/api/v1/session", &[], None).await;
        assert_eq!(status, 204, "{answer}\nserver log:\n{}", log());

        // kubectl exec ends (its stream is cut although stdin stays open).
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(Duration::from_secs(15), async {
            let _ = held.stdout.read_to_end(&mut rest).await;
            held.child.wait().await
        })
        .await;
        assert!(
            ended.is_ok(),
            "{protocol:?}: kubectl exec still runs 15 s after logout\nserver log:\n{}",
            log()
        );
        drop(held.stdin);
        // The port-forward's upstream stream ends too.
        let mut cut = false;
        for _ in 0..60 {
            let requests = upstream.requests().unwrap();
            if requests
                .iter()
                .any(|r| r.seq == open[0] && r.finished.is_some())
            {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            cut,
            "{protocol:?}: the port-forward stream is still open 15 s after logout; kubectl: {}\nserver log:\n{}",
            forward.stderr(),
            log()
        );
        let _ = forward.exited();

        // Now that kubectl has discovery cached (from the session's requests), its first request
        // is the pod's GET, and it prints the proxy's own message.
        let after = kubectl_exec(
            &kube.kubectl(),
            &laptop_config,
            protocol,
            home,
            &["exec", "-i", "echo", "--", "cat"],
            b"x",
        )
        .await
        .unwrap();
        assert!(!after.status.success(), "{after:?}");
        assert!(
            after.stderr.contains(&format!("tka login {CLUSTER}")),
            "{after:?}"
        );
    }
}
