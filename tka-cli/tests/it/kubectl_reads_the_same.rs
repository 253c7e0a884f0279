//! Property, against the real kubectl: for generated kubeconfigs full of YAML 1.1 traps (quoted
//! `"no"` and `'on'` names and tokens, plain `yes` booleans, plain `0755`, `1_0`, `0x1f`, `1e3`
//! and wider-than-64-bit numbers in extensions, timestamps, comments, block and flow style),
//! `kubectl config view --raw -o json` shows the foreign entries unchanged while `tka login`'s
//! context is in the file, and shows exactly what it showed before once `tka logout` removed it.
//! Both shapes of tka's context are generated: direct (the API server, the exec plugin) and
//! through the tka proxy (the proxy's URL, no credential at all).
//!
//! It runs against the machine's kubectl and the one the testenv builds (`TKA_TESTENV_BIN`),
//! each that exists; without either the test skips, and fails under `make test`
//! (`TKA_REQUIRE_TESTENV=1`).

use std::path::PathBuf;
use std::process::Command;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::Value;

use crate::support::*;

/// Cases per run: each runs kubectl three times and tka twice (well under a minute in all).
const CASES: u32 = 48;

/// The kubectls to compare with: the machine's (on PATH) and the testenv's, each that exists.
fn kubectl_programs() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let on_path = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if on_path {
        found.push(PathBuf::from("kubectl"));
    }
    if let Some(dir) = std::env::var_os("TKA_TESTENV_BIN") {
        let built = PathBuf::from(dir).join("kubectl");
        if built.is_file() {
            found.push(built);
        }
    }
    found
}

/// Strings kubectl reads as strings; several of them only because they are quoted.
const STRINGS: &[&str] = &[
    "\"no\"",
    "'on'",
    "\"yes\"",
    "\"y\"",
    "'n'",
    "\"off\"",
    "\"0755\"",
    "\"~\"",
    "\"null\"",
    "\"1e3\"",
    "'1_0'",
    "\"0x1f\"",
    "\"true\"",
    "\"tab\\there\"",
    "'it''s'",
    "plain",
    "2001-12-14",
    "1:20",
    "two words",
    "https://x.example:6443",
];

/// Booleans as YAML 1.1 writes them (plain).
const BOOLS: &[&str] = &["yes", "no", "on", "off", "y", "n", "true", "False", "ON"];

/// Anything, for extensions (kubectl keeps them as JSON).
const ANY: &[&str] = &[
    "yes",
    "no",
    "on",
    "y",
    "~",
    "null",
    "0755",
    "1_0",
    "0x1f",
    "0b11",
    "1e3",
    "08",
    ".5",
    "-0x1F",
    "123456789012345678901234567890",
    "2001-12-14",
    "1:20",
    "\"quoted\"",
    "'single'",
    "\"no\"",
    "plain text",
    "''",
    "[1, yes, \"no\", 0755]",
    "{mode: 0755, on: off, x: ~}",
];

const NAMES: &[&str] = &[
    "kind-dev",
    "corp",
    "\"no\"",
    "'on'",
    "\"0755\"",
    "\"y\"",
    "2001-12-14",
    "\"true\"",
];

fn pick(set: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(set).prop_map(str::to_owned)
}

/// A field of an entry body: a scalar, or an `extensions` list of (name, fields).
#[derive(Debug, Clone)]
enum Field {
    Scalar(&'static str, String),
    Extensions(Vec<(String, Vec<(String, String)>)>),
}

fn extensions() -> impl Strategy<Value = Field> {
    // kubectl refuses two extensions of one name, and (as go-yaml v2 does) two keys of one name
    // in an extension are fine: the last wins.
    (
        prop::sample::subsequence(
            &["example.com/a", "example.com/b", "example.com/c"][..],
            1..3,
        ),
        prop::collection::vec(prop::collection::vec(("[a-z]{1,5}", pick(ANY)), 0..4), 3),
    )
        .prop_map(|(names, fields)| {
            Field::Extensions(
                names
                    .into_iter()
                    .zip(fields)
                    .map(|(n, f)| (n.to_owned(), f))
                    .collect(),
            )
        })
}

fn body(kind: &'static str) -> BoxedStrategy<Vec<Field>> {
    let extensions = prop::option::of(extensions());
    match kind {
        "cluster" => (
            pick(STRINGS),
            prop::option::of(pick(BOOLS)),
            prop::option::of(pick(STRINGS)),
            extensions,
        )
            .prop_map(|(server, insecure, sni, ext)| {
                let mut fields = vec![Field::Scalar("server", server)];
                fields.extend(insecure.map(|b| Field::Scalar("insecure-skip-tls-verify", b)));
                fields.extend(sni.map(|s| Field::Scalar("tls-server-name", s)));
                fields.extend(ext);
                fields
            })
            .boxed(),
        "user" => (
            prop::option::of(pick(STRINGS)),
            prop::option::of(pick(STRINGS)),
            extensions,
        )
            .prop_map(|(token, username, ext)| {
                let mut fields = Vec::new();
                fields.extend(token.map(|t| Field::Scalar("token", t)));
                fields.extend(username.map(|u| Field::Scalar("username", u)));
                fields.extend(ext);
                fields
            })
            .boxed(),
        _ => (
            pick(NAMES),
            pick(NAMES),
            prop::option::of(pick(STRINGS)),
            extensions,
        )
            .prop_map(|(cluster, user, namespace, ext)| {
                let mut fields = vec![
                    Field::Scalar("cluster", cluster),
                    Field::Scalar("user", user),
                ];
                fields.extend(namespace.map(|n| Field::Scalar("namespace", n)));
                fields.extend(ext);
                fields
            })
            .boxed(),
    }
}

fn flow_fields(fields: &[(String, String)]) -> String {
    let inner: Vec<String> = fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn flow_entry(name: &str, kind: &str, fields: &[Field]) -> String {
    let inner: Vec<String> = fields
        .iter()
        .map(|f| match f {
            Field::Scalar(k, v) => format!("{k}: {v}"),
            Field::Extensions(exts) => {
                let items: Vec<String> = exts
                    .iter()
                    .map(|(n, kv)| format!("{{name: {n}, extension: {}}}", flow_fields(kv)))
                    .collect();
                format!("extensions: [{}]", items.join(", "))
            }
        })
        .collect();
    format!("{{name: {name}, {kind}: {{{}}}}}", inner.join(", "))
}

fn block_entry(pad: &str, name: &str, kind: &str, fields: &[Field], comment: bool) -> String {
    let mut out = format!("{pad}- name: {name}");
    if comment {
        out.push_str(" # named by hand");
    }
    out.push('\n');
    if fields.is_empty() {
        out.push_str(&format!("{pad}  {kind}: {{}}\n"));
        return out;
    }
    out.push_str(&format!("{pad}  {kind}:\n"));
    for field in fields {
        match field {
            Field::Scalar(k, v) => out.push_str(&format!("{pad}    {k}: {v}\n")),
            Field::Extensions(exts) => {
                out.push_str(&format!("{pad}    extensions:\n"));
                for (n, kv) in exts {
                    out.push_str(&format!("{pad}    - name: {n}\n"));
                    if kv.is_empty() {
                        out.push_str(&format!("{pad}      extension: {{}}\n"));
                    } else {
                        out.push_str(&format!("{pad}      extension:\n"));
                        for (k, v) in kv {
                            out.push_str(&format!("{pad}        {k}: {v}\n"));
                        }
                    }
                }
            }
        }
    }
    out
}

fn list(key: &'static str, kind: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just(format!("{key}:\n")),
        1 => Just(format!("{key}: []\n")),
        5 => (
            // kubectl refuses two entries of one name.
            prop::sample::subsequence(NAMES, 1..4),
            prop::collection::vec((body(kind), any::<bool>()), 4),
            0..3u8,
        )
            .prop_map(move |(names, bodies, style)| {
                let items: Vec<(&str, Vec<Field>, bool)> = names
                    .into_iter()
                    .zip(bodies)
                    .map(|(n, (f, c))| (n, f, c))
                    .collect();
                if style == 2 {
                    let flows: Vec<String> =
                        items.iter().map(|(n, f, _)| flow_entry(n, kind, f)).collect();
                    return format!("{key}: [{}]\n", flows.join(", "));
                }
                let pad = if style == 1 { "  " } else { "" };
                let mut out = format!("{key}:\n");
                for (name, fields, comment) in &items {
                    out.push_str(&block_entry(pad, name, kind, fields, *comment));
                }
                out
            }),
    ]
}

fn kubeconfig() -> impl Strategy<Value = String> {
    (
        list("clusters", "cluster"),
        list("users", "user"),
        list("contexts", "context"),
        prop::option::of(pick(NAMES)),
        prop::option::of(extensions()),
        any::<bool>(),
    )
        .prop_map(|(clusters, users, contexts, current, top_ext, comment)| {
            let mut text = String::new();
            if comment {
                text.push_str("# kept by hand\n");
            }
            text.push_str("apiVersion: v1\nkind: Config\npreferences: {}\n");
            text.push_str(&clusters);
            text.push_str(&users);
            text.push_str(&contexts);
            if let Some(c) = current {
                text.push_str(&format!("current-context: {c}\n"));
            }
            if let Some(Field::Extensions(exts)) = top_ext {
                text.push_str("extensions:\n");
                for (n, kv) in exts {
                    text.push_str(&format!("- name: {n}\n  extension: {}\n", flow_fields(&kv)));
                }
            }
            text
        })
}

fn view(sandbox: &Sandbox, kubectl: &PathBuf) -> Result<Value, String> {
    let out = run(sandbox
        .isolated(kubectl)
        .args(["config", "view", "--raw", "-o", "json"]));
    if !out.status.success() {
        return Err(stderr(&out));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
}

/// The entries of a list that are not tka's, with an absent list as an empty one.
fn foreign(view: &Value, key: &str) -> Vec<Value> {
    view[key]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["name"] != "tka-prod")
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// The tka proxy URL the proxied server advertises.
const PROXY: &str = "http://tka-prod.example.ts.net:8443";

fn check(
    text: &str,
    switch: bool,
    server: &Server,
    proxied: bool,
    kubectl: &PathBuf,
) -> Result<(), TestCaseError> {
    let sandbox = Sandbox::new();
    let file = sandbox.kubeconfig();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, text).unwrap();
    let before = view(&sandbox, kubectl)
        .map_err(|e| TestCaseError::fail(format!("kubectl refuses the generated file: {e}")))?;

    let mut login = sandbox.tka();
    login.args(["login", "prod", "--server", &server.uri()]);
    if !switch {
        login.arg("--no-switch");
    }
    let out = run(&mut login);
    prop_assert!(out.status.success(), "tka login: {}", stderr(&out));
    let during = view(&sandbox, kubectl).map_err(|e| {
        TestCaseError::fail(format!(
            "kubectl cannot read what tka wrote: {e}\n{}",
            sandbox.read_kubeconfig()
        ))
    })?;
    let written = sandbox.read_kubeconfig();
    for key in ["clusters", "users", "contexts"] {
        prop_assert_eq!(
            foreign(&during, key),
            foreign(&before, key),
            "{}:\n{}",
            key,
            written
        );
        prop_assert_eq!(
            during[key]
                .as_array()
                .map_or(0, |l| l.iter().filter(|e| e["name"] == "tka-prod").count()),
            1,
            "{}",
            written
        );
    }
    prop_assert_eq!(&during["preferences"], &before["preferences"]);
    prop_assert_eq!(&during["extensions"], &before["extensions"], "{}", written);
    let current = if switch {
        Value::from("tka-prod")
    } else {
        before["current-context"].clone()
    };
    prop_assert_eq!(&during["current-context"], &current, "{}", written);
    // kubectl reads tka's own entries as the shape asked for.
    let tka = |key: &str| {
        during[key]
            .as_array()
            .and_then(|l| l.iter().find(|e| e["name"] == "tka-prod"))
            .cloned()
            .unwrap_or_default()
    };
    let (cluster, user) = (tka("clusters"), tka("users"));
    let has = |key: &str| user["user"].get(key).is_some();
    if proxied {
        prop_assert_eq!(&cluster["cluster"]["server"], PROXY, "{}", written);
        prop_assert!(
            cluster["cluster"]
                .get("certificate-authority-data")
                .is_none(),
            "{}",
            written
        );
        prop_assert!(!has("token") && !has("exec"), "{}", written);
    } else {
        prop_assert_eq!(
            &cluster["cluster"]["server"],
            "https://prod.api.example:6443",
            "{}",
            written
        );
        prop_assert!(has("exec") && !has("token"), "{}", written);
    }

    let out = run(sandbox.tka().args(["logout", "prod"]));
    prop_assert!(out.status.success(), "tka logout: {}", stderr(&out));
    let after = view(&sandbox, kubectl)
        .map_err(|e| TestCaseError::fail(format!("kubectl cannot read it after logout: {e}")))?;
    prop_assert_eq!(&after, &before, "{}", sandbox.read_kubeconfig());
    Ok(())
}

#[test]
fn kubectl_reads_foreign_entries_the_same_before_during_and_after_a_login() {
    let kubectls = kubectl_programs();
    if kubectls.is_empty() {
        assert_ne!(
            std::env::var("TKA_REQUIRE_TESTENV").as_deref(),
            Ok("1"),
            "TKA_REQUIRE_TESTENV=1 but there is no kubectl on PATH or in TKA_TESTENV_BIN"
        );
        eprintln!("skipping: no kubectl on PATH or in TKA_TESTENV_BIN");
        return;
    }
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    server.on_logout();
    // A server that offers the tka proxy: a login goes through it by default.
    let proxied = Server::start();
    proxied.mount(
        wiremock::Mock::given(wiremock::matchers::method("GET"))
            .and(wiremock::matchers::path("/api/v1/cluster"))
            .respond_with(
                wiremock::ResponseTemplate::new(200)
                    .set_body_json(cluster_response("prod", Some(PROXY))),
            ),
    );
    proxied.on_login(proxied_login_response(PROXY));
    proxied.on_logout();
    for kubectl in &kubectls {
        let mut runner = TestRunner::new(Config {
            cases: CASES,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(
            &(kubeconfig(), any::<bool>(), any::<bool>()),
            |(text, switch, through_proxy)| {
                let to = if through_proxy { &proxied } else { &server };
                check(&text, switch, to, through_proxy, kubectl)
            },
        );
        if let Err(e) = result {
            panic!("with {}: {e}", kubectl.display());
        }
    }
    // Every case logged in once, both shapes among them.
    assert!(
        server.calls("POST", "/api/v1/login") + proxied.calls("POST", "/api/v1/login")
            >= CASES as usize * kubectls.len()
    );
    assert!(server.calls("POST", "/api/v1/login") > 0);
    assert!(proxied.calls("POST", "/api/v1/login") > 0);
}

/// What kubectl accepts, tka accepts (and kubectl reads it the same after); what tka refuses,
/// it refuses with a message that says truly whether kubectl reads it.
#[test]
fn tka_accepts_what_kubectl_accepts_or_says_truly_why_not() {
    let kubectls = kubectl_programs();
    if kubectls.is_empty() {
        assert_ne!(
            std::env::var("TKA_REQUIRE_TESTENV").as_deref(),
            Ok("1"),
            "TKA_REQUIRE_TESTENV=1 but there is no kubectl on PATH or in TKA_TESTENV_BIN"
        );
        eprintln!("skipping: no kubectl on PATH or in TKA_TESTENV_BIN");
        return;
    }
    let server = Server::start();
    server.on_login(login_response("https://prod.api.example:6443"));
    server.on_logout();
    let head = "apiVersion: v1\nkind: Config\n";
    // kubectl accepts these (the last of duplicate keys wins); so must tka.
    let accepted = [
        format!(
            "{head}clusters:\n- name: kind\n  cluster:\n    server: https://a.example\n    server: https://b.example\n    extensions:\n    - name: x\n      extension: {{big: 123456789012345678901234567890, mode: 0755}}\ncurrent-context: kind\ncurrent-context: \"no\"\n"
        ),
        format!("{head}contexts:\n- name: \"no\"\n  context: {{cluster: \"on\", user: \"y\"}}\n"),
        // A local tag keeps the text.
        format!("{head}current-context: !mine x\n"),
    ];
    // kubectl refuses these too: a name it reads as a boolean or a number.
    let both_refuse = [
        format!("{head}contexts:\n- name: no\n  context: {{cluster: a, user: a}}\n"),
        format!("{head}current-context: 0755\n"),
        format!("{head}current-context: !!int \"5\"\n"),
    ];
    // kubectl reads these; tka does not edit through an alias, nor decode !!binary.
    let only_tka_refuses = [
        format!("{head}x-empty: &none []\nclusters: *none\n"),
        format!("{head}current-context: !!binary aGk=\n"),
    ];
    for kubectl in &kubectls {
        for text in &accepted {
            if let Err(e) = check(text, true, &server, false, kubectl) {
                panic!("with {}: {e}\n{text}", kubectl.display());
            }
        }
        let refusals = both_refuse
            .iter()
            .map(|t| (t, false, "kubectl cannot read this file either"))
            .chain(
                only_tka_refuses
                    .iter()
                    .map(|t| (t, true, "kubectl reads that, but tka does not edit it")),
            );
        for (text, kubectl_reads, says) in refusals {
            let sandbox = Sandbox::new();
            let file = sandbox.kubeconfig();
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, text).unwrap();
            assert_eq!(
                view(&sandbox, kubectl).is_ok(),
                kubectl_reads,
                "{} on\n{text}",
                kubectl.display()
            );
            let logins = server.calls("POST", "/api/v1/login");
            let out = run(sandbox
                .tka()
                .args(["login", "prod", "--server", &server.uri()]));
            assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
            assert!(stderr(&out).contains(says), "{}", stderr(&out));
            assert_eq!(server.calls("POST", "/api/v1/login"), logins);
            assert_eq!(std::fs::read_to_string(&file).unwrap(), *text);
        }
    }
}
