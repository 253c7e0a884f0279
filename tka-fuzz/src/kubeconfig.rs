//! The kubeconfig merge the CLI runs on the user's own file (`tka_core::kubeconfig`), with a
//! cluster endpoint as a (possibly hostile) tka server sends it.
//!
//! Input: the kubeconfig text, optionally followed by a NUL and a `ClusterEndpoint` as JSON
//! (a fixed endpoint when absent or unreadable). The credential kind follows the input's
//! length. Properties:
//! - an accepted file renders as exactly its text;
//! - a login is refused, changing nothing, exactly when its trial (`check_login`) refuses;
//! - after a login, and after the logout that follows it, every entry that does not carry
//!   tka's marker, and every other top-level key, reads (as YAML) as before: a merge never
//!   drops or alters a foreign context, cluster or user;
//! - the result parses again, names the login's context as current (when switching) and
//!   lists it among tka's contexts; the logout removes it.

use serde_yaml::Value as Yaml;
use tka_core::api::ClusterEndpoint;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::{
    ContextTemplate, EntryOptions, Kubeconfig, LOGIN_EXTENSION, LoginEntries, UserCredential,
};
use tka_core::{ClusterName, Secret};

use crate::support::split_nul;

const LISTS: [&str; 3] = ["clusters", "users", "contexts"];

/// The target.
pub fn target(data: &[u8]) {
    let (text, endpoint) = split_nul(data);
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(mut config) = Kubeconfig::parse(text) else {
        return;
    };
    assert_eq!(config.render().unwrap(), text, "parsing changed the text");
    let _ = (config.current_context(), config.tka_contexts());

    let endpoint = endpoint
        .and_then(|e| serde_json::from_slice::<ClusterEndpoint>(e).ok())
        .unwrap_or_else(|| ClusterEndpoint {
            name: ClusterName::new("prod").unwrap(),
            server: "https://203.0.113.7:6443".to_owned(),
            certificate_authority_data: Some(
                "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2c9PQ==".to_owned(),
            ),
            proxy: Some("https://tka-prod.example.ts.net:8443".to_owned()),
            direct_tokens: true,
        });
    let credential = match data.len() % 3 {
        0 => UserCredential::Exec {
            command: "/usr/local/bin/tka".to_owned(),
        },
        1 => UserCredential::Static {
            token: Secret::new("fuzz-token".to_owned()),
        },
        _ => UserCredential::Proxied,
    };
    let server = ServerUrl::parse("https://tka-prod.example.ts.net").unwrap();
    let template = ContextTemplate::default();
    let entries = match LoginEntries::new(
        &endpoint,
        EntryOptions {
            template: &template,
            server: &server,
            identity: Some("alice"),
            socks5: None,
            namespace: None,
            credential,
        },
    ) {
        Ok(entries) => entries,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let name = entries.context_name().to_owned();
    // The API server URL a server sent is stored normalised: reading it again changes nothing.
    assert_eq!(
        ServerUrl::parse(entries.api_server().as_str())
            .ok()
            .as_ref(),
        Some(entries.api_server())
    );

    let before = serde_yaml::from_str::<Yaml>(text).ok();
    let switch = data.first().is_some_and(|b| b % 2 == 0);
    let trial = config.check_login(&name);
    let unchanged = config.clone();
    match config.login(&entries, switch) {
        Ok(change) => {
            assert!(
                trial.is_ok(),
                "login succeeded where its trial refused: {trial:?}"
            );
            assert_eq!(change.context, name);
        }
        Err(e) => {
            assert_eq!(trial, Err(e), "login and its trial disagree");
            assert_eq!(config, unchanged, "a refused login changed the file");
            return;
        }
    }
    let after_login = config.render().unwrap();
    let reparsed = Kubeconfig::parse(&after_login)
        .unwrap_or_else(|e| panic!("the file after a login does not parse: {e}\n{after_login}"));
    assert_eq!(reparsed, config);
    assert!(
        config.tka_contexts().iter().any(|c| c.name == name),
        "the login's context is not among tka's"
    );
    if switch {
        assert_eq!(config.current_context(), Some(name.as_str()));
    }
    let yaml_after_login = serde_yaml::from_str::<Yaml>(&after_login);
    if let Some(before) = &before {
        let after = yaml_after_login.as_ref().unwrap_or_else(|e| {
            panic!("a login made a readable file unreadable: {e}\n{after_login}")
        });
        foreign_entries_kept(text, before, after, &name);
    }

    let named = |config: &Kubeconfig| {
        config
            .tka_contexts()
            .iter()
            .filter(|c| c.name == name)
            .count()
    };
    let logged_in = named(&config);
    match config.logout(&name) {
        Ok(Some(change)) => assert_eq!(change.context, name),
        Ok(None) => panic!("logout found no tka context {name:?} right after the login"),
        Err(e) => panic!("logout right after a login failed: {e}\n{after_login}"),
    }
    let after_logout = config.render().unwrap();
    let reparsed = Kubeconfig::parse(&after_logout)
        .unwrap_or_else(|e| panic!("the file after a logout does not parse: {e}\n{after_logout}"));
    assert_eq!(reparsed, config);
    // One tka context of that name is gone (a hand-edited file may have held two).
    assert_eq!(named(&config), logged_in - 1);
    if logged_in == 1 {
        assert_ne!(config.current_context(), Some(name.as_str()));
    }
    if let Some(before) = &before {
        let after = serde_yaml::from_str::<Yaml>(&after_logout).unwrap_or_else(|e| {
            panic!("login and logout made a readable file unreadable: {e}\n{after_logout}")
        });
        foreign_entries_kept(text, before, &after, &name);
    }
}

/// Whether a list item carries tka's marker extension (its body's `extensions` name
/// `tka.dev/login`): tka may rewrite such entries, e.g. to splice `previous-context` records.
fn is_tkas(item: &Yaml, body_key: &str) -> bool {
    item.get(body_key)
        .and_then(|body| body.get("extensions"))
        .and_then(Yaml::as_sequence)
        .is_some_and(|extensions| {
            extensions
                .iter()
                .any(|e| e.get("name").and_then(Yaml::as_str) == Some(LOGIN_EXTENSION))
        })
}

/// Every entry of `before`'s lists not named `tka_name`, and every top-level key other than
/// the lists and `current-context`, is in `after`, read the same.
fn foreign_entries_kept(text: &str, before: &Yaml, after: &Yaml, tka_name: &str) {
    let Some(before) = before.as_mapping() else {
        return;
    };
    let after = after
        .as_mapping()
        .expect("the merged file's top level is a mapping");
    for (key, value) in before {
        // A kubeconfig's keys are strings; where YAML parsers disagree on odd text (an anchor
        // with no key, `&a: `), a non-string key means nothing to kubectl and is not compared.
        let Some(key_text) = key.as_str() else {
            continue;
        };
        // The same for a string key the text does not write plainly at the start of a line
        // (`key:`, quoted or not): an anchored or tagged key such as `&a:: ` is odd text on
        // which the parsers disagree, not an entry of a kubeconfig.
        let plain = [
            format!("{key_text}:"),
            format!("\"{key_text}\":"),
            format!("'{key_text}':"),
        ];
        if !text
            .lines()
            .any(|l| plain.iter().any(|p| l.starts_with(p.as_str())))
        {
            continue;
        }
        if key_text == "current-context" {
            continue;
        }
        if LISTS.contains(&key_text) {
            let Some(items) = value.as_sequence() else {
                continue;
            };
            let after_items = after
                .get(key)
                .and_then(Yaml::as_sequence)
                .unwrap_or_else(|| panic!("`{key_text}` is no longer a list"));
            let body_key = key_text.trim_end_matches('s');
            for item in items {
                if item.get("name").and_then(Yaml::as_str) == Some(tka_name)
                    || is_tkas(item, body_key)
                {
                    continue;
                }
                assert!(
                    after_items.contains(item),
                    "`{key_text}` lost or changed the foreign entry {item:?}"
                );
            }
        } else {
            assert_eq!(
                after.get(key),
                Some(value),
                "the top-level key {key:?} was changed"
            );
        }
    }
}
