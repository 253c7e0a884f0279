//! The bodies of the login API: the requests the server reads (`tka_server::body`, with the
//! wire types of `tka_core::api`) and the answers the CLI reads from a server it may not trust.
//!
//! Input: a body. Properties:
//! - a request body is accepted only when it is a JSON object, and an accepted one written
//!   back reads as the same request; its role and TTL reach policy's parsers without a panic;
//! - the body reader returns the bytes it was given when they fit the cap, in however many
//!   frames they come, and a 413 when they do not;
//! - an answer the CLI reads (login, token, cluster, problem) written back reads as the same;
//!   the cluster endpoint of a login answer becomes kubeconfig entries that parse again and
//!   name that cluster, or is refused with an error.

use std::convert::Infallible;

use axum::body::Body;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tka_core::api::{ClusterResponse, LoginRequest, LoginResponse, Problem, TokenResponse};
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::{
    ContextTemplate, EntryOptions, Kubeconfig, LoginEntries, UserCredential,
};
use tka_core::{RoleName, Secret};
use tka_server::ApiError;
use tka_server::body::{EmptyRequest, parse_json, read_capped};

use crate::support::check_duration;

/// The target.
pub fn target(data: &[u8]) {
    requests(data);
    body_reader(data);
    answers(data);
}

fn requests(data: &[u8]) {
    let starts_with_brace = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    match parse_json::<LoginRequest>(data) {
        Ok(request) => {
            assert!(
                starts_with_brace,
                "a body that is not an object was accepted"
            );
            let written = serde_json::to_vec(&request).unwrap();
            assert_eq!(
                parse_json::<LoginRequest>(&written).ok(),
                Some(request.clone())
            );
            if let Some(role) = &request.role {
                let _ = RoleName::new(role.as_str());
            }
            if let Some(ttl) = &request.ttl {
                check_duration(ttl);
            }
        }
        Err(e) => refused(&e),
    }
    match parse_json::<EmptyRequest>(data) {
        Ok(_) => assert!(starts_with_brace),
        Err(e) => refused(&e),
    }
}

fn refused(e: &ApiError) {
    assert!(
        matches!(e, ApiError::BadRequest(_)),
        "a body was refused with something other than 400: {e:?}"
    );
    let _ = e.to_string();
}

/// The body arrives in frames sized by the input's first byte, under a cap set by its second.
fn body_reader(data: &[u8]) {
    let [piece, cap, rest @ ..] = data else {
        return;
    };
    let piece = usize::from(*piece % 32) + 1;
    let limit = usize::from(*cap) * 8;
    let frames: Vec<Result<Vec<u8>, Infallible>> =
        rest.chunks(piece).map(|c| Ok(c.to_vec())).collect();
    let body = Body::from_stream(futures::stream::iter(frames));
    let read = futures::executor::block_on(read_capped(body, limit));
    if rest.len() <= limit {
        assert_eq!(
            read.ok().as_deref(),
            Some(rest),
            "a body within the cap was not read as sent"
        );
    } else {
        assert!(
            matches!(read, Err(ApiError::BodyTooLarge { limit: l }) if l == limit),
            "a body over the cap was not a 413: {read:?}"
        );
    }
}

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    data: &[u8],
) -> Option<T> {
    let value: T = serde_json::from_slice(data).ok()?;
    // An unknown problem code reads (for newer servers) but is never written.
    if let Ok(written) = serde_json::to_vec(&value) {
        let again: T = serde_json::from_slice(&written).unwrap_or_else(|e| {
            panic!(
                "{} written back does not read: {e}",
                std::any::type_name::<T>()
            )
        });
        assert_eq!(
            again,
            value,
            "{} written back reads differently",
            std::any::type_name::<T>()
        );
    }
    Some(value)
}

fn answers(data: &[u8]) {
    if let Some(login) = round_trip::<LoginResponse>(data) {
        let _ = format!("{login:?}");
        kubeconfig_from(&login);
    }
    round_trip::<TokenResponse>(data);
    round_trip::<ClusterResponse>(data);
    if let Some(problem) = round_trip::<Problem>(data) {
        let _ = problem.code.to_string();
    }
}

fn kubeconfig_from(login: &LoginResponse) {
    let server = ServerUrl::parse("https://tka-prod.example.ts.net").unwrap();
    let template = ContextTemplate::default();
    let credentials = [
        UserCredential::Exec {
            command: "/usr/local/bin/tka".to_owned(),
        },
        UserCredential::Static {
            token: Secret::new("fuzz-token".to_owned()),
        },
        UserCredential::Proxied,
    ];
    for credential in credentials {
        let options = EntryOptions {
            template: &template,
            server: &server,
            identity: None,
            socks5: None,
            namespace: None,
            credential,
        };
        let Ok(entries) = LoginEntries::new(&login.cluster, options) else {
            continue;
        };
        let config = Kubeconfig::only(&entries);
        let text = config.render().unwrap();
        let again = Kubeconfig::parse(&text)
            .unwrap_or_else(|e| panic!("tka's own kubeconfig does not parse: {e}\n{text}"));
        let contexts = again.tka_contexts();
        assert_eq!(contexts.len(), 1, "{text}");
        assert_eq!(contexts[0].marker.cluster, login.cluster.name);
        assert_eq!(again.current_context(), Some(entries.context_name()));
    }
}
