//! Logins two ways on the same API server: through the real `tka-server` (a PROXY-protocol
//! connection that speaks for a synthetic device, then `POST /api/v1/login`), and the
//! **baseline**: the same API writes a login makes (Session, ServiceAccount, ClusterRoleBinding,
//! TokenRequest, Session status), in the shapes of DESIGN §5, straight from a kube client with the
//! server's own token and no tka in between. Times every step of the baseline, so the difference
//! can be attributed. Must not be used against anything but the testenv.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tka_core::kubernetes::{
    MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, SESSION_LABEL, Session, SessionIdentity, SessionSpec,
    USER_LABEL,
};
use tka_core::naming::{self, NameSuffix};
use tka_core::{Identity, RoleName};

use super::ScaleError;
use super::env::{NS, ROLE, Server, User};

/// One call to the server as `user`'s device; the status and the time to the last byte.
pub async fn tka_call(
    server: &Server,
    user: &User,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, Duration), ScaleError> {
    let (status, _, took) = tka_exchange(server, user, method, path, body).await?;
    Ok((status, took))
}

/// [`tka_call`] with the answer's body too.
pub async fn tka_exchange(
    server: &Server,
    user: &User,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String, Duration), ScaleError> {
    let (status, text, took) = server.call(user, method, path, body).await?;
    if !(200..300).contains(&status) {
        return Err(ScaleError::new(format!(
            "{method} {path} as {} answered {status}: {text}",
            user.peer.login_name
        )));
    }
    Ok((status, text, took))
}

/// `tka login` as the server sees it: `POST /api/v1/login` for the `viewer` role.
pub async fn tka_login(server: &Server, user: &User) -> Result<Duration, ScaleError> {
    let body = format!(r#"{{"role":"{ROLE}"}}"#);
    Ok(tka_call(server, user, "POST", "/api/v1/login", Some(&body))
        .await?
        .1)
}

/// `tka logout`: `DELETE /api/v1/session`.
pub async fn tka_logout(server: &Server, user: &User) -> Result<Duration, ScaleError> {
    Ok(tka_call(server, user, "DELETE", "/api/v1/session", None)
        .await?
        .1)
}

/// Runs `work(i)` for `i` in `0..n` with at most `concurrency` at once; the samples in
/// completion order and the wall time of the whole batch. Stops at the first error.
pub async fn batch<F, Fut, T>(
    n: usize,
    concurrency: usize,
    work: F,
) -> Result<(Vec<T>, Duration), ScaleError>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T, ScaleError>>,
{
    let started = Instant::now();
    let mut out = Vec::with_capacity(n);
    let mut stream = futures::stream::iter(0..n)
        .map(&work)
        .buffer_unordered(concurrency.max(1));
    while let Some(item) = stream.next().await {
        out.push(item?);
    }
    Ok((out, started.elapsed()))
}

/// The steps of one baseline login, timed.
#[derive(Debug, Clone, Default)]
pub struct BaselineSteps {
    /// Creating the Session.
    pub session: Duration,
    /// Creating the ServiceAccount.
    pub service_account: Duration,
    /// Creating the ClusterRoleBinding.
    pub binding: Duration,
    /// The TokenRequest.
    pub token: Duration,
    /// Writing the Session's status.
    pub status: Duration,
    /// All five writes.
    pub total: Duration,
    /// Not part of the baseline: one LIST of Sessions by the node label, which tka's login
    /// makes twice (to find the device's session, and to check for a racing login).
    pub lookup: Duration,
}

/// What a baseline login left behind, to delete.
#[derive(Debug, Clone)]
pub struct BaselineObjects {
    session: String,
    binding: String,
}

fn err(what: &str) -> impl Fn(kube::Error) -> ScaleError + '_ {
    move |e| ScaleError::new(format!("baseline: {what}: {e}"))
}

/// The writes of one login, straight to the API server with `client` (the server's token).
pub async fn baseline_login(
    client: &kube::Client,
    identity: &Identity,
) -> Result<(BaselineSteps, BaselineObjects), ScaleError> {
    let sessions: Api<Session> = Api::all(client.clone());
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    let pp = PostParams::default();
    let suffix = NameSuffix::from_random(rand::random());
    let revision = NameSuffix::from_random(rand::random());
    let role = RoleName::new(ROLE).map_err(ScaleError::from_display)?;
    let name = naming::session_name(identity, &suffix).map_err(ScaleError::from_display)?;
    let node_label = naming::node_label(identity.key());
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (NODE_LABEL.to_owned(), node_label.clone()),
        (USER_LABEL.to_owned(), naming::user_label(identity.user.id)),
    ]);
    let now = Timestamp::now();
    let expires_at =
        Timestamp::from_second(now.as_second() + 3600).map_err(ScaleError::from_display)?;
    let mut steps = BaselineSteps::default();

    let started = Instant::now();
    let lookup = ListParams::default().labels(&format!("{NODE_LABEL}={node_label}"));
    sessions
        .list(&lookup)
        .await
        .map_err(err("listing sessions"))?;
    steps.lookup = started.elapsed();

    let all = Instant::now();
    let t = Instant::now();
    let mut session = Session::new(
        name.as_str(),
        SessionSpec {
            identity: SessionIdentity::from(identity),
            role: ROLE.to_owned(),
            cluster_roles: vec!["view".to_owned()],
            namespaced: Vec::new(),
            revision: revision.to_string(),
            revised_at: Time(now),
            expires_at: Time(expires_at),
        },
    );
    session.metadata.labels = Some(labels.clone());
    let session = sessions
        .create(&pp, &session)
        .await
        .map_err(err("creating the session"))?;
    steps.session = t.elapsed();

    let owner = OwnerReference {
        api_version: Session::api_version(&()).into_owned(),
        kind: Session::kind(&()).into_owned(),
        name: session.name_any(),
        uid: session.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(false),
    };
    let mut child_labels = labels;
    child_labels.insert(SESSION_LABEL.to_owned(), name.to_string());
    let meta = |object: &str, namespace: Option<&str>| ObjectMeta {
        name: Some(object.to_owned()),
        namespace: namespace.map(str::to_owned),
        labels: Some(child_labels.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };

    let t = Instant::now();
    let account = ServiceAccount {
        metadata: meta(name.as_str(), Some(NS)),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let account = accounts
        .create(&pp, &account)
        .await
        .map_err(err("creating the ServiceAccount"))?;
    steps.service_account = t.elapsed();

    let t = Instant::now();
    let binding_name = naming::binding_name(&name, &role, &revision, 0);
    let binding = ClusterRoleBinding {
        metadata: meta(&binding_name, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: "view".to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".to_owned(),
            name: name.to_string(),
            namespace: Some(NS.to_owned()),
            api_group: None,
        }]),
    };
    let binding = bindings
        .create(&pp, &binding)
        .await
        .map_err(err("creating the ClusterRoleBinding"))?;
    steps.binding = t.elapsed();

    let t = Instant::now();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(900),
            bound_object_ref: None,
        }),
        ..TokenRequest::default()
    };
    let minted = accounts
        .create_token_request(name.as_str(), &pp, &request)
        .await
        .map_err(err("requesting a token"))?;
    steps.token = t.elapsed();

    let t = Instant::now();
    let token_expires = minted
        .status
        .as_ref()
        .and_then(|s| s.expiration_timestamp.clone())
        .unwrap_or(Time(now + SignedDuration::from_mins(15)));
    let status = json!({"status": {
        "phase": "Active",
        "revision": revision.to_string(),
        "serviceAccount": {"namespace": NS, "name": account.name_any(), "uid": account.uid()},
        "bindings": [{"kind": "ClusterRoleBinding", "name": binding.name_any(), "clusterRole": "view", "uid": binding.uid()}],
        "lastTokenExpiresAt": token_expires,
    }});
    sessions
        .patch_status(
            name.as_str(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .map_err(err("writing the session's status"))?;
    steps.status = t.elapsed();
    steps.total = all.elapsed();
    Ok((
        steps,
        BaselineObjects {
            session: name.to_string(),
            binding: binding_name,
        },
    ))
}

/// Deletes what [`baseline_login`] made, in tka's logout order (ServiceAccount, binding,
/// Session); the time it took. Objects already gone are fine.
pub async fn baseline_logout(
    client: &kube::Client,
    objects: &BaselineObjects,
) -> Result<Duration, ScaleError> {
    let started = Instant::now();
    let gone = |r: Result<(), kube::Error>, what: &str| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(ScaleError::new(format!("baseline: deleting {what}: {e}"))),
    };
    let dp = DeleteParams::default();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), NS);
    gone(
        accounts.delete(&objects.session, &dp).await.map(drop),
        "the ServiceAccount",
    )?;
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    gone(
        bindings.delete(&objects.binding, &dp).await.map(drop),
        "the binding",
    )?;
    let sessions: Api<Session> = Api::all(client.clone());
    gone(
        sessions.delete(&objects.session, &dp).await.map(drop),
        "the session",
    )?;
    Ok(started.elapsed())
}
