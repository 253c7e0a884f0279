//! `tka policy explain`: reads a tailnet policy file and GrantMappings (YAML files, or the
//! cluster of the current kubeconfig context), asks [`tka_core::policy::explain`] who gets what,
//! and prints it. The judging is tka-core's, the same functions a server runs on a login; this
//! module only gathers inputs and prints. It writes nothing anywhere.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, ListParams};
use serde::Deserialize as _;
use serde_json::Value;
use tka_core::Clock;
use tka_core::kubernetes::{GrantMapping, cluster_roles};
use tka_core::policy::{
    Answer, Bindable, ClusterRoles, ExplainInput, Explanation, GrantMappingSpec, MappingReport,
    NamedMapping, Outcome, explain, kubernetes_default_roles,
};
use tka_core::tailnet_policy::TailnetPolicy;

use crate::error::CliError;
use crate::output;
use crate::settings::{ExplainSettings, Settings};

/// What the cluster side of the question is made of.
struct ClusterInputs {
    mappings: Vec<NamedMapping>,
    roles: ClusterRoles,
    /// `NotBindable` conditions the server has set, by mapping name (live clusters only).
    not_bindable: BTreeMap<String, String>,
}

pub(crate) fn run(
    settings: &Settings,
    explain_settings: &ExplainSettings,
    clock: &dyn Clock,
) -> Result<(), CliError> {
    let text = read(&explain_settings.policy)?;
    let policy = TailnetPolicy::parse(&text).map_err(|e| {
        CliError::PolicyInput(format!("{}: {e}", explain_settings.policy.display()))
    })?;
    let inputs = if explain_settings.live {
        live()?
    } else {
        from_files(&explain_settings.files)?
    };
    let bindable = |m: &NamedMapping| match inputs.not_bindable.get(&m.name) {
        Some(why) => Bindable::No(why.clone()),
        None => Bindable::Yes,
    };
    let explanation = explain(&ExplainInput {
        policy: &policy,
        server_tags: &explain_settings.server_tags,
        mappings: &inputs.mappings,
        cluster_roles: &inputs.roles,
        bindable: &bindable,
        settings: &explain_settings.settings,
        clusters: &explain_settings.clusters,
        who: &explain_settings.who,
        role: explain_settings.role.as_ref(),
        now: clock.now(),
    });
    output::result(settings.output, &explanation, || human(&explanation))
}

fn read(path: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::PolicyInput(format!("cannot read {}: {e}", path.display())))
}

/// GrantMappings and ClusterRoles from YAML files; the Kubernetes default roles stand in for
/// any role the files do not define.
fn from_files(files: &[std::path::PathBuf]) -> Result<ClusterInputs, CliError> {
    let mut mappings = Vec::new();
    let mut roles: Vec<ClusterRole> = Vec::new();
    for path in files {
        let text = read(path)?;
        let bad = |what: String| CliError::PolicyInput(format!("{}: {what}", path.display()));
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).map_err(|e| bad(e.to_string()))?;
            if value.is_null() {
                continue;
            }
            let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
            match kind {
                "GrantMapping" => {
                    let name = value
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .ok_or_else(|| bad("a GrantMapping has no metadata.name".to_owned()))?;
                    let spec: GrantMappingSpec =
                        serde_json::from_value(value.get("spec").cloned().unwrap_or(Value::Null))
                            .map_err(|e| bad(format!("GrantMapping {name}: {e}")))?;
                    mappings.push(NamedMapping {
                        name: name.to_owned(),
                        spec,
                    });
                }
                "ClusterRole" => roles.push(
                    serde_json::from_value(value).map_err(|e| bad(format!("ClusterRole: {e}")))?,
                ),
                // Anything else (Namespaces, kustomize leftovers) says nothing about access.
                _ => {}
            }
        }
    }
    let mut all: BTreeMap<String, _> = kubernetes_default_roles()
        .into_entries()
        .into_iter()
        .collect();
    all.extend(cluster_roles(&roles).into_entries());
    Ok(ClusterInputs {
        mappings,
        roles: all.into_iter().collect(),
        not_bindable: BTreeMap::new(),
    })
}

/// The GrantMappings, their `NotBindable` conditions, and the ClusterRoles of the cluster of the
/// current kubeconfig context.
fn live() -> Result<ClusterInputs, CliError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::PolicyInput(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            CliError::PolicyInput(format!("cannot {what} through the current kubeconfig: {e}"))
        };
        let client = kube::Client::try_default()
            .await
            .map_err(|e| failed("reach the cluster", &e))?;
        let list = ListParams::default();
        let mappings = Api::<GrantMapping>::all(client.clone())
            .list(&list)
            .await
            .map_err(|e| failed("list GrantMappings", &e))?;
        let roles = Api::<ClusterRole>::all(client)
            .list(&list)
            .await
            .map_err(|e| failed("list ClusterRoles", &e))?;
        let mut not_bindable = BTreeMap::new();
        let mut named = Vec::new();
        for mapping in mappings.items {
            let name = mapping.metadata.name.clone().unwrap_or_default();
            let condition =
                mapping.status.iter().flat_map(|s| &s.conditions).find(|c| {
                    c.type_ == "Ready" && c.status == "False" && c.reason == "NotBindable"
                });
            if let Some(condition) = condition {
                not_bindable.insert(name.clone(), condition.message.clone());
            }
            named.push(NamedMapping {
                name,
                spec: mapping.spec,
            });
        }
        Ok(ClusterInputs {
            mappings: named,
            roles: cluster_roles(&roles.items),
            not_bindable,
        })
    })
}

/// The table people read: one line per principal and cluster, then the mappings, then what
/// could not be evaluated.
fn human(explanation: &Explanation) -> String {
    let mut rows = vec![[
        "WHO".to_owned(),
        "CLUSTER".to_owned(),
        "ROLE".to_owned(),
        "TTL".to_owned(),
        "BINDINGS".to_owned(),
        "WHY".to_owned(),
    ]];
    rows.extend(explanation.answers.iter().map(answer_row));
    let mut out = table(&rows);

    let one_principal = explanation
        .answers
        .first()
        .is_some_and(|first| explanation.answers.iter().all(|a| a.who == first.who));
    if one_principal {
        // One person or device (--who): what it holds and why, instead of every mapping.
        for answer in &explanation.answers {
            out.push('\n');
            out.push_str(&details(answer));
        }
    } else if !explanation.mappings.is_empty() {
        out.push('\n');
        let mut rows = vec![[
            "GRANTMAPPING".to_owned(),
            "READY".to_owned(),
            "SUBJECTS".to_owned(),
            "TTL".to_owned(),
            "BINDINGS".to_owned(),
            "REASON".to_owned(),
        ]];
        rows.extend(explanation.mappings.iter().map(mapping_row));
        out.push_str(&table(&rows));
    }
    if !explanation.unevaluated.is_empty() {
        out.push_str("\nnot evaluated (the policy file alone cannot tell):\n");
        for note in &explanation.unevaluated {
            let _ = writeln!(out, "  {note}");
        }
    }
    out
}

fn answer_row(answer: &Answer) -> [String; 6] {
    let who = answer.who.to_string();
    let cluster = answer.cluster.to_string();
    match &answer.outcome {
        Outcome::Granted {
            role,
            rule,
            ttl,
            max_ttl,
            cluster_roles,
            namespaced,
            because,
        } => {
            let grants: Vec<String> = because
                .iter()
                .map(|v| format!("grant #{} ({})", v.grant, v.src))
                .collect();
            [
                who,
                cluster,
                role.to_string(),
                format!("{ttl} (max {max_ttl})"),
                bindings(cluster_roles, namespaced),
                format!("{}; GrantMapping {role}; {rule}", dedup(grants).join(", ")),
            ]
        }
        Outcome::Refused { kind, message } => [
            who,
            cluster,
            "(refused)".to_owned(),
            "-".to_owned(),
            "-".to_owned(),
            format!("{kind}: {message}"),
        ],
    }
}

fn mapping_row(mapping: &MappingReport) -> [String; 6] {
    let subjects = if mapping.subjects.is_empty() {
        "-".to_owned()
    } else {
        mapping.subjects.join(", ")
    };
    let ttl = format!(
        "{} / {}",
        mapping.default_ttl.as_deref().unwrap_or("-"),
        mapping.max_ttl.as_deref().unwrap_or("-")
    );
    let reason = match (&mapping.reason, &mapping.message) {
        (None, _) => String::new(),
        (Some(reason), Some(message)) => format!("{reason}: {message}"),
        (Some(reason), None) => reason.clone(),
    };
    [
        mapping.name.clone(),
        if mapping.ready { "yes" } else { "no" }.to_owned(),
        subjects,
        ttl,
        bindings(&mapping.cluster_roles, &mapping.namespaced),
        reason,
    ]
}

/// The other roles one principal holds there, for a single answer.
fn details(answer: &Answer) -> String {
    let mut out = format!("{} on {}:\n", answer.who, answer.cluster);
    if !answer.groups.is_empty() {
        let _ = writeln!(out, "  groups: {}", answer.groups.join(", "));
    }
    for value in &answer.values {
        let _ = writeln!(
            out,
            "  receives {} from grant #{} ({})",
            value.value, value.grant, value.src
        );
    }
    for role in &answer.roles.roles {
        let _ = writeln!(
            out,
            "  may get {} (priority {}, default {}, max {}){}",
            role.role,
            role.priority,
            role.default_ttl,
            role.max_ttl,
            if role.default { ", the default" } else { "" }
        );
    }
    for role in &answer.roles.unavailable {
        let _ = writeln!(
            out,
            "  holds {} but cannot use it: {}",
            role.role, role.problem
        );
    }
    for skipped in &answer.roles.skipped {
        let _ = writeln!(out, "  ignored {skipped}");
    }
    if answer.values.is_empty() {
        out.push_str("  receives no tka capability from the policy file\n");
    }
    out
}

fn bindings(
    cluster_roles: &[String],
    namespaced: &[tka_core::policy::NamespacedBinding],
) -> String {
    let mut parts: Vec<String> = cluster_roles
        .iter()
        .map(|r| format!("{r} (cluster-wide)"))
        .collect();
    let mut by_role: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for binding in namespaced {
        by_role
            .entry(&binding.cluster_role)
            .or_default()
            .push(&binding.namespace);
    }
    parts.extend(
        by_role
            .into_iter()
            .map(|(role, namespaces)| format!("{role} in {}", namespaces.join(","))),
    );
    if parts.is_empty() {
        "-".to_owned()
    } else {
        parts.join("; ")
    }
}

fn dedup(mut items: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    items.retain(|i| seen.insert(i.clone()));
    items
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
fn table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
