//! Tokens stay out of `Debug` output and out of panic messages: every public type of tka-core
//! that holds one (always compiled; the `client` feature's `CachedToken` and `UserCredential`
//! are checked by their own modules' tests). A failed `assert_eq!` prints both sides with
//! `Debug`, so that is the panic a token would most likely reach.

use jiff::Timestamp;
use tka_core::api::{LoginResponse, TokenResponse};
use tka_core::issuer::{IssueOutcome, IssuedCredential};
use tka_core::{RoleName, Secret, SessionName};

const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXRzIn0.first-signature";
const OTHER: &str = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzZWNyZXRzIn0.other-signature";

/// The message of the panic `f` raises.
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let payload = std::panic::catch_unwind(f).expect_err("it panics");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .expect("a text payload")
}

/// `value`'s `Debug` (plain and pretty) and the panic of an `assert_eq!` between `value` and
/// `other`, which differ only in their token, show neither token and do show `[redacted]`.
fn assert_redacted<T>(value: T, other: T)
where
    T: std::fmt::Debug + PartialEq + std::panic::UnwindSafe,
{
    let debug = format!("{value:?}\n{value:#?}");
    assert!(!debug.contains("eyJ"), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    let message = panic_message(move || assert_eq!(value, other));
    assert!(
        message.contains("assertion `left == right` failed"),
        "{message}"
    );
    assert!(
        !message.contains("eyJ") && !message.contains("signature"),
        "{message}"
    );
    assert!(message.contains("[redacted]"), "{message}");
}

fn credential(token: &str) -> IssuedCredential {
    IssuedCredential {
        session: SessionName::new("tka-alice-x7k2p9qz").unwrap(),
        outcome: IssueOutcome::Created,
        role: RoleName::new("sre").unwrap(),
        token: Secret::new(token.to_owned()),
        token_id: Some("b2c4e1f0-jti".to_owned()),
        token_expires_at: Timestamp::UNIX_EPOCH,
        session_expires_at: Timestamp::UNIX_EPOCH,
        service_account: "tka-system/tka-alice-x7k2p9qz".to_owned(),
    }
}

fn login_json(token: &str) -> serde_json::Value {
    serde_json::json!({
        "cluster": {"name": "prod", "server": "https://prod.example:6443"},
        "session": {
            "name": "tka-alice-x7k2p9qz", "role": "sre", "expiresAt": "2030-01-01T00:00:00Z",
            "device": "laptop.example.ts.net", "caller": "alice@example.com"
        },
        "token": {"token": token, "expiresAt": "2030-01-01T00:00:00Z"},
        "ttl": "1h",
    })
}

#[test]
fn every_type_holding_a_token_keeps_it_out_of_debug_and_assertion_panics() {
    // Allowed where it belongs: the token itself is there to be sent.
    assert_eq!(credential(TOKEN).token.expose(), TOKEN);

    assert_redacted(Secret::new(TOKEN.to_owned()), Secret::new(OTHER.to_owned()));
    assert_redacted(credential(TOKEN), credential(OTHER));

    // The wire types, as read from a server's answer.
    let login = |token| serde_json::from_value::<LoginResponse>(login_json(token)).unwrap();
    assert_eq!(login(TOKEN).token.unwrap().token.expose(), TOKEN);
    assert_redacted(login(TOKEN), login(OTHER));
    let refresh = |token| {
        let mut body = login_json(token);
        body.as_object_mut()
            .unwrap()
            .retain(|k, _| k == "session" || k == "token");
        serde_json::from_value::<TokenResponse>(body).unwrap()
    };
    assert_eq!(refresh(TOKEN).token.token.expose(), TOKEN);
    assert_redacted(refresh(TOKEN), refresh(OTHER));
}
