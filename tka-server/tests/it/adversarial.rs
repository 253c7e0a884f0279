//! The adversarial suite: hostile requests against every endpoint of the API listener (the
//! routes come from [`tka_server::routes::api_endpoints`], the table the router is built from),
//! the ops listener ([`tka_server::ops::ops_paths`]) and the proxy listener, on a server built by
//! the production wiring (`wiring::server`) over a FakeCluster, which is also the proxy's
//! upstream, so a refused request that slipped through would really change something.
//!
//! Every case is sent as raw bytes on a fresh connection (so nothing a client library would
//! tidy up is lost), as a device with a live session and as a granted device without one, and
//! asserts three things: the status, the body (a problem document with its `code`, `type`,
//! `status`, `title` and `instance` on the API; a Kubernetes `Status` on the proxy; no metrics on
//! ops), and that no Kubernetes object changed (every Session, ServiceAccount, binding,
//! ConfigMap, Namespace and Secret, by uid and resourceVersion, and the count of minted tokens).
//! Each table ends with the same endpoints allowed, so the refusals are the tricks' doing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use tka_testkit::cluster::{FakeCluster, ResourceType, Verb};
use tka_testkit::tailnet::{FakePeer, PeerSpec};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::api_proxy::{Running, assert_status, client_as, connect_as, start_at};
use crate::listeners::{BOUND, exchange, status_of};
use crate::serve::{FakeWorld, get};

// ------------------------------------------------------------------ the world

/// Limits high enough that the breadth tables never meet them.
const ROOMY: &[&str] = &[
    "--rate-limit-per-minute",
    "60000",
    "--rate-limit-burst",
    "100000",
    "--proxy-rate-limit",
    "10000",
    "--proxy-rate-limit-burst",
    "100000",
    "--max-connections-per-peer",
    "1000",
];

/// The cap on request bodies in these tests.
const MAX_BODY: usize = 16 * 1024;

/// The production wiring on a FakeCluster (its own upstream for the proxy), with alice (granted
/// `sre`) logged in and bob (granted `sre` too) without a session.
struct Adversary {
    world: FakeWorld,
    running: Running,
    bob: FakePeer,
    /// alice's Session.
    alice_session: String,
}

impl Adversary {
    async fn start(extra: &[&str]) -> Self {
        let world = FakeWorld::new().await;
        world.cluster.register(ResourceType::namespaced(
            "",
            "v1",
            "configmaps",
            "ConfigMap",
        ));
        world
            .cluster
            .insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}))
            .unwrap();
        let kubeconfig = std::fs::read_to_string(&world.kubeconfig).unwrap();
        let upstream = kubeconfig
            .lines()
            .find_map(|l| l.trim().strip_prefix("server:"))
            .map(|s| s.trim().trim_matches('"').to_owned())
            .expect("the kubeconfig names its server");
        // `extra` overrides the roomy limits (a flag may be given once).
        let mut flags: Vec<&str> = ROOMY
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0]))
            .flatten()
            .copied()
            .collect();
        flags.extend(["--max-body-bytes", "16384"]);
        flags.extend_from_slice(extra);
        let running = start_at(&world, &upstream, &flags).await;
        let bob = world.tailnet.add(
            PeerSpec::user("bob@example.com", "bob-laptop")
                .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
        );
        let mut alice = client_as(&world, &world.alice, running.api).await;
        let response = alice.login(r#"{"role":"sre"}"#).await;
        assert_eq!(response.status, 200, "{}", response.text());
        let alice_session = response.json()["session"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            world,
            running,
            bob,
            alice_session,
        }
    }

    /// Whether alice's Session is still there.
    fn alice_session_exists(&self) -> bool {
        self.world
            .cluster
            .get_object("sessions", None, &self.alice_session)
            .is_some()
    }

    fn alice(&self) -> &FakePeer {
        &self.world.alice
    }

    async fn api_client(&self, peer: &FakePeer) -> crate::support::Client {
        client_as(&self.world, peer, self.running.api).await
    }

    /// Sends `request` on a fresh connection to `to` as `peer`; the whole answer.
    async fn send(&self, to: SocketAddr, peer: &FakePeer, request: &Raw) -> String {
        let stream = connect_as(&self.world, peer, to).await;
        exchange(stream, &request.bytes()).await
    }

    /// Runs one case as `peer`: its answer must meet `case.expect` and no object may change.
    async fn check(&self, to: SocketAddr, peer: &FakePeer, case: &Case) -> Result<(), String> {
        let before = snapshot(&self.world.cluster);
        let answer = self.send(to, peer, &case.request).await;
        let after = snapshot(&self.world.cluster);
        let who = &peer.login_name;
        case.expect
            .check(&answer)
            .map_err(|e| format!("{} as {who}: {e}\n  answer: {answer:?}", case.name))?;
        if before != after {
            return Err(format!(
                "{} as {who}: objects changed\n  before: {before:#?}\n  after: {after:#?}",
                case.name
            ));
        }
        Ok(())
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

/// Every object a request could create, change or delete (by uid and resourceVersion), and how
/// many tokens were minted.
fn snapshot(cluster: &FakeCluster) -> Vec<String> {
    let mut out = Vec::new();
    for resource in [
        "sessions",
        "serviceaccounts",
        "clusterrolebindings",
        "rolebindings",
        "configmaps",
        "namespaces",
        "secrets",
    ] {
        for object in cluster.objects(resource) {
            let meta = &object["metadata"];
            out.push(format!(
                "{resource} {}/{} uid={} rv={}",
                meta["namespace"].as_str().unwrap_or("-"),
                meta["name"].as_str().unwrap_or("?"),
                meta["uid"].as_str().unwrap_or("?"),
                meta["resourceVersion"].as_str().unwrap_or("?"),
            ));
        }
    }
    let tokens = cluster
        .calls_to(Verb::Create, "serviceaccounts")
        .into_iter()
        .filter(|c| c.subresource.as_deref() == Some("token"))
        .count();
    out.push(format!("tokens minted: {tokens}"));
    out
}

// ------------------------------------------------------------------ raw requests and answers

/// A request as bytes on the wire: a request line, headers in order (values may be any bytes),
/// `Content-Length` when there is a body, and `Connection: close`.
#[derive(Debug, Clone)]
struct Raw {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Raw {
    /// `method target` with `Host: tka-prod`, and for a POST `Content-Type: application/json`
    /// and the body `{}`.
    fn new(method: &str, target: &str) -> Self {
        let mut raw = Self {
            method: method.to_owned(),
            target: target.to_owned(),
            headers: vec![("Host".into(), b"tka-prod".to_vec())],
            body: Vec::new(),
        };
        if method == "POST" {
            raw = raw.set("Content-Type", "application/json").body(b"{}");
        }
        raw
    }

    /// Replaces every header of this name with one of this value.
    fn set(self, name: &str, value: &str) -> Self {
        self.set_bytes(name, value.as_bytes())
    }

    fn set_bytes(mut self, name: &str, value: &[u8]) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_vec()));
        self
    }

    /// Adds a header, keeping those of the same name.
    fn add(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_owned(), value.as_bytes().to_vec()));
        self
    }

    fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    fn body(mut self, body: &[u8]) -> Self {
        self.body = body.to_vec();
        self
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        for (name, value) in &self.headers {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value);
            out.extend_from_slice(b"\r\n");
        }
        let declared = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        if !declared
            && (!self.body.is_empty() || matches!(self.method.as_str(), "POST" | "PUT" | "PATCH"))
        {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// An answer read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn parse(raw: &str) -> Result<Self, String> {
        let status = status_of(raw).ok_or("no HTTP answer (the connection was closed)")?;
        let (head, body) = raw.split_once("\r\n\r\n").ok_or("no end of the head")?;
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(Self {
            status,
            headers,
            body,
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// What a case must get.
#[derive(Debug, Clone)]
enum Expect {
    /// A problem document: this status and `code`.
    Problem(u16, &'static str),
    /// An answer to `HEAD`: this status and the problem media type, no body.
    HeadProblem(u16),
    /// A Kubernetes `Status` refusal: this status and `reason`.
    Status(u16, &'static str),
    /// The status only (an answer hyper writes itself, or a connection closed without one).
    Bare(Option<u16>),
    /// This status only, or no answer at all: a head too large is refused before it is read to
    /// its end, and closing a socket with unread data resets it, which may lose the answer.
    BareOrReset(u16),
    /// An ops refusal: this status, plain text, and no metrics.
    Ops(u16),
}

impl Expect {
    fn check(&self, raw: &str) -> Result<(), String> {
        if let Self::Bare(status) = self {
            return match (status, status_of(raw)) {
                (None, None) => Ok(()),
                (Some(want), Some(got)) if *want == got => Ok(()),
                (want, got) => Err(format!("status {got:?}, expected {want:?}")),
            };
        }
        if let Self::BareOrReset(status) = self {
            return match status_of(raw) {
                None => Ok(()),
                Some(got) if got == *status => Ok(()),
                Some(got) => Err(format!("status {got}, expected {status} or no answer")),
            };
        }
        let answer = Answer::parse(raw)?;
        match self {
            Self::Problem(status, code) => problem(&answer, *status, code),
            Self::HeadProblem(status) => {
                expect_eq("status", &answer.status, status)?;
                expect_eq(
                    "content-type",
                    &answer.header("content-type"),
                    &Some("application/problem+json"),
                )?;
                expect_eq("body", &answer.body.as_str(), &"")
            }
            Self::Status(status, reason) => {
                expect_eq("status", &answer.status, status)?;
                expect_eq(
                    "content-type",
                    &answer.header("content-type"),
                    &Some("application/json"),
                )?;
                let s: Value = serde_json::from_str(&answer.body).map_err(|e| e.to_string())?;
                expect_eq("kind", &s["kind"], &json!("Status"))?;
                expect_eq("apiVersion", &s["apiVersion"], &json!("v1"))?;
                expect_eq("status field", &s["status"], &json!("Failure"))?;
                expect_eq("reason", &s["reason"], &json!(reason))?;
                expect_eq("code", &s["code"], &json!(status))?;
                if !s["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("tka: "))
                {
                    return Err(format!("a message that is not tka's: {s}"));
                }
                Ok(())
            }
            Self::Ops(status) => {
                expect_eq("status", &answer.status, status)?;
                if answer.body.contains("tka_") {
                    return Err("metrics in a refusal".into());
                }
                if let Some(ct) = answer.header("content-type")
                    && !ct.starts_with("text/plain")
                {
                    return Err(format!("content-type {ct}"));
                }
                Ok(())
            }
            Self::Bare(_) | Self::BareOrReset(_) => unreachable!("handled above"),
        }
    }
}

fn expect_eq<T: PartialEq + std::fmt::Debug + ?Sized>(
    what: &str,
    got: &T,
    want: &T,
) -> Result<(), String> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, expected {want:?}"))
    }
}

/// A problem document as docs/api.md describes it.
fn problem(answer: &Answer, status: u16, code: &str) -> Result<(), String> {
    expect_eq("status", &answer.status, &status)?;
    expect_eq(
        "content-type",
        &answer.header("content-type"),
        &Some("application/problem+json"),
    )?;
    let p: Value = serde_json::from_str(&answer.body).map_err(|e| format!("not JSON: {e}"))?;
    expect_eq("problem status", &p["status"], &json!(status))?;
    expect_eq("code", &p["code"], &json!(code))?;
    expect_eq(
        "type",
        &p["type"],
        &json!(format!("urn:tka:problem:{code}")),
    )?;
    if p["title"].as_str().is_none_or(str::is_empty) {
        return Err(format!("no title: {p}"));
    }
    if !p["detail"].is_string() {
        return Err(format!("no detail: {p}"));
    }
    let id = answer.header("x-request-id");
    if id.is_none() || p["instance"].as_str() != id {
        return Err(format!(
            "instance {} is not the request ID {id:?}",
            p["instance"]
        ));
    }
    Ok(())
}

/// One request of a table and what it must get.
#[derive(Debug, Clone)]
struct Case {
    name: String,
    request: Raw,
    expect: Expect,
}

fn case(name: impl Into<String>, request: Raw, expect: Expect) -> Case {
    Case {
        name: name.into(),
        request,
        expect,
    }
}

fn fail_on(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

// ------------------------------------------------------------------ the API tables

/// The methods a table tries on every path: HTTP's, WebDAV's and a made-up one.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND", "FOO",
];

/// `Host` values that are not the server's (its names are `tka-prod` and its listen address).
const FOREIGN_HOSTS: [&str; 12] = [
    "evil.example.com",
    "tka-prod.evil.example.com",
    "evil.example.com:80",
    "tka-prod@evil.example.com",
    "127.0.0.2",
    "127.0.0.1.nip.io",
    "[::1]",
    "100.64.0.5",
    "2130706433",
    "localhost",
    "",
    "tka-prod,evil.example.com",
];

/// Bodies every POST endpoint refuses with 400 `badRequest`.
fn bad_bodies() -> Vec<(String, Vec<u8>)> {
    let nested_objects = format!("{}{}", r#"{"a":"#.repeat(2000), "}".repeat(2000));
    let nested_arrays = format!(r#"{{"role":{}{}}}"#, "[".repeat(5000), "]".repeat(5000));
    let shallow_nest = r#"{"role":{"role":{"role":"sre"}}}"#.to_owned();
    vec![
        ("empty".into(), Vec::new()),
        ("an array".into(), b"[]".to_vec()),
        ("null".into(), b"null".to_vec()),
        ("a string".into(), br#""{}""#.to_vec()),
        ("malformed".into(), b"{".to_vec()),
        ("a byte-order mark".into(), "\u{feff}{}".as_bytes().to_vec()),
        ("NUL bytes".into(), b"{}\0\0".to_vec()),
        ("not UTF-8".into(), b"{\"\xff\xfe\":1}".to_vec()),
        ("two documents".into(), b"{}{}".to_vec()),
        ("an unknown field".into(), br#"{"admin":true}"#.to_vec()),
        (
            "a unicode field name".into(),
            "{\"r\u{f4}le\":\"sre\"}".as_bytes().to_vec(),
        ),
        (
            "objects nested 2000 deep".into(),
            nested_objects.into_bytes(),
        ),
        ("arrays nested 5000 deep".into(), nested_arrays.into_bytes()),
        (
            "an object where a string goes".into(),
            shallow_nest.into_bytes(),
        ),
        (
            "a cluster field".into(),
            "{\"cluster\":\"prod\u{0}\"}".as_bytes().to_vec(),
        ),
    ]
}

/// Role names that are not DNS names (what a GrantMapping's name must be).
fn bad_roles() -> Vec<String> {
    vec![
        String::new(),
        "Not A Role".into(),
        "SRE".into(),
        "-sre".into(),
        "sre-".into(),
        "sre.".into(),
        ".sre".into(),
        "s..re".into(),
        "a".repeat(64),
        format!("{}.sre", "a".repeat(250)),
        "sre\u{0}".into(),
        "sre\n".into(),
        "sre\r\nX-Injected: 1".into(),
        "\u{1e61}re".into(),
        "sre\u{202e}".into(),
        "s\u{200b}re".into(),
        "\u{0455}re".into(),
        "../sre".into(),
        "sre/admin".into(),
        "sre:admin".into(),
        "sre*".into(),
        "\u{1f600}".into(),
    ]
}

/// TTLs that must be refused with 400 `invalidTtl`.
fn bad_ttls() -> Vec<String> {
    vec![
        String::new(),
        "0".into(),
        "0s".into(),
        "-1h".into(),
        "abc".into(),
        "1d".into(),
        "1h\u{0}".into(),
        "\u{ff11}h".into(),
        "1\u{0660}h".into(),
        "1 h".into(),
        "1e3h".into(),
        "NaN".into(),
        "\u{221e}".into(),
        "99999999999999999999999999999999999999999h".into(),
        "9223372036854775808s".into(),
        "h".into(),
        ".h".into(),
    ]
}

/// Targets beside `path` that name no endpoint.
fn unknown_targets(path: &str) -> Vec<String> {
    let last = path.rsplit('/').next().unwrap_or_default();
    vec![
        format!("{path}/"),
        path.to_uppercase(),
        format!("/{path}"),
        format!("{path}%00"),
        format!("{path}/.."),
        format!("{path};x"),
        format!("/api/v1/./{last}"),
        format!("/api/v2/{last}"),
        path.replace("/api/v1/", "/api/v1/%2e%2e/v1/"),
    ]
}

/// The request each endpoint serves, from a device with a live session, and its status. A new
/// endpoint needs an entry here: the suite fails until it has one.
fn allowed(path: &str, method: &Method) -> Option<(Raw, u16)> {
    let raw = Raw::new(method.as_str(), path);
    Some(match (method.as_str(), path) {
        ("POST", "/api/v1/login") => (raw.body(br#"{"role":"sre"}"#), 200),
        ("POST", "/api/v1/token") => (raw, 200),
        ("GET", "/api/v1/session") => (raw, 200),
        ("DELETE", "/api/v1/session") => (raw, 204),
        ("GET", "/api/v1/cluster") => (raw, 200),
        ("GET", "/api/v1/openapi.json") => (raw, 200),
        _ => return None,
    })
}

/// Every case of one endpoint (`method` on `path`, whose methods are `methods`).
fn endpoint_cases(path: &str, method: &Method, methods: &BTreeSet<String>) -> Vec<Case> {
    let m = method.as_str();
    let at = |what: &str| format!("{m} {path}: {what}");
    let well_formed = || Raw::new(m, path);
    let mut cases = Vec::new();

    // The browser checks (docs/api.md "No browser pages").
    for origin in [
        "null",
        "https://evil.example.com",
        "http://tka-prod",
        "file://",
    ] {
        cases.push(case(
            at(&format!("Origin {origin}")),
            well_formed().set("Origin", origin),
            Expect::Problem(403, "originRefused"),
        ));
    }
    for site in ["cross-site", "same-site", "CROSS-SITE", "bogus"] {
        cases.push(case(
            at(&format!("Sec-Fetch-Site {site}")),
            well_formed().set("Sec-Fetch-Site", site),
            Expect::Problem(403, "crossSiteRefused"),
        ));
    }
    for referer in [
        "https://evil.example.com/page",
        "http://tka-prod.evil.example.com/",
        "http://127.0.0.2/",
        "/relative/page",
        "not a url",
    ] {
        cases.push(case(
            at(&format!("Referer {referer}")),
            well_formed().set("Referer", referer),
            Expect::Problem(403, "crossSiteRefused"),
        ));
    }

    // Our own name only (DNS rebinding).
    for host in FOREIGN_HOSTS {
        cases.push(case(
            at(&format!("Host {host:?}")),
            well_formed().set("Host", host),
            Expect::Problem(403, "hostNotAllowed"),
        ));
    }
    cases.push(case(
        at("a Host that is not text"),
        well_formed().set_bytes("Host", b"tka-prod\xff"),
        Expect::Problem(403, "hostNotAllowed"),
    ));
    cases.push(case(
        at("no Host"),
        well_formed().without("Host"),
        Expect::Problem(403, "hostNotAllowed"),
    ));
    // A refusal is a problem document whatever the client asks for.
    for accept in [
        "text/html",
        "application/yaml",
        "*/*;q=0",
        "application/json",
    ] {
        cases.push(case(
            at(&format!("Origin, asking for {accept}")),
            well_formed()
                .set("Origin", "https://evil.example.com")
                .set("Accept", accept),
            Expect::Problem(403, "originRefused"),
        ));
        cases.push(case(
            at(&format!("a foreign Host, asking for {accept}")),
            well_formed()
                .set("Host", "evil.example.com")
                .set("Accept", accept),
            Expect::Problem(403, "hostNotAllowed"),
        ));
    }
    cases.push(case(
        at("two Hosts"),
        well_formed().add("Host", "evil.example.com"),
        Expect::Problem(400, "badRequest"),
    ));
    for target in [
        format!("http://evil.example.com{path}"),
        format!("http://127.0.0.2{path}"),
        format!("https://tka-prod.evil.example.com:443{path}"),
    ] {
        cases.push(case(
            at(&format!("absolute target {target}")),
            Raw {
                target: target.clone(),
                ..well_formed()
            },
            Expect::Problem(403, "hostNotAllowed"),
        ));
    }

    // The body of a POST (docs/api.md, check 6).
    if m == "POST" {
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/json-patch+json"),
            Some("application/jsonx"),
            Some("application/yaml"),
            Some(""),
        ] {
            let request = match content_type {
                Some(ct) => well_formed().set("Content-Type", ct),
                None => well_formed().without("Content-Type"),
            };
            cases.push(case(
                at(&format!("Content-Type {content_type:?}")),
                request,
                Expect::Problem(415, "unsupportedMediaType"),
            ));
        }
        for coding in ["gzip", "deflate", "br", "identity, gzip"] {
            cases.push(case(
                at(&format!("Content-Encoding {coding}")),
                well_formed().set("Content-Encoding", coding),
                Expect::Problem(415, "unsupportedMediaType"),
            ));
        }
        cases.push(case(
            at("a Content-Type that is not text"),
            well_formed().set_bytes("Content-Type", b"application/json\xff"),
            Expect::Problem(415, "unsupportedMediaType"),
        ));
        for (what, body) in bad_bodies() {
            cases.push(case(
                at(&format!("a body that is {what}")),
                well_formed().body(&body),
                Expect::Problem(400, "badRequest"),
            ));
        }
        let mut big = b"{\"role\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_BODY));
        big.extend_from_slice(b"\"}");
        cases.push(case(
            at("a body over --max-body-bytes"),
            well_formed().body(&big),
            Expect::Problem(413, "bodyTooLarge"),
        ));
        cases.push(case(
            at("a declared length of a petabyte"),
            well_formed().set("Content-Length", "1000000000000000"),
            Expect::Problem(413, "bodyTooLarge"),
        ));
        cases.push(case(
            at("a declared length past 2^64"),
            well_formed().set("Content-Length", "18446744073709551616"),
            Expect::Bare(Some(400)),
        ));
    }

    // The fields of a login.
    if path == "/api/v1/login" {
        for role in bad_roles() {
            let body = json!({"role": role}).to_string();
            cases.push(case(
                at(&format!("role {role:?}")),
                well_formed().body(body.as_bytes()),
                Expect::Problem(400, "badRequest"),
            ));
        }
        for ttl in bad_ttls() {
            let body = json!({"role": "sre", "ttl": ttl}).to_string();
            cases.push(case(
                at(&format!("ttl {ttl:?}")),
                well_formed().body(body.as_bytes()),
                Expect::Problem(400, "invalidTtl"),
            ));
        }
        for via in ["", "PROXY", "Direct", "tunnel", "direct\u{0}"] {
            let body = json!({"via": via}).to_string();
            cases.push(case(
                at(&format!("via {via:?}")),
                well_formed().body(body.as_bytes()),
                Expect::Problem(400, "badRequest"),
            ));
        }
        for body in [
            r#"{"role":5}"#,
            r#"{"ttl":3600}"#,
            r#"{"role":null,"ttl":["1h"]}"#,
            r#"{"role":"sre","role":"admin"}"#,
        ] {
            cases.push(case(
                at(&format!("body {body}")),
                well_formed().body(body.as_bytes()),
                Expect::Problem(400, "badRequest"),
            ));
        }
        cases.push(case(
            at("a role not granted, asked for as YAML"),
            well_formed()
                .set("Accept", "application/yaml")
                .body(br#"{"role":"admin"}"#),
            Expect::Problem(403, "noGrantForRole"),
        ));
    }
    if path == "/api/v1/token" {
        cases.push(case(
            at("a role in the body"),
            well_formed().body(br#"{"role":"sre"}"#),
            Expect::Problem(400, "badRequest"),
        ));
    }

    // Wrong methods and unknown paths, once per path (on its first method).
    if methods.iter().next().map(String::as_str) == Some(m) {
        for wrong in METHODS {
            let head_of_get = wrong == "HEAD" && methods.contains("GET");
            if methods.contains(wrong) || head_of_get {
                continue;
            }
            let expect = if wrong == "HEAD" {
                Expect::HeadProblem(405)
            } else {
                Expect::Problem(405, "methodNotAllowed")
            };
            cases.push(case(
                format!("{wrong} {path}: a method it does not take"),
                Raw::new(wrong, path),
                expect.clone(),
            ));
            cases.push(case(
                format!("{wrong} {path}: a method it does not take, with an Origin"),
                Raw::new(wrong, path).set("Origin", "https://evil.example.com"),
                expect,
            ));
        }
        for (what, request, status) in unparsable(&well_formed()) {
            cases.push(case(at(what), request, unparsable_expect(status)));
        }
        for target in unknown_targets(path) {
            cases.push(case(
                format!("{m} {target}: no such endpoint"),
                Raw {
                    target: target.clone(),
                    ..well_formed()
                },
                Expect::Problem(404, "notFound"),
            ));
        }
    }
    cases
}

/// Heads hyper refuses before any of tka's code runs: 400 (or 431 when too large), no body.
fn unparsable(request: &Raw) -> Vec<(&'static str, Raw, u16)> {
    let mut many = request.clone();
    for i in 0..150 {
        many = many.add(&format!("x-h{i}"), "v");
    }
    vec![
        (
            "a header name with a space",
            request.clone().add("x bad", "1"),
            400,
        ),
        (
            "a folded header line",
            request.clone().add("x-fold", "a\r\n b"),
            400,
        ),
        (
            "a NUL in a header",
            request.clone().add("x-nul", "a\0b"),
            400,
        ),
        ("150 headers", many, 431),
        (
            "a 20 KiB path",
            Raw {
                target: format!("{}/{}", request.target, "a".repeat(20 * 1024)),
                ..request.clone()
            },
            431,
        ),
        (
            "two different lengths",
            request
                .clone()
                .add("Content-Length", "2")
                .add("Content-Length", "3"),
            400,
        ),
        (
            "a negative length",
            request.clone().set("Content-Length", "-2"),
            400,
        ),
        (
            "a transfer coding other than chunked",
            request.clone().set("Transfer-Encoding", "gzip"),
            400,
        ),
    ]
}

/// What a head from [`unparsable`] gets: hyper's 400, or its 431 (which a reset may lose).
fn unparsable_expect(status: u16) -> Expect {
    if status == 431 {
        Expect::BareOrReset(status)
    } else {
        Expect::Bare(Some(status))
    }
}

/// Each endpoint's methods, by path.
fn methods_by_path() -> Vec<(&'static str, BTreeSet<String>)> {
    let mut out: Vec<(&'static str, BTreeSet<String>)> = Vec::new();
    for (path, method) in tka_server::routes::api_endpoints() {
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, methods)) => {
                methods.insert(method.to_string());
            }
            None => out.push((path, BTreeSet::from([method.to_string()]))),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_endpoint_refuses_hostile_requests_and_changes_nothing() {
    let adversary = Adversary::start(&[]).await;
    let api = adversary.running.api;
    let endpoints = tka_server::routes::api_endpoints();
    assert!(endpoints.len() >= 6, "{endpoints:?}");
    let by_path = methods_by_path();

    // Every endpoint has its allowed request (a new one fails here until it has one).
    let missing: Vec<String> = endpoints
        .iter()
        .filter(|(path, method)| allowed(path, method).is_none())
        .map(|(path, method)| format!("{method} {path}"))
        .collect();
    assert!(
        missing.is_empty(),
        "endpoints without an allowed request in adversarial::allowed: {missing:?}"
    );

    let mut failures = Vec::new();
    let mut count = 0;
    for (path, method) in &endpoints {
        let methods = &by_path.iter().find(|(p, _)| p == path).unwrap().1;
        let cases = endpoint_cases(path, method, methods);
        assert!(cases.len() > 25, "{method} {path}: {} cases", cases.len());
        for case in &cases {
            for peer in [adversary.alice(), &adversary.bob] {
                count += 1;
                if let Err(e) = adversary.check(api, peer, case).await {
                    failures.push(e);
                }
            }
        }
    }
    fail_on(&failures);
    eprintln!("{count} hostile requests refused, none changed an object");

    // The same endpoints allowed, from alice's live session (the logout last), with the
    // server's own names in the forms docs/api.md allows.
    let mut ordered = endpoints.clone();
    ordered.sort_by_key(|(_, method)| *method == Method::DELETE);
    let own_hosts = ["tka-prod", "TKA-PROD", "tka-prod.", "tka-prod:80"];
    for (i, (path, method)) in ordered.iter().enumerate() {
        let (request, status) = allowed(path, method).unwrap();
        let mut request = request
            .set("Host", own_hosts[i % own_hosts.len()])
            .set("Sec-Fetch-Site", "none");
        if *method == Method::POST {
            request = request.set("Content-Encoding", "identity");
        }
        let answer = adversary.send(api, adversary.alice(), &request).await;
        assert_eq!(
            status_of(&answer),
            Some(status),
            "{method} {path} allowed: {answer}"
        );
    }
    // The absolute form naming the server, and a HEAD of a GET endpoint.
    for request in [
        Raw::new("GET", "http://tka-prod/api/v1/cluster"),
        Raw::new("GET", "http://127.0.0.1/api/v1/cluster"),
        Raw::new("HEAD", "/api/v1/cluster"),
        Raw::new("GET", "/api/v1/cluster").set("Referer", "http://tka-prod/"),
    ] {
        let answer = adversary.send(api, &adversary.bob, &request).await;
        assert_eq!(status_of(&answer), Some(200), "{request:?}: {answer}");
    }
    adversary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_ttls_are_clamped_and_never_overflow() {
    let adversary = Adversary::start(&[]).await;
    for ttl in [
        "100000h",
        "2562047788015215h",
        "9223372036854775807s",
        "999999999999h59m59.999999999s",
    ] {
        let mut bob = adversary.api_client(&adversary.bob).await;
        let body = json!({"role": "sre", "ttl": ttl}).to_string();
        let response = bob.login(&body).await;
        assert_eq!(response.status, 200, "{ttl}: {}", response.text());
        let answer = response.json();
        assert_eq!(answer["ttl"], "8h", "{ttl}: {answer}");
        assert_eq!(answer["clamped"]["granted"], "8h", "{ttl}: {answer}");
        let expires: jiff::Timestamp = answer["session"]["expiresAt"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let limit = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(8);
        assert!(expires <= limit, "{ttl}: {expires}");
    }
    // alice's and bob's: one Session for bob, however often he asked.
    assert_eq!(adversary.world.cluster.objects("sessions").len(), 2);
    adversary.stop().await;
}

// ------------------------------------------------------------------ the ops listener

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ops_endpoint_answers_only_a_probe_and_changes_nothing() {
    let adversary = Adversary::start(&[]).await;
    let ops = adversary.running.ops;
    let paths = tka_server::ops::ops_paths();
    assert_eq!(paths.len(), 3, "{paths:?}");
    let own = ops.to_string();
    let mut failures = Vec::new();
    for path in &paths {
        let probe = || Raw::new("GET", path).set("Host", &own);
        let mut cases = Vec::new();
        for wrong in METHODS {
            if matches!(wrong, "GET" | "HEAD") {
                continue;
            }
            let mut request = probe();
            request.method = wrong.to_owned();
            cases.push(case(format!("{wrong} {path}"), request, Expect::Ops(405)));
        }
        for host in FOREIGN_HOSTS
            .iter()
            .copied()
            .chain(["tka-prod", "127.0.0.1"])
        {
            cases.push(case(
                format!("GET {path}: Host {host:?}"),
                probe().set("Host", host),
                Expect::Ops(403),
            ));
        }
        cases.push(case(
            format!("GET {path}: no Host"),
            probe().without("Host"),
            Expect::Ops(403),
        ));
        cases.push(case(
            format!("GET {path}: two Hosts"),
            probe().add("Host", "evil.example.com"),
            Expect::Ops(400),
        ));
        cases.push(case(
            format!("GET {path}: absolute target naming another host"),
            Raw {
                target: format!("http://evil.example.com{path}"),
                ..probe()
            },
            Expect::Ops(403),
        ));
        cases.push(case(
            format!("GET {path}/: no such path"),
            Raw {
                target: format!("{path}/"),
                ..probe()
            },
            Expect::Ops(404),
        ));
        for case in &cases {
            let before = snapshot(&adversary.world.cluster);
            let answer = exchange(
                tokio::net::TcpStream::connect(ops).await.unwrap(),
                &case.request.bytes(),
            )
            .await;
            if let Err(e) = case.expect.check(&answer) {
                failures.push(format!("{}: {e}\n  answer: {answer:?}", case.name));
            }
            if snapshot(&adversary.world.cluster) != before {
                failures.push(format!("{}: objects changed", case.name));
            }
        }
        // Allowed: the kubelet's probe.
        let (status, _) = get(ops, path).await.unwrap();
        assert!(
            status == 200 || (*path == "/readyz" && status == 503),
            "{path}: {status}"
        );
    }
    fail_on(&failures);
    adversary.stop().await;
}

// ------------------------------------------------------------------ rate limits

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_its_rate_limit_gets_429_on_every_endpoint_and_the_next_is_served() {
    let adversary =
        Adversary::start(&["--rate-limit-per-minute", "1", "--rate-limit-burst", "3"]).await;
    let api = adversary.running.api;
    // alice's login at the start spent one; two more empty the bucket.
    for _ in 0..2 {
        let answer = adversary
            .send(api, adversary.alice(), &Raw::new("GET", "/api/v1/cluster"))
            .await;
        assert_eq!(status_of(&answer), Some(200), "{answer}");
    }
    let mut failures = Vec::new();
    for (path, method) in tka_server::routes::api_endpoints() {
        let (request, _) = allowed(path, &method).unwrap();
        let limited = case(
            format!("{method} {path} over the rate limit"),
            request,
            Expect::Problem(429, "rateLimited"),
        );
        if let Err(e) = adversary.check(api, adversary.alice(), &limited).await {
            failures.push(e);
        }
        let answer = Answer::parse(
            &adversary
                .send(api, adversary.alice(), &limited.request)
                .await,
        )
        .unwrap();
        let retry_after: u64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{method} {path}: no Retry-After: {answer:?}"));
        assert!((1..=60).contains(&retry_after), "{retry_after}");
    }
    fail_on(&failures);

    // The next device is served normally, through every endpoint, logout included (a fresh
    // connection each: one request per connection keeps the client simple).
    let mut bob = adversary.api_client(&adversary.bob).await;
    let response = bob.login(r#"{"role":"sre"}"#).await;
    assert_eq!(response.status, 200, "{}", response.text());
    let mut bob = adversary.api_client(&adversary.bob).await;
    assert_eq!(bob.get("/api/v1/session").send().await.status, 200);
    let mut bob = adversary.api_client(&adversary.bob).await;
    assert_eq!(bob.delete("/api/v1/session").send().await.status, 204);
    // alice's session outlived her refused logout.
    assert!(adversary.alice_session_exists());
    adversary.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_over_the_proxy_rate_limit_gets_429_and_the_next_is_served() {
    let adversary =
        Adversary::start(&["--proxy-rate-limit", "1", "--proxy-rate-limit-burst", "2"]).await;
    let proxy = adversary.running.proxy_addr;
    // bob has a session too: both would be forwarded.
    let mut bob = adversary.api_client(&adversary.bob).await;
    assert_eq!(bob.login(r#"{"role":"sre"}"#).await.status, 200);
    let list = Raw::new("GET", "/api/v1/namespaces");
    // Spend alice's burst, then send a create at once: refused, nothing created. (The bucket
    // refills one a second; should it have refilled in between, the create went through and
    // the round is tried again with another name.)
    let mut refused_write = false;
    for round in 0..5 {
        let mut limited = None;
        for _ in 0..10 {
            let answer = adversary.send(proxy, adversary.alice(), &list).await;
            if status_of(&answer) == Some(429) {
                limited = Some(answer);
                break;
            }
        }
        let answer = limited.expect("ten requests at once exceed a burst of two");
        Expect::Status(429, "TooManyRequests")
            .check(&answer)
            .unwrap();
        let parsed = Answer::parse(&answer).unwrap();
        let retry_after: u64 = parsed.header("retry-after").unwrap().parse().unwrap();
        assert!(retry_after >= 1, "{retry_after}");

        let over = case(
            "a create over the proxy rate limit",
            configmap_request(&format!("over-the-limit-{round}")),
            Expect::Status(429, "TooManyRequests"),
        );
        let before = snapshot(&adversary.world.cluster);
        let answer = adversary
            .send(proxy, adversary.alice(), &over.request)
            .await;
        if status_of(&answer) == Some(429) {
            over.expect.check(&answer).unwrap();
            assert_eq!(snapshot(&adversary.world.cluster), before);
            refused_write = true;
            break;
        }
    }
    assert!(refused_write, "no create was ever sent over the limit");
    // bob is served, his session's token on the request.
    let mut served = false;
    for _ in 0..50 {
        let answer = adversary.send(proxy, &adversary.bob, &list).await;
        match status_of(&answer) {
            Some(200) => {
                served = true;
                break;
            }
            // The proxy's Session store may not have seen bob's new session yet (and waiting
            // for it spends bob's own burst).
            Some(401 | 429) => tokio::time::sleep(Duration::from_millis(500)).await,
            other => panic!("bob: {other:?}: {answer}"),
        }
    }
    assert!(served, "bob was never served");
    adversary.stop().await;
}

// ------------------------------------------------------------------ slow clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_of_several_devices_time_out_and_starve_no_one() {
    let adversary = Adversary::start(&[
        "--header-timeout",
        "2s",
        "--body-timeout",
        "2s",
        "--idle-timeout",
        "1s",
        "--max-connections-per-peer",
        "8",
    ])
    .await;
    let api = adversary.running.api;
    let attackers: Vec<FakePeer> = (0..3)
        .map(|i| {
            adversary.world.tailnet.add(
                PeerSpec::user(&format!("mallory{i}@example.com"), &format!("mallory-{i}"))
                    .capability("tka.dev/cap/kubernetes", json!({"role": "sre"})),
            )
        })
        .collect();
    let before = snapshot(&adversary.world.cluster);

    // Each attacker holds six connections: two silent, two trickling a header, two trickling
    // a login's body. One byte or line every 300 ms; bounded at 200 writes (a minute).
    let mut slow = Vec::new();
    for attacker in &attackers {
        for kind in 0..6 {
            let stream = connect_as(&adversary.world, attacker, api).await;
            let (head, drip): (&[u8], &[u8]) = match kind % 3 {
                0 => (b"", b""),
                1 => (
                    b"GET /api/v1/cluster HTTP/1.1\r\nHost: tka-prod\r\n",
                    b"x-a: b\r\n",
                ),
                _ => (
                    b"POST /api/v1/login HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{",
                    b" ",
                ),
            };
            let answer = trickle(stream, head, drip);
            let task = tokio::spawn(async move { (kind % 3, answer.await.unwrap()) });
            slow.push(task);
        }
    }

    // Meanwhile alice and bob are served, and the kubelet's probe answers.
    for round in 0..5 {
        let mut alice = adversary.api_client(adversary.alice()).await;
        let response = alice.get("/api/v1/session").send().await;
        assert_eq!(response.status, 200, "round {round}: {}", response.text());
        let mut bob = adversary.api_client(&adversary.bob).await;
        let response = bob.get("/api/v1/cluster").send().await;
        assert_eq!(response.status, 200, "round {round}: {}", response.text());
        let (status, _) = get(adversary.running.ops, "/healthz").await.unwrap();
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every slow connection was closed by the server, within the bound, with no success.
    for task in slow {
        let (kind, answer) = tokio::time::timeout(BOUND * 3, task)
            .await
            .expect("a slow connection is closed within the bound")
            .unwrap();
        match kind {
            2 => {
                assert_eq!(status_of(&answer), Some(408), "{answer:?}");
                Expect::Problem(408, "bodyTimeout").check(&answer).unwrap();
            }
            _ => assert!(
                status_of(&answer).is_none_or(|s| s >= 400),
                "a slow request got a success: {answer:?}"
            ),
        }
    }
    assert_eq!(snapshot(&adversary.world.cluster), before);
    // The attackers are served normally once they behave.
    let mut mallory = adversary.api_client(&attackers[0]).await;
    assert_eq!(mallory.get("/api/v1/cluster").send().await.status, 200);
    adversary.stop().await;
}

/// Sends `head`, then `drip` every 300 ms (bounded: 200 times, a minute) until the server
/// closes the connection; everything the server sent by then.
fn trickle(
    stream: tokio::net::TcpStream,
    head: &'static [u8],
    drip: &'static [u8],
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let (mut reader, mut writer) = stream.into_split();
        let answer = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(BOUND * 2, reader.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        });
        let _ = writer.write_all(head).await;
        for _ in 0..200 {
            if answer.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            if !drip.is_empty() && writer.write_all(drip).await.is_err() {
                break;
            }
        }
        // The write half lives until the server has closed (dropping it would close our side
        // first).
        let answer = answer.await.unwrap_or_default();
        drop(writer);
        answer
    })
}

/// Polls (bounded) until the proxy forwards `peer`'s list of namespaces: its Session store has
/// seen the session.
async fn until_the_proxy_serves(adversary: &Adversary, peer: &FakePeer) {
    for _ in 0..200 {
        let answer = adversary
            .send(
                adversary.running.proxy_addr,
                peer,
                &Raw::new("GET", "/api/v1/namespaces"),
            )
            .await;
        if status_of(&answer) == Some(200) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the proxy never forwarded {}'s request", peer.login_name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_to_the_proxy_is_cut_off_creates_nothing_and_starves_no_one() {
    let adversary = Adversary::start(&[
        "--header-timeout",
        "2s",
        "--body-timeout",
        "2s",
        "--idle-timeout",
        "1s",
    ])
    .await;
    let proxy = adversary.running.proxy_addr;
    let mut bob = adversary.api_client(&adversary.bob).await;
    assert_eq!(bob.login(r#"{"role":"sre"}"#).await.status, 200);
    until_the_proxy_serves(&adversary, adversary.alice()).await;
    until_the_proxy_serves(&adversary, &adversary.bob).await;
    let before = snapshot(&adversary.world.cluster);

    // alice, with a live session, trickles a ConfigMap create's body a byte every 300 ms.
    let mut slow = Vec::new();
    for _ in 0..3 {
        let stream = connect_as(&adversary.world, adversary.alice(), proxy).await;
        slow.push(trickle(
            stream,
            b"POST /api/v1/namespaces/team/configmaps HTTP/1.1\r\nHost: tka-prod\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"slow\"}",
            b" ",
        ));
    }
    // Meanwhile bob's requests through the proxy are forwarded.
    for round in 0..5 {
        let answer = adversary
            .send(
                proxy,
                &adversary.bob,
                &Raw::new("GET", "/api/v1/namespaces"),
            )
            .await;
        assert_eq!(status_of(&answer), Some(200), "round {round}: {answer}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    for task in slow {
        let answer = tokio::time::timeout(BOUND * 3, task)
            .await
            .expect("a slow body is cut off within the bound")
            .unwrap();
        // The client's doing, so 408 (not a 502 blaming the API server).
        Expect::Status(408, "Timeout")
            .check(&answer)
            .unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    }
    assert!(
        adversary
            .world
            .cluster
            .get_object("configmaps", Some("team"), "slow")
            .is_none()
    );
    assert_eq!(snapshot(&adversary.world.cluster), before);
    adversary.stop().await;
}

// ------------------------------------------------------------------ the proxy listener

/// A proxied create of ConfigMap `name` in namespace `team`.
fn configmap_request(name: &str) -> Raw {
    Raw::new("POST", "/api/v1/namespaces/team/configmaps").body(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
            .to_string()
            .as_bytes(),
    )
}

/// Requests that would change the cluster if forwarded: a create, a delete, a patch.
fn proxy_writes() -> Vec<(&'static str, Raw)> {
    vec![
        ("create a ConfigMap", configmap_request("planted")),
        (
            "delete a namespace",
            Raw::new("DELETE", "/api/v1/namespaces/team"),
        ),
        (
            "patch a namespace",
            Raw::new("PATCH", "/api/v1/namespaces/team")
                .set("Content-Type", "application/merge-patch+json")
                .body(br#"{"metadata":{"labels":{"owned":"yes"}}}"#),
        ),
    ]
}

fn proxy_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (what, request) in proxy_writes()
        .into_iter()
        .chain([("list namespaces", Raw::new("GET", "/api/v1/namespaces"))])
    {
        let at = |trick: &str| format!("{what}: {trick}");
        for origin in ["null", "https://evil.example.com", "http://tka-prod"] {
            cases.push(case(
                at(&format!("Origin {origin}")),
                request.clone().set("Origin", origin),
                Expect::Status(403, "Forbidden"),
            ));
        }
        for site in ["cross-site", "same-site"] {
            cases.push(case(
                at(&format!("Sec-Fetch-Site {site}")),
                request.clone().set("Sec-Fetch-Site", site),
                Expect::Status(403, "Forbidden"),
            ));
        }
        cases.push(case(
            at("Referer of another site"),
            request
                .clone()
                .set("Referer", "https://evil.example.com/page"),
            Expect::Status(403, "Forbidden"),
        ));
        for host in FOREIGN_HOSTS {
            cases.push(case(
                at(&format!("Host {host:?}")),
                request.clone().set("Host", host),
                Expect::Status(403, "Forbidden"),
            ));
        }
        cases.push(case(
            at("no Host"),
            request.clone().without("Host"),
            Expect::Status(403, "Forbidden"),
        ));
        cases.push(case(
            at("two Hosts"),
            request.clone().add("Host", "evil.example.com"),
            Expect::Status(400, "BadRequest"),
        ));
        cases.push(case(
            at("absolute target naming another host"),
            Raw {
                target: format!("http://evil.example.com{}", request.target),
                ..request.clone()
            },
            Expect::Status(403, "Forbidden"),
        ));
        for header in [
            "Impersonate-User",
            "IMPERSONATE-GROUP",
            "impersonate-uid",
            "Impersonate-Extra-Scopes",
        ] {
            cases.push(case(
                at(header),
                request.clone().set(header, "system:admin"),
                Expect::Status(403, "Forbidden"),
            ));
        }
        let mut big = request.clone();
        big.headers.push(("X-Big".into(), vec![b'a'; 64 * 1024]));
        cases.push(case(at("a 64 KiB header"), big, Expect::BareOrReset(431)));
        for (trick, request, status) in unparsable(&request) {
            cases.push(case(at(trick), request, unparsable_expect(status)));
        }
        for escape in [
            "/api/v1/namespaces/team/../../../apis",
            "/api/v1/namespaces/%2e%2e/secrets",
            "/api/v1/namespaces/team%2F..%2Fkube-system/secrets",
            "/api/v1/./namespaces",
            "/api/v1/namespaces/team%5c..",
            "/api/v1/namespaces/%2E%2E",
        ] {
            cases.push(case(
                at(&format!("path {escape}")),
                Raw {
                    target: escape.to_owned(),
                    ..request.clone()
                },
                Expect::Status(400, "BadRequest"),
            ));
        }
    }
    cases.push(case(
        "CONNECT",
        Raw::new("CONNECT", "tka-prod:443"),
        Expect::Status(405, "MethodNotAllowed"),
    ));
    for method in ["TRACE", "TRACK"] {
        cases.push(case(
            method,
            Raw::new(method, "/api/v1/namespaces"),
            Expect::Status(405, "MethodNotAllowed"),
        ));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_refuses_hostile_requests_and_changes_nothing() {
    let adversary = Adversary::start(&[]).await;
    let proxy = adversary.running.proxy_addr;
    // alice's session is known to the proxy before the table runs (so a request that slipped
    // through would be forwarded with her token).
    let mut forwarded = false;
    for _ in 0..200 {
        let answer = adversary
            .send(
                proxy,
                adversary.alice(),
                &Raw::new("GET", "/api/v1/namespaces"),
            )
            .await;
        if status_of(&answer) == Some(200) {
            forwarded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(forwarded, "the proxy never forwarded alice's request");

    let cases = proxy_cases();
    let mut failures = Vec::new();
    for case in &cases {
        for peer in [adversary.alice(), &adversary.bob] {
            if let Err(e) = adversary.check(proxy, peer, case).await {
                failures.push(e);
            }
        }
    }
    // A device with no session: every method is refused, nothing forwarded.
    for (what, request) in proxy_writes() {
        let no_session = case(
            format!("{what} without a session"),
            request,
            Expect::Status(401, "Unauthorized"),
        );
        if let Err(e) = adversary.check(proxy, &adversary.bob, &no_session).await {
            failures.push(e);
        }
    }
    fail_on(&failures);
    eprintln!(
        "{} hostile proxy requests refused, none changed an object",
        cases.len() * 2
    );

    // Allowed: the same create, clean, from alice, creates the ConfigMap.
    let answer = adversary
        .send(proxy, adversary.alice(), &configmap_request("allowed"))
        .await;
    assert_eq!(status_of(&answer), Some(201), "{answer}");
    assert!(
        adversary
            .world
            .cluster
            .get_object("configmaps", Some("team"), "allowed")
            .is_some()
    );
    assert!(
        adversary
            .world
            .cluster
            .get_object("configmaps", Some("team"), "planted")
            .is_none()
    );
    // The Status helper of the other proxy tests agrees with this one's.
    let mut bob = client_as(&adversary.world, &adversary.bob, proxy).await;
    let response = bob
        .get("/api/v1/namespaces")
        .header("origin", "null")
        .send()
        .await;
    assert_status(&response, 403, "Forbidden");
    adversary.stop().await;
}

/// An upstream that answers every request with the request's own head, as a server that
/// implements TRACE does.
async fn echoing_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: hyper::Request<_>| async move {
                    let head: String = request
                        .headers()
                        .iter()
                        .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                        .collect();
                    Ok::<_, std::convert::Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "message/http")
                            .body(http_body_util::Full::new(hyper::body::Bytes::from(
                                format!("{} {}\n{head}", request.method(), request.uri()),
                            )))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_through_the_proxy_never_reflects_the_sessions_token() {
    // The upstream echoes what it gets, so anything forwarded shows the token the proxy put on.
    let world = FakeWorld::new().await;
    let upstream = echoing_upstream().await;
    let running = start_at(&world, &format!("http://{upstream}"), ROOMY).await;
    let mut alice = client_as(&world, &world.alice, running.api).await;
    assert_eq!(alice.login(r#"{"role":"sre"}"#).await.status, 200);
    let send = |method: &'static str| {
        let world = &world;
        let proxy = running.proxy_addr;
        async move {
            let stream = connect_as(world, &world.alice, proxy).await;
            exchange(stream, &Raw::new(method, "/api/v1/namespaces").bytes()).await
        }
    };
    // Allowed pair first: a GET is forwarded with the session's token (which the echo shows;
    // the real API server never would). Retried while the proxy's store learns the session.
    let mut echoed = String::new();
    for _ in 0..200 {
        echoed = send("GET").await;
        if status_of(&echoed) == Some(200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status_of(&echoed), Some(200), "{echoed}");
    assert!(echoed.contains("authorization: Bearer "), "{echoed}");

    for method in ["TRACE", "TRACK"] {
        let answer = send(method).await;
        Expect::Status(405, "MethodNotAllowed")
            .check(&answer)
            .unwrap_or_else(|e| panic!("{method}: {e}: {answer}"));
        assert!(
            !answer.contains("Bearer"),
            "{method} reflected the token: {answer}"
        );
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_identities_get_valid_names_or_a_problem_and_never_a_500() {
    // What whois reports is the tailnet's, not the caller's, but names and logins still come
    // from people: every object a login makes must have a valid name, and an identity tka
    // cannot read is a problem document (503 `identityUnavailable`, as any whois answer tka
    // cannot use), never a 500 and never a half-made session.
    let adversary = Adversary::start(&[]).await;
    let api = adversary.running.api;
    let grant = json!({"role": "sre"});
    let long = format!("{}@example.com", "x".repeat(400));
    let specs = [
        (
            PeerSpec::user("\u{65e5}\u{672c}@\u{4f8b}\u{3048}.jp", "nihon"),
            None,
        ),
        (
            PeerSpec::user("\u{ff53}\u{ff52}\u{ff45}@example.com", "fullwidth"),
            None,
        ),
        (
            PeerSpec::user("a\u{202e}gpj.exe@example.com", "bidi\u{202e}laptop"),
            None,
        ),
        (PeerSpec::user(&long, "long"), None),
        (PeerSpec::user("--@--", "dashes"), None),
        (
            PeerSpec::user("alice@example.com", "\u{1f600}-laptop"),
            None,
        ),
        (PeerSpec::tagged(["tag:ci"], "tagged\nnewline"), None),
        (
            PeerSpec::user("ctl\u{7}@example.com", "bell"),
            Some("identityUnavailable"),
        ),
        (
            PeerSpec::tagged(["tag:", "tag:ci"], "odd-tags"),
            Some("identityUnavailable"),
        ),
    ];
    let mut failures = Vec::new();
    for (spec, refused) in specs {
        let peer = adversary
            .world
            .tailnet
            .add(spec.capability("tka.dev/cap/kubernetes", grant.clone()));
        let who = format!("{:?} on {:?}", peer.login_name, peer.host_name);
        let before = snapshot(&adversary.world.cluster);
        let answer = adversary
            .send(api, &peer, &Raw::new("POST", "/api/v1/login"))
            .await;
        if let Some(code) = refused {
            if let Err(e) = Expect::Problem(503, code).check(&answer) {
                failures.push(format!("{who}: {e}: {answer:?}"));
            }
            if snapshot(&adversary.world.cluster) != before {
                failures.push(format!("{who}: refused, yet objects changed"));
            }
            continue;
        }
        let parsed = match Answer::parse(&answer) {
            Ok(parsed) if parsed.status == 200 => parsed,
            _ => {
                failures.push(format!("{who}: not served: {answer:?}"));
                continue;
            }
        };
        let body: Value = serde_json::from_str(&parsed.body).unwrap();
        let session = body["session"]["name"].as_str().unwrap_or_default();
        if !tka_core::domain::is_dns1123_label(session) {
            failures.push(format!("{who}: session name {session:?}"));
        }
        let made = adversary
            .world
            .cluster
            .list_labelled(&format!("tka.dev/session={session}"))
            .unwrap();
        if made.is_empty() {
            failures.push(format!("{who}: no labelled objects for {session}"));
        }
        for object in made {
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            if !tka_core::domain::is_dns1123_subdomain(name) {
                failures.push(format!("{who}: object name {name:?}"));
            }
        }
    }
    fail_on(&failures);
    adversary.stop().await;
}
