//! A custom [`CredentialIssuer`] that only records what would have been issued: a dry-run audit
//! of a policy. Every login's [`Decision`] is judged by tka-core exactly as a server judges it
//! (with [`resolve`]), handed to the issuer through `&dyn CredentialIssuer` as a server does, and
//! written down; no ServiceAccount, binding or token is ever made, so it can run against a
//! production policy before a change goes live.
//!
//! Run with `cargo run -p tka-examples --example dry_run_audit`. It prints one JSON line per
//! login and exits non-zero if the audit does not come out as expected.

#![allow(clippy::print_stdout)] // printing the audit is what this example is for

use std::sync::Mutex;

use anyhow::{Context as _, ensure};
use async_trait::async_trait;
use jiff::Timestamp;
use serde_json::{Value, json};
use tka_core::issuer::{CredentialIssuer, IssueError, IssuedCredential, SessionInfo};
use tka_core::policy::NamespacedGrant;
use tka_core::{
    ClusterName, Decision, GrantMappingSpec, Identity, LoginName, MappingView, NodeId, NodeInfo,
    ParsedGrants, PolicyContext, PolicySettings, ResolveRequest, RoleName, SessionName, Tag, Ttl,
    UserId, UserInfo, resolve,
};

/// Records decisions; issues nothing.
#[derive(Debug, Default)]
struct DryRunIssuer {
    records: Mutex<Vec<Value>>,
}

impl DryRunIssuer {
    fn record(&self, entry: Value) {
        // A poisoned lock still holds the records written so far.
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(entry);
    }

    fn records(&self) -> Vec<Value> {
        self.records
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl CredentialIssuer for DryRunIssuer {
    async fn issue(
        &self,
        identity: &Identity,
        decision: &Decision,
    ) -> Result<IssuedCredential, IssueError> {
        self.record(json!({
            "caller": identity.acting_as(),
            "node": identity.node.stable_id.as_str(),
            "result": "would issue",
            "decision": decision,
        }));
        // Fail the issue on purpose: a server wired to this issuer answers every login with an
        // error instead of a credential, so nothing can be used by mistake.
        Err(IssueError::InvalidDecision(
            "dry run: the decision was recorded and nothing was issued".to_owned(),
        ))
    }

    async fn refresh(&self, _identity: &Identity) -> Result<IssuedCredential, IssueError> {
        Err(IssueError::NoSession)
    }

    async fn revoke(&self, _node: &NodeId) -> Result<Vec<SessionName>, IssueError> {
        Ok(Vec::new())
    }

    async fn revoke_user(&self, _user: UserId) -> Result<Vec<SessionName>, IssueError> {
        Ok(Vec::new())
    }

    async fn describe(&self, _node: &NodeId) -> Result<Option<SessionInfo>, IssueError> {
        Ok(None)
    }
}

fn caller(node: &str, login: &str, tags: &[&str], capabilities: Value) -> anyhow::Result<Identity> {
    Ok(Identity {
        user: UserInfo {
            id: UserId(1),
            login_name: LoginName::new(login)?,
            display_name: login.to_owned(),
        },
        node: NodeInfo {
            stable_id: NodeId::new(node)?,
            name: format!("{node}.example.ts.net"),
            addresses: vec![],
            tags: tags
                .iter()
                .map(|t| Tag::new(*t))
                .collect::<Result<_, _>>()?,
        },
        groups: vec![],
        capabilities: serde_json::from_value(capabilities)?,
        compat_capabilities: vec![],
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mappings = vec![
        MappingView::new(
            RoleName::new("read-only")?,
            GrantMappingSpec {
                cluster_roles: vec!["view".into()],
                ..Default::default()
            },
        ),
        MappingView::new(
            RoleName::new("deploy")?,
            GrantMappingSpec {
                namespaced: vec![NamespacedGrant {
                    cluster_role: "edit".into(),
                    namespaces: vec!["apps".into()],
                }],
                default_ttl: Some("15m".into()),
                ..Default::default()
            },
        ),
    ];
    let settings = PolicySettings::new("tka-system", Ttl::parse("1h")?, Ttl::parse("8h")?);
    let cluster = ClusterName::new("prod")?;
    let callers = [
        caller(
            "nALICE",
            "alice@example.com",
            &[],
            json!([{"role": "read-only"}]),
        )?,
        caller(
            "nCI",
            "tagged-devices",
            &["tag:ci"],
            json!([{"role": "deploy", "maxTTL": "30m"}]),
        )?,
        // A typo in the policy file: `cluster` instead of `clusters`. Skipped, so bob gets nothing.
        caller(
            "nBOB",
            "bob@example.com",
            &[],
            json!([{"role": "deploy", "cluster": ["dev"]}]),
        )?,
    ];

    let dry_run = DryRunIssuer::default();
    let issuer: &dyn CredentialIssuer = &dry_run;
    let now: Timestamp = "2026-01-01T09:00:00Z".parse()?;
    for identity in &callers {
        let grants = ParsedGrants::from_identity(identity);
        let request = ResolveRequest {
            context: PolicyContext {
                identity,
                grants: &grants,
                mappings: &mappings,
                cluster: &cluster,
                settings: &settings,
            },
            role: None,
            ttl: None,
            now,
        };
        match resolve(&request) {
            Ok(decision) => {
                let issued = issuer.issue(identity, &decision).await;
                ensure!(issued.is_err(), "a dry run must never issue a credential");
            }
            Err(denial) => dry_run.record(json!({
                "caller": identity.acting_as(),
                "node": identity.node.stable_id.as_str(),
                "result": "refused",
                "kind": denial.kind,
                "message": denial.to_string(),
            })),
        }
    }

    let records = dry_run.records();
    for record in &records {
        println!("{}", serde_json::to_string(record)?);
    }
    let results: Vec<(&str, &str)> = records
        .iter()
        .map(|r| {
            (
                r["caller"].as_str().unwrap_or_default(),
                r["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        results
            == [
                ("alice@example.com", "would issue"),
                ("tag:ci", "would issue"),
                ("bob@example.com", "refused"),
            ],
        "unexpected audit: {results:?}"
    );
    let ci = &records[1]["decision"];
    ensure!(ci["role"] == "deploy" && ci["ttl"] == "15m", "tag:ci: {ci}");
    let bob = records[2]["message"]
        .as_str()
        .context("bob's refusal has a message")?;
    ensure!(bob.contains("did you mean \"clusters\""), "bob: {bob}");
    for identity in &callers {
        ensure!(
            issuer.describe(&identity.node.stable_id).await?.is_none(),
            "the dry run left a session behind"
        );
    }
    println!("dry run: {} logins judged, nothing issued", records.len());
    Ok(())
}
