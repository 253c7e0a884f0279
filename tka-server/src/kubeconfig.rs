//! A ready-to-use kubeconfig for `POST /api/v1/login` with `Accept: application/yaml`: the token
//! embedded, built by the server from its own data, for curl users. The tka CLI never asks for
//! it; it builds its own entries from the JSON answer. This module only renders.

use serde::Serialize;
use tka_core::api::LoginResponse;

#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [Named<'a, Cluster<'a>>; 1],
    users: [Named<'a, User<'a>>; 1],
    contexts: [Named<'a, Context<'a>>; 1],
    #[serde(rename = "current-context")]
    current_context: &'a str,
}

#[derive(Serialize)]
struct Named<'a, T> {
    name: &'a str,
    #[serde(flatten)]
    value: T,
}

#[derive(Serialize)]
struct Cluster<'a> {
    cluster: ClusterData<'a>,
}

#[derive(Serialize)]
struct ClusterData<'a> {
    server: &'a str,
    #[serde(
        rename = "certificate-authority-data",
        skip_serializing_if = "Option::is_none"
    )]
    certificate_authority_data: Option<&'a str>,
}

#[derive(Serialize)]
struct User<'a> {
    user: UserData<'a>,
}

#[derive(Serialize)]
struct UserData<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct Context<'a> {
    context: ContextData<'a>,
}

#[derive(Serialize)]
struct ContextData<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// The `Content-Type` of a kubeconfig answer.
pub const CONTENT_TYPE: &str = "application/yaml";

/// Renders a kubeconfig with one cluster, one user (the token) and one current context, all
/// named `tka-<cluster>`.
pub fn render(login: &LoginResponse) -> Result<String, serde_yaml::Error> {
    let name = format!("tka-{}", login.cluster.name);
    let config = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: [Named {
            name: &name,
            value: Cluster {
                cluster: ClusterData {
                    server: &login.cluster.server,
                    certificate_authority_data: login.cluster.certificate_authority_data.as_deref(),
                },
            },
        }],
        users: [Named {
            name: &name,
            value: User {
                user: UserData {
                    token: login.token.token.expose(),
                },
            },
        }],
        contexts: [Named {
            name: &name,
            value: Context {
                context: ContextData {
                    cluster: &name,
                    user: &name,
                },
            },
        }],
        current_context: &name,
    };
    serde_yaml::to_string(&config)
}
