//! A ready-to-use kubeconfig for `POST /api/v1/login` with `Accept: application/yaml`, for curl
//! users, rendered by tka-core's one kubeconfig renderer ([`tka_core::kubeconfig`], feature
//! `client`) from the same answer the JSON carries: a direct login embeds the token, exactly as
//! `tka login --static` does; a login through the tka proxy (no token in the answer) points at
//! the proxy and carries no credential, exactly as `tka login --via proxy` does. The entries carry tka's marker naming this server, so `tka login` and `tka logout`
//! recognise them later. This module only renders: it must not decide what goes into the answer
//! (the sessions service does) or build YAML by hand.

use tka_core::api::LoginResponse;
use tka_core::endpoint::ServerUrl;
use tka_core::kubeconfig::{
    ContextTemplate, EntryOptions, Kubeconfig, KubeconfigError, LoginEntries, UserCredential,
};

/// The `Content-Type` of a kubeconfig answer.
pub const CONTENT_TYPE: &str = "application/yaml";

/// Renders a kubeconfig with one cluster, one user (the token, or nothing through the proxy) and
/// one current context, all named `tka-<cluster>`; `server` is this tka server as the client
/// reached it.
pub fn render(login: &LoginResponse, server: &ServerUrl) -> Result<String, KubeconfigError> {
    let entries = LoginEntries::new(
        &login.cluster,
        EntryOptions {
            template: &ContextTemplate::default(),
            server,
            identity: None,
            socks5: None,
            namespace: None,
            credential: match &login.token {
                Some(token) => UserCredential::Static {
                    token: token.token.clone(),
                },
                None => UserCredential::Proxied,
            },
        },
    )?;
    Kubeconfig::only(&entries).render()
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use tka_core::api::{ClusterEndpoint, SessionInfo, TokenInfo, Via};
    use tka_core::{ClusterName, RoleName, Secret, SessionName, Ttl};

    use super::*;

    /// A login answer; `proxy` is the advertised tka proxy, and a login through it carries no
    /// token.
    fn login(proxy: Option<&str>) -> LoginResponse {
        LoginResponse {
            cluster: ClusterEndpoint {
                name: ClusterName::new("prod").unwrap(),
                server: "https://10.0.0.1:6443".to_owned(),
                certificate_authority_data: Some("Q0EK".to_owned()),
                proxy: proxy.map(str::to_owned),
                direct_tokens: true,
            },
            session: SessionInfo {
                name: SessionName::new("tka-session-alice").unwrap(),
                role: RoleName::new("sre").unwrap(),
                expires_at: Timestamp::UNIX_EPOCH,
                device: "laptop".to_owned(),
                caller: "alice@example.com".to_owned(),
            },
            token: proxy.is_none().then(|| TokenInfo {
                token: Secret::new("eyJhbGciOiJSUzI1NiJ9.e30.sig".to_owned()),
                expires_at: Timestamp::UNIX_EPOCH,
            }),
            via: if proxy.is_some() {
                Via::Proxy
            } else {
                Via::Direct
            },
            ttl: Ttl::parse("1h").unwrap(),
            clamped: None,
        }
    }

    fn rendered(proxy: Option<&str>) -> serde_json::Value {
        let server = ServerUrl::parse("http://tka-prod").unwrap();
        let text = render(&login(proxy), &server).unwrap();
        serde_yaml::from_str(&text).unwrap()
    }

    #[test]
    fn the_kubeconfig_talks_to_the_api_server_with_the_token() {
        let config = rendered(None);
        assert_eq!(config["current-context"], "tka-prod");
        let cluster = &config["clusters"][0];
        assert_eq!(cluster["name"], "tka-prod");
        assert_eq!(cluster["cluster"]["server"], "https://10.0.0.1:6443");
        assert_eq!(cluster["cluster"]["certificate-authority-data"], "Q0EK");
        assert_eq!(
            config["users"][0]["user"]["token"],
            "eyJhbGciOiJSUzI1NiJ9.e30.sig"
        );
        assert!(config["users"][0]["user"].get("exec").is_none());
        assert_eq!(config["contexts"][0]["context"]["cluster"], "tka-prod");
        assert_eq!(config["contexts"][0]["context"]["user"], "tka-prod");
    }

    #[test]
    fn a_tka_proxy_in_the_endpoint_is_the_server() {
        let config = rendered(Some("https://tka-proxy.example.ts.net"));
        let cluster = &config["clusters"][0]["cluster"];
        assert_eq!(cluster["server"], "https://tka-proxy.example.ts.net");
        // The cluster's own CA does not apply to the proxy.
        assert!(cluster.get("certificate-authority-data").is_none());
        // And the user entry holds no credential at all.
        let user = config["users"][0]["user"].as_object().unwrap();
        assert_eq!(user.keys().collect::<Vec<_>>(), ["extensions"]);
        assert_eq!(config["contexts"][0]["context"]["user"], "tka-prod");
    }
}
