//! The cases of the behaviour suite, by topic. Each takes a [`Fixture`] of fresh backends, drives
//! tka's issuer and reconciler, and asserts by listing the objects in the cluster. This module
//! holds what several topics share (checks of a session's objects, scripted names, the write
//! log); it must not hold a case, and no case may talk to the cluster other than through the
//! kube API.

mod faults;
mod foreign;
mod login;
mod reconcile;
mod revoke;

pub use faults::*;
pub use foreign::*;
pub use login::*;
pub use reconcile::*;
pub use revoke::*;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use jiff::SignedDuration;
use k8s_openapi::api::rbac::v1::{RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tka_core::issuer::IssuedCredential;
use tka_core::kubernetes::{
    FINALIZER, MANAGED_BY, MANAGED_BY_LABEL, NODE_LABEL, REVISION_LABEL, SESSION_LABEL, Session,
    SessionIdentity, SessionSpec, USER_LABEL,
};
use tka_core::naming::{NameSuffix, node_label, user_label};

use crate::cluster::Call;
use crate::suite::SuiteBackend;
use crate::suite::harness::{Harness, LabelledObjects, Person};

/// The reconciler's default grace period, plus a second.
/// Well past the reconciler's 60 s grace. The margin covers a real API server, which stamps
/// `creationTimestamp` with its own time: that runs ahead of the paused test clock by the real
/// seconds a case has taken so far.
pub(super) fn past_grace() -> SignedDuration {
    SignedDuration::from_secs(90)
}

/// Checks everything DESIGN §5 says about one device's session and its objects.
pub(super) fn assert_session_objects(
    objects: &LabelledObjects,
    credential: &IssuedCredential,
    who: Person,
    namespace: &str,
    name_prefix: &str,
    cluster_roles: &[&str],
    namespaced: &[(&str, &str)],
) {
    let identity = who.identity();
    let name = credential.session.as_str();
    assert!(
        name.starts_with(name_prefix),
        "{name} should start with {name_prefix}"
    );
    assert!(
        name.len() <= 63 && tka_core::domain::is_dns1123_label(name),
        "{name}"
    );
    let session = objects.session(name).expect("the session exists");
    let uid = session.uid().expect("a uid");

    let labels = session.labels();
    assert_eq!(
        labels.get(MANAGED_BY_LABEL).map(String::as_str),
        Some(MANAGED_BY)
    );
    assert_eq!(
        labels.get(NODE_LABEL),
        Some(&node_label(&identity.node.stable_id))
    );
    assert_eq!(labels.get(USER_LABEL), Some(&user_label(identity.user.id)));
    assert!(session.finalizers().iter().any(|f| f == FINALIZER));
    assert_eq!(
        session.spec.identity.node_id,
        identity.node.stable_id.as_str()
    );
    assert_eq!(
        session.spec.identity.login_name,
        identity.user.login_name.as_str()
    );
    assert_eq!(session.spec.identity.user_id, identity.user.id.0);
    assert_eq!(
        session.spec.identity.tags,
        identity
            .node
            .tags
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(session.spec.expires_at.0, credential.session_expires_at);
    assert!(session.is_complete(), "status: {:?}", session.status);
    let status = session.status.clone().unwrap_or_default();
    assert_eq!(status.last_token_id, credential.token_id);
    assert_eq!(credential.service_account, format!("{namespace}/{name}"));

    let (sas, crbs, rbs) = objects.children_of(name);
    assert_eq!(sas.len(), 1, "exactly one ServiceAccount");
    let sa = sas[0];
    assert_eq!(sa.name_any(), name);
    assert_eq!(sa.namespace().as_deref(), Some(namespace));
    for child_labels in [sa.labels()]
        .into_iter()
        .chain(crbs.iter().map(|b| b.labels()))
        .chain(rbs.iter().map(|b| b.labels()))
    {
        assert_eq!(
            child_labels.get(MANAGED_BY_LABEL).map(String::as_str),
            Some(MANAGED_BY)
        );
        assert_eq!(child_labels.get(NODE_LABEL), labels.get(NODE_LABEL));
        assert_eq!(child_labels.get(USER_LABEL), labels.get(USER_LABEL));
        assert_eq!(
            child_labels.get(SESSION_LABEL).map(String::as_str),
            Some(name)
        );
    }
    let owners = [sa.owner_references()]
        .into_iter()
        .chain(crbs.iter().map(|b| b.owner_references()))
        .chain(rbs.iter().map(|b| b.owner_references()));
    for refs in owners {
        assert_eq!(refs.len(), 1, "one owner");
        assert_eq!(refs[0].kind, "Session");
        assert_eq!(refs[0].api_version, "tka.dev/v1alpha1");
        assert_eq!(refs[0].name, name);
        assert_eq!(refs[0].uid, uid);
        assert_eq!(refs[0].controller, Some(true));
    }

    let subject_is_the_sa = |subjects: &Option<Vec<Subject>>| {
        let subjects = subjects.as_deref().unwrap_or_default();
        subjects.len() == 1
            && subjects[0].kind == "ServiceAccount"
            && subjects[0].name == name
            && subjects[0].namespace.as_deref() == Some(namespace)
    };
    // Named after the session, binding a ClusterRole to the session's ServiceAccount alone.
    let assert_binding = |binding: String, role_ref: &RoleRef, subjects: &Option<Vec<Subject>>| {
        assert!(binding.starts_with(&format!("{name}.")), "{binding}");
        assert_eq!(role_ref.kind, "ClusterRole");
        assert!(subject_is_the_sa(subjects), "{subjects:?}");
    };
    let mut have_cluster: Vec<String> = Vec::new();
    for b in &crbs {
        assert_binding(b.name_any(), &b.role_ref, &b.subjects);
        assert_eq!(b.labels().get(REVISION_LABEL), Some(&session.spec.revision));
        have_cluster.push(b.role_ref.name.clone());
    }
    have_cluster.sort();
    let mut want_cluster: Vec<String> = cluster_roles.iter().map(|r| (*r).to_owned()).collect();
    want_cluster.sort();
    assert_eq!(have_cluster, want_cluster);
    let mut have_ns: Vec<(String, String)> = Vec::new();
    for b in &rbs {
        assert_binding(b.name_any(), &b.role_ref, &b.subjects);
        have_ns.push((b.namespace().unwrap_or_default(), b.role_ref.name.clone()));
    }
    have_ns.sort();
    let mut want_ns: Vec<(String, String)> = namespaced
        .iter()
        .map(|(ns, r)| ((*ns).to_owned(), (*r).to_owned()))
        .collect();
    want_ns.sort();
    assert_eq!(have_ns, want_ns);
    assert_eq!(
        status.bindings.len(),
        crbs.len() + rbs.len(),
        "the status records every binding"
    );
}

/// The (name, uid) of every binding of a session.
pub(super) fn binding_ids(objects: &LabelledObjects, session: &str) -> BTreeSet<(String, String)> {
    let (_, crbs, rbs) = objects.children_of(session);
    crbs.iter()
        .map(|b| (b.name_any(), b.uid().unwrap_or_default()))
        .chain(
            rbs.iter()
                .map(|b| (b.name_any(), b.uid().unwrap_or_default())),
        )
        .collect()
}

pub(super) fn sa_uid(objects: &LabelledObjects, session: &str) -> Option<String> {
    objects
        .children_of(session)
        .0
        .first()
        .and_then(|sa| sa.uid())
}

pub(super) fn forged_session(
    name: &str,
    who: Person,
    cluster_roles: &[&str],
    expires_in: SignedDuration,
    now: jiff::Timestamp,
) -> Session {
    let identity = who.identity();
    let mut session = Session::new(
        name,
        SessionSpec {
            // Forged without tags, whoever it names.
            identity: SessionIdentity {
                tags: vec![],
                ..SessionIdentity::from(&identity)
            },
            role: "sre".into(),
            cluster_roles: cluster_roles.iter().map(|r| (*r).to_owned()).collect(),
            namespaced: vec![],
            revision: "forged".into(),
            revised_at: Time(now),
            expires_at: Time(now + expires_in),
        },
    );
    session.metadata.labels = Some(BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (NODE_LABEL.to_owned(), node_label(&identity.node.stable_id)),
        (USER_LABEL.to_owned(), user_label(identity.user.id)),
    ]));
    session
}

/// A suffix source that hands out `names` first, then random suffixes.
pub(super) fn scripted_suffixes(names: &[&str]) -> tka_core::kubernetes::SuffixSource {
    let names: Vec<NameSuffix> = names.iter().map(|n| NameSuffix::new(*n).unwrap()).collect();
    let next = AtomicUsize::new(0);
    Arc::new(move || {
        let i = next.fetch_add(1, Ordering::SeqCst);
        names
            .get(i)
            .cloned()
            .unwrap_or_else(|| NameSuffix::from_random(rand::random()))
    })
}

/// The writes of a scenario, recorded on a fresh backend without faults.
pub(super) async fn recorded_writes<B: SuiteBackend>(h: &Harness<B>) -> Vec<Call> {
    h.backend
        .faults()
        .expect("this case needs fault injection")
        .writes()
}

/// For step `i` of `steps`, how many earlier steps (including it) share its verb, resource and
/// subresource: the occurrence a fault rule must hit.
pub(super) fn occurrence(steps: &[Call], i: usize) -> u32 {
    let kind = steps[i].kind();
    let n = steps[..=i].iter().filter(|s| kind.matches_call(s)).count();
    u32::try_from(n).unwrap()
}
