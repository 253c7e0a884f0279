//! Whether a ClusterRole is read-only, judged from its effective rules: its own `rules` plus,
//! when it has an `aggregationRule`, the rules of every ClusterRole its selectors match
//! (recursively, cycle-safe). The aggregation is computed here from the roles as listed, so the
//! answer does not depend on kube-controller-manager having filled `rules` in yet, and a role
//! that gains a write through aggregation later is caught when the roles are listed again.
//!
//! Read-only means: every rule grants only `get`, `list` or `watch`; no rule has a wildcard in
//! its verbs, API groups or resources (nor a non-resource URL matching every path); no rule reads
//! `secrets` (in the core group or through a
//! wildcard group); and no rule reaches the subresources whose `get` is not a read (`pods/exec`,
//! `pods/attach`, `pods/portforward` and the proxies). A cluster-wide binding of anything more
//! reaches every namespace, the protected ones included (DESIGN §4.3). Pure: no I/O; the caller
//! lists the ClusterRoles.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// The verbs a read-only role may grant.
pub const READ_VERBS: &[&str] = &["get", "list", "watch"];

/// Core-group subresources whose `get` executes, attaches or forwards into a workload: not reads.
const NOT_READS: &[&str] = &[
    "pods/exec",
    "pods/attach",
    "pods/portforward",
    "pods/proxy",
    "services/proxy",
    "nodes/proxy",
];

/// One rule of a ClusterRole (`rbac.authorization.k8s.io/v1` PolicyRule; `resourceNames` do not
/// matter here: a read of one secret is still a read of a secret).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyRule {
    /// `apiGroups`; `""` is the core group, `"*"` every group.
    pub api_groups: Vec<String>,
    /// `resources`, possibly with subresources (`pods/exec`) or wildcards.
    pub resources: Vec<String>,
    /// `verbs`.
    pub verbs: Vec<String>,
    /// `nonResourceURLs`.
    pub non_resource_urls: Vec<String>,
}

/// One `matchExpressions` entry of a label selector.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SelectorRequirement {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// The values for `In` and `NotIn`.
    pub values: Vec<String>,
}

/// A label selector of an `aggregationRule`. An empty selector matches every role, as in
/// Kubernetes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// `matchLabels`.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub match_expressions: Vec<SelectorRequirement>,
}

impl LabelSelector {
    /// Whether a role with `labels` is selected. An unknown operator selects nothing (the API
    /// server refuses such selectors anyway).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator.as_str() {
                    "In" => value.is_some_and(|v| req.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !req.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

/// A ClusterRole as far as the read-only judgement needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRoleRules {
    /// `metadata.labels` (what other roles' aggregation selectors match).
    pub labels: BTreeMap<String, String>,
    /// `rules` as stored.
    pub rules: Vec<PolicyRule>,
    /// `aggregationRule.clusterRoleSelectors`, when the role has an aggregation rule.
    pub aggregation: Option<Vec<LabelSelector>>,
}

/// Every ClusterRole of the cluster, by name: the facts the read-only judgement runs on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterRoles {
    roles: BTreeMap<String, ClusterRoleRules>,
}

impl FromIterator<(String, ClusterRoleRules)> for ClusterRoles {
    fn from_iter<T: IntoIterator<Item = (String, ClusterRoleRules)>>(iter: T) -> Self {
        Self {
            roles: iter.into_iter().collect(),
        }
    }
}

impl ClusterRoles {
    /// The roles, by name.
    pub fn into_entries(self) -> Vec<(String, ClusterRoleRules)> {
        self.roles.into_iter().collect()
    }

    /// The number of roles.
    pub fn len(&self) -> usize {
        self.roles.len()
    }

    /// Whether there are no roles.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    /// Whether a ClusterRole of this name exists.
    pub fn contains(&self, name: &str) -> bool {
        self.roles.contains_key(name)
    }

    /// The effective rules of `name`: its own and those of every role its aggregation selects,
    /// transitively; each role counted once, so a cycle of selectors ends. `None` when there is
    /// no such role.
    pub fn effective_rules(&self, name: &str) -> Option<Vec<&PolicyRule>> {
        self.roles.get(name)?;
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([name]);
        let mut rules = Vec::new();
        while let Some(current) = queue.pop_front() {
            if !seen.insert(current) {
                continue;
            }
            let Some(role) = self.roles.get(current) else {
                continue;
            };
            rules.extend(role.rules.iter());
            for selector in role.aggregation.iter().flatten() {
                queue.extend(
                    self.roles
                        .iter()
                        .filter(|(other, r)| {
                            !seen.contains(other.as_str()) && selector.matches(&r.labels)
                        })
                        .map(|(other, _)| other.as_str()),
                );
            }
        }
        Some(rules)
    }

    /// What `name` grants beyond reading, in words, one entry per offending rule: empty when the
    /// role is read-only, `None` when there is no such role.
    ///
    /// ```
    /// use tka_core::policy::{ClusterRoleRules, ClusterRoles, PolicyRule};
    ///
    /// let rule = |resources: &[&str], verbs: &[&str]| PolicyRule {
    ///     api_groups: vec![String::new()],
    ///     resources: resources.iter().map(|s| s.to_string()).collect(),
    ///     verbs: verbs.iter().map(|s| s.to_string()).collect(),
    ///     ..Default::default()
    /// };
    /// let roles: ClusterRoles = [
    ///     ("reader".to_owned(), ClusterRoleRules { rules: vec![rule(&["pods"], &["get", "list"])], ..Default::default() }),
    ///     ("runner".to_owned(), ClusterRoleRules { rules: vec![rule(&["pods"], &["create"])], ..Default::default() }),
    /// ].into_iter().collect();
    /// assert_eq!(roles.beyond_read("reader"), Some(vec![]));
    /// assert_eq!(roles.beyond_read("runner"), Some(vec!["create pods".to_owned()]));
    /// assert_eq!(roles.beyond_read("ghost"), None);
    /// ```
    pub fn beyond_read(&self, name: &str) -> Option<Vec<String>> {
        let mut found: Vec<String> = Vec::new();
        for rule in self.effective_rules(name)? {
            for words in rule_beyond_read(rule) {
                if !found.contains(&words) {
                    found.push(words);
                }
            }
        }
        Some(found)
    }
}

/// Names in words: `*` becomes `every`.
fn list(items: &[String], every: &str) -> String {
    if items.is_empty() {
        return "nothing".to_owned();
    }
    items
        .iter()
        .map(|i| if i == "*" { every } else { i.as_str() })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one rule grants beyond reading, in words.
fn rule_beyond_read(rule: &PolicyRule) -> Vec<String> {
    let mut out = Vec::new();
    let targets = match (rule.resources.is_empty(), rule.non_resource_urls.is_empty()) {
        (false, true) | (true, true) => list(&rule.resources, "every resource"),
        (true, false) => list(&rule.non_resource_urls, "every path"),
        (false, false) => format!(
            "{}, {}",
            list(&rule.resources, "every resource"),
            list(&rule.non_resource_urls, "every path")
        ),
    };
    let targets = if rule.api_groups.iter().any(|g| g == "*") && !rule.resources.is_empty() {
        format!("{targets} in every API group")
    } else {
        targets
    };
    let writes: Vec<String> = rule
        .verbs
        .iter()
        .filter(|v| !READ_VERBS.contains(&v.as_str()))
        .cloned()
        .collect();
    if !writes.is_empty() {
        out.push(format!("{} {targets}", list(&writes, "every verb on")));
    }
    // What the rule lets a caller read: its read verbs, or every verb through `*`.
    let reads: Vec<&str> = rule
        .verbs
        .iter()
        .map(String::as_str)
        .filter(|v| *v == "*" || READ_VERBS.contains(v))
        .collect();
    if reads.is_empty() {
        return out;
    }
    let reads = reads
        .iter()
        .map(|v| if *v == "*" { "every verb on" } else { v })
        .collect::<Vec<_>>()
        .join(", ");
    let wildcard_group = rule.api_groups.iter().any(|g| g == "*");
    let wildcard_resource = rule.resources.iter().any(|r| r.contains('*'));
    // `*` and `/*` match every non-resource path (`/logs`, `/debug/pprof`, …).
    let wildcard_url = rule
        .non_resource_urls
        .iter()
        .any(|u| u.ends_with('*') && u.trim_end_matches('*').trim_end_matches('/').is_empty());
    if (wildcard_group && !rule.resources.is_empty()) || wildcard_resource || wildcard_url {
        // A write on the same rule already says enough.
        if out.is_empty() {
            out.push(format!("{reads} {targets} (a wildcard)"));
        }
        return out;
    }
    if !(wildcard_group || rule.api_groups.iter().any(String::is_empty)) {
        return out;
    }
    let secrets: Vec<&str> = rule
        .resources
        .iter()
        .filter(|r| *r == "secrets" || r.starts_with("secrets/"))
        .map(String::as_str)
        .collect();
    if !secrets.is_empty() {
        out.push(format!("{reads} {} (reads secrets)", secrets.join(", ")));
    }
    let not_reads: Vec<&str> = rule
        .resources
        .iter()
        .filter(|r| NOT_READS.contains(&r.as_str()))
        .map(String::as_str)
        .collect();
    if !not_reads.is_empty() {
        out.push(format!(
            "{reads} {} (reaches into workloads)",
            not_reads.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cases::{bootstrap_cluster_roles, rule, view_gained_a_write};

    fn beyond(roles: &ClusterRoles, name: &str) -> Vec<String> {
        roles.beyond_read(name).expect("the role exists")
    }

    #[test]
    fn view_is_read_only_through_its_aggregation() {
        let roles = bootstrap_cluster_roles();
        // `view` stores no rules of its own: what it grants comes from aggregation.
        assert!(roles.effective_rules("view").unwrap().len() >= 3);
        assert_eq!(beyond(&roles, "view"), Vec::<String>::new());
    }

    #[test]
    fn edit_admin_and_cluster_admin_grant_more_than_reading() {
        let roles = bootstrap_cluster_roles();
        let edit = beyond(&roles, "edit");
        assert!(
            edit.iter()
                .any(|w| w.contains("create") && w.contains("pods")),
            "{edit:?}"
        );
        assert!(
            edit.iter().any(|w| w.contains("(reads secrets)")),
            "{edit:?}"
        );
        assert!(edit.iter().any(|w| w.contains("pods/exec")), "{edit:?}");
        // admin aggregates edit (which aggregates view) and its own RBAC writes.
        let admin = beyond(&roles, "admin");
        assert!(
            admin.iter().any(|w| w.contains("rolebindings")),
            "{admin:?}"
        );
        assert!(
            admin.iter().any(|w| w.contains("(reads secrets)")),
            "{admin:?}"
        );
        let cluster_admin = beyond(&roles, "cluster-admin");
        assert_eq!(
            cluster_admin,
            [
                "every verb on every resource in every API group",
                "every verb on every path"
            ]
        );
    }

    #[test]
    fn custom_roles_that_create_pods_or_read_secrets_are_refused() {
        let roles = bootstrap_cluster_roles();
        assert_eq!(beyond(&roles, "pod-creator"), ["create pods"]);
        assert_eq!(
            beyond(&roles, "secret-reader"),
            ["get, list secrets (reads secrets)"]
        );
        assert_eq!(roles.beyond_read("no-such-role"), None);
    }

    #[test]
    fn a_role_aggregated_into_view_with_a_write_makes_view_write() {
        assert_eq!(
            beyond(&bootstrap_cluster_roles(), "view"),
            Vec::<String>::new()
        );
        let roles = view_gained_a_write();
        assert_eq!(beyond(&roles, "view"), ["create jobs"]);
        // And through view, edit and admin see it too.
        assert!(beyond(&roles, "edit").contains(&"create jobs".to_owned()));
    }

    #[test]
    fn wildcards_secrets_and_exec_are_refused_even_with_read_verbs() {
        let one = |r: PolicyRule| -> Vec<String> {
            let roles: ClusterRoles = [(
                "r".to_owned(),
                ClusterRoleRules {
                    rules: vec![r],
                    ..ClusterRoleRules::default()
                },
            )]
            .into_iter()
            .collect();
            beyond(&roles, "r")
        };
        assert!(one(rule("", &["*"], &["get"]))[0].contains("wildcard"));
        assert!(one(rule("*", &["pods"], &["list"]))[0].contains("wildcard"));
        assert!(one(rule("apps", &["deployments/*"], &["get"]))[0].contains("wildcard"));
        assert_eq!(one(rule("", &["pods"], &["*"])).len(), 1);
        assert!(one(rule("*", &["secrets"], &["watch"]))[0].contains("wildcard"));
        assert!(one(rule("", &["secrets"], &["watch"]))[0].contains("reads secrets"));
        assert!(one(rule("", &["pods/exec"], &["get"]))[0].contains("reaches into workloads"));
        // Secrets of another API group are not the core Secret.
        assert_eq!(
            one(rule("example.com", &["secrets"], &["get"])),
            Vec::<String>::new()
        );
        let urls = |urls: &[&str], verbs: &[&str]| PolicyRule {
            non_resource_urls: urls.iter().map(|s| (*s).to_owned()).collect(),
            verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
            ..PolicyRule::default()
        };
        assert_eq!(
            one(urls(&["/healthz", "/version"], &["get"])),
            Vec::<String>::new()
        );
        assert_eq!(one(urls(&["/metrics"], &["post"])), ["post /metrics"]);
        assert!(one(urls(&["*"], &["get"]))[0].contains("wildcard"));
        assert!(one(urls(&["/*"], &["get"]))[0].contains("wildcard"));
        assert_eq!(one(urls(&["/healthz/*"], &["get"])), Vec::<String>::new());
        // A rule without verbs grants nothing.
        assert_eq!(one(rule("*", &["*"], &[])), Vec::<String>::new());
    }

    #[test]
    fn aggregation_cycles_end_and_selectors_follow_kubernetes() {
        let selector = |key: &str| LabelSelector {
            match_labels: [(key.to_owned(), "true".to_owned())].into(),
            match_expressions: vec![],
        };
        let role = |label: &str, selects: &str, verbs: &[&str]| ClusterRoleRules {
            labels: [(label.to_owned(), "true".to_owned())].into(),
            rules: vec![rule("", &["pods"], verbs)],
            aggregation: Some(vec![selector(selects)]),
        };
        let roles: ClusterRoles = [
            ("a".to_owned(), role("a", "b", &["get"])),
            ("b".to_owned(), role("b", "a", &["delete"])),
        ]
        .into_iter()
        .collect();
        assert_eq!(roles.effective_rules("a").unwrap().len(), 2);
        assert_eq!(beyond(&roles, "a"), ["delete pods"]);

        let labels: BTreeMap<String, String> = [("tier".to_owned(), "x".to_owned())].into();
        let expr = |op: &str, values: &[&str]| LabelSelector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![SelectorRequirement {
                key: "tier".into(),
                operator: op.into(),
                values: values.iter().map(|s| (*s).to_owned()).collect(),
            }],
        };
        assert!(LabelSelector::default().matches(&labels));
        assert!(expr("In", &["x", "y"]).matches(&labels));
        assert!(!expr("NotIn", &["x"]).matches(&labels));
        assert!(expr("NotIn", &["x"]).matches(&BTreeMap::new()));
        assert!(expr("Exists", &[]).matches(&labels));
        assert!(!expr("DoesNotExist", &[]).matches(&labels));
        assert!(!expr("Bogus", &[]).matches(&labels));
    }
}
