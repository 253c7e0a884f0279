//! Real kubectl's exec and port-forward upgrades, over WebSocket and over SPDY, against the fake
//! upstream API server (`FakeUpstream`; the test environment has no kubelet, so the real API
//! server cannot answer them). These prove the fake that the proxy's end-to-end tests put behind
//! the proxy: bytes go both ways, and it records what reached it, credential included.

use std::path::Path;
use std::time::Duration;

use tka_testkit::testenv::{
    FakeUpstream, KubectlPortForward, RecordedRequest, StreamProtocol, UpstreamScheme,
    bin_dir_or_skip, kubectl_exec,
};

use super::{eventually, kubectls_besides};

/// 64 KiB covering every byte value, so nothing on the way may treat the stream as text.
fn payload() -> Vec<u8> {
    (0..65_536u32)
        .map(|i| u8::try_from((i * 7 + i / 256) % 256).unwrap())
        .collect()
}

/// The upgraded requests to `subresource` that arrived with `protocol`.
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

/// Exec echoes over both protocols. kubectl sends the kubeconfig's credential only over TLS
/// (clientcmd drops the user's auth for a plain `http://` server), so `over_tls` says whether
/// the fake must have received the token or no `Authorization` at all.
async fn exec_echo_both_ways(upstream: &FakeUpstream, kubectl: &Path, home: &Path, over_tls: bool) {
    let token = format!("exec-token-{:016x}", rand::random::<u64>());
    let expected = over_tls.then(|| format!("Bearer {token}"));
    let kubeconfig = upstream.kubeconfig_for_token(&token).unwrap();
    let input = payload();
    for protocol in StreamProtocol::ALL {
        let tag = format!("{} {protocol:?}", kubectl.display());
        let out = kubectl_exec(
            kubectl,
            &kubeconfig,
            protocol,
            home,
            &["exec", "-i", "echo", "--", "cat"],
            &input,
        )
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{tag}: kubectl exec -i echo -- cat failed: {}",
            out.stderr
        );
        assert_eq!(out.stdout.len(), input.len(), "{tag}: {}", out.stderr);
        assert!(out.stdout == input, "{tag}: the echo differs");

        // The remote exit status comes back too: 0 above, 3 here.
        let out = kubectl_exec(
            kubectl,
            &kubeconfig,
            protocol,
            home,
            &["exec", "echo", "--", "exit", "3"],
            b"",
        )
        .await
        .unwrap();
        assert_eq!(out.status.code(), Some(3), "{tag}: {}", out.stderr);

        let requests = upstream.requests().unwrap();
        let execs = upgrades(&requests, "exec", protocol);
        assert_eq!(execs.len(), 2, "{tag}: {requests:#?}");
        for exec in execs {
            assert_eq!(exec.authorization(), expected.as_deref(), "{tag}: {exec:?}");
            assert!(exec.query.contains("command=cat") || exec.query.contains("command=exit"));
        }
        match protocol {
            StreamProtocol::WebSocket => assert!(
                upgrades(&requests, "exec", protocol).iter().all(|r| r
                    .header("Sec-Websocket-Protocol")
                    .is_some_and(|p| p.contains("v5.channel.k8s.io"))),
                "{requests:#?}"
            ),
            StreamProtocol::Spdy => assert!(
                upgrades(&requests, "exec", protocol).iter().all(|r| r
                    .header_values("X-Stream-Protocol-Version")
                    .contains(&"v5.channel.k8s.io")),
                "{requests:#?}"
            ),
        }
    }
    // Every request kubectl made with the first kubeconfig (discovery, the pod, the upgrades)
    // carried its token, and those of a run with another token carry that one (over TLS; over
    // plain HTTP none carries any): the record tells them apart.
    let other = upstream
        .kubeconfig_for_token("another-token-0123456789")
        .unwrap();
    let out = kubectl_exec(
        kubectl,
        &other,
        StreamProtocol::WebSocket,
        home,
        &["exec", "echo", "--", "echo", "hi"],
        b"",
    )
    .await
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(out.stdout, b"hi\n");
    let requests = upstream.requests().unwrap();
    let with_other: Vec<_> = requests
        .iter()
        .filter(|r| r.header("Kubectl-Session") == other_session(&requests))
        .collect();
    assert!(with_other.len() >= 2, "{requests:#?}");
    let others = if over_tls {
        Some("Bearer another-token-0123456789")
    } else {
        None
    };
    for request in &requests {
        if with_other.iter().any(|r| r.seq == request.seq) {
            assert_eq!(request.authorization(), others, "{request:?}");
        } else {
            assert_eq!(request.authorization(), expected.as_deref(), "{request:?}");
        }
    }
}

/// The `Kubectl-Session` of the last request (each kubectl run has its own).
fn other_session(requests: &[RecordedRequest]) -> Option<&str> {
    requests.last().and_then(|r| r.header("Kubectl-Session"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_echoes_stdin_over_websocket_and_spdy_and_the_fake_records_the_token() {
    let Some(bin) = bin_dir_or_skip(
        "kubectl_exec_echoes_stdin_over_websocket_and_spdy_and_the_fake_records_the_token",
    ) else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    for kubectl in kubectls_besides(bin.join("kubectl")) {
        let https = FakeUpstream::start(&bin).await.unwrap();
        assert!(https.url().starts_with("https://127.0.0.1:"));
        assert!(https.ca_file().is_some_and(Path::is_file));
        exec_echo_both_ways(&https, &kubectl, home.path(), true).await;

        // Plain HTTP serves the same (a proxy's upstream may be either); kubectl sends no
        // credential over it.
        let http = FakeUpstream::start_with(&bin, UpstreamScheme::Http)
            .await
            .unwrap();
        assert!(http.url().starts_with("http://127.0.0.1:"));
        assert!(http.ca_pem().is_none());
        exec_echo_both_ways(&http, &kubectl, home.path(), false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_echoes_over_websocket_and_spdy_and_the_fake_records_the_token() {
    let Some(bin) = bin_dir_or_skip(
        "kubectl_port_forward_echoes_over_websocket_and_spdy_and_the_fake_records_the_token",
    ) else {
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let input = payload();
    for kubectl in kubectls_besides(bin.join("kubectl")) {
        let upstream = FakeUpstream::start(&bin).await.unwrap();
        let token = format!("port-forward-token-{:016x}", rand::random::<u64>());
        let kubeconfig = upstream.kubeconfig_for_token(&token).unwrap();
        port_forward_echo_both_ways(
            &upstream,
            &kubectl,
            &kubeconfig,
            &token,
            home.path(),
            &input,
        )
        .await;
    }
}

async fn port_forward_echo_both_ways(
    upstream: &FakeUpstream,
    kubectl: &Path,
    kubeconfig: &Path,
    token: &str,
    home: &Path,
    input: &[u8],
) {
    for protocol in StreamProtocol::ALL {
        let tag = format!("{} {protocol:?}", kubectl.display());
        let mut forward =
            KubectlPortForward::start(kubectl, kubeconfig, protocol, home, "pod/echo", 80)
                .await
                .unwrap();
        assert!(forward.local_addr().ip().is_loopback());
        // Two connections through one port-forward, each echoed whole.
        for round in 0..2 {
            let answer = forward.exchange(input).await.unwrap();
            assert_eq!(
                answer.len(),
                input.len(),
                "{tag} round {round}: {}",
                forward.stderr()
            );
            assert!(answer == input, "{tag} round {round}: the echo differs");
        }
        assert!(forward.exited().is_none(), "{}", forward.stderr());

        let requests = upstream.requests().unwrap();
        let forwards = upgrades(&requests, "portforward", protocol);
        assert_eq!(forwards.len(), 1, "{tag}: {requests:#?}");
        let request = forwards[0];
        assert_eq!(
            request.authorization(),
            Some(format!("Bearer {token}").as_str()),
            "{request:?}"
        );
        match protocol {
            StreamProtocol::WebSocket => assert!(
                request
                    .header("Sec-Websocket-Protocol")
                    .is_some_and(|p| p.contains("SPDY/3.1+portforward.k8s.io")),
                "{request:?}"
            ),
            StreamProtocol::Spdy => assert_eq!(
                request.header("X-Stream-Protocol-Version"),
                Some("portforward.k8s.io"),
                "{request:?}"
            ),
        }
        // The stream is open while kubectl runs, and recorded as ended once kubectl is gone.
        assert_eq!(request.finished, None, "{request:?}");
        let seq = request.seq;
        drop(forward);
        let ended = eventually(Duration::from_secs(30), || async {
            upstream
                .requests()
                .unwrap()
                .iter()
                .any(|r| r.seq == seq && r.finished.is_some_and(|f| f.hijacked))
        })
        .await;
        assert!(ended, "{tag}: {:#?}", upstream.requests().unwrap());
    }
}
