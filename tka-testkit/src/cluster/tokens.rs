//! ServiceAccount tokens as the fake issues them: JWT-shaped (`header.claims.signature`,
//! base64url) with the claims a real bound token carries, but unsigned. It owns the token format;
//! validity (is the ServiceAccount still there, has the token expired) is decided by the cluster.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use serde_json::{Value, json};

/// What goes into a token.
pub(crate) struct Claims<'a> {
    pub(crate) audiences: &'a [Value],
    pub(crate) namespace: &'a str,
    pub(crate) service_account: &'a str,
    pub(crate) uid: &'a str,
    pub(crate) issued_at: Timestamp,
    pub(crate) expires_at: Timestamp,
    pub(crate) jti: &'a str,
}

/// The issuer named in every token.
pub(crate) const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

pub(crate) fn encode(claims: &Claims<'_>) -> String {
    let header = json!({"alg": "none", "kid": "tka-fake-cluster", "typ": "JWT"});
    let body = json!({
        "aud": claims.audiences,
        "exp": claims.expires_at.as_second(),
        "iat": claims.issued_at.as_second(),
        "nbf": claims.issued_at.as_second(),
        "iss": ISSUER,
        "jti": claims.jti,
        "sub": format!("system:serviceaccount:{}:{}", claims.namespace, claims.service_account),
        "kubernetes.io": {
            "namespace": claims.namespace,
            "serviceaccount": {"name": claims.service_account, "uid": claims.uid},
        },
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(body.to_string()),
        URL_SAFE_NO_PAD.encode(b"unsigned"),
    )
}

/// The claims of a token the fake issued (or any JWT), without checking anything.
pub(crate) fn decode_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, Some(claims), _, None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_round_trip_and_name_the_service_account() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let token = encode(&Claims {
            audiences: &[json!("api")],
            namespace: "tka-system",
            service_account: "tka-alice-abcde",
            uid: "u-1",
            issued_at: now,
            expires_at: now
                .checked_add(jiff::SignedDuration::from_mins(15))
                .unwrap(),
            jti: "j-1",
        });
        assert_eq!(token.split('.').count(), 3);
        let claims = decode_claims(&token).unwrap();
        assert_eq!(
            claims["sub"],
            "system:serviceaccount:tka-system:tka-alice-abcde"
        );
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert_eq!(claims["jti"], "j-1");
        assert_eq!(claims["exp"], now.as_second() + 900);
        assert!(decode_claims("not-a-token").is_none());
    }
}
