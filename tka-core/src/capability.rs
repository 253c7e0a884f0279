//! Capability values: the tailnet half of the policy. Each value under the capability name is one
//! grant of a role (see `docs/policy.md`); this module turns the raw JSON that whois delivered into
//! [`Grant`]s, failing closed: a value that is not exactly the schema is skipped and reported as a
//! [`SkippedValue`], never guessed at. It does not decide anything (that is [`crate::policy`]) and
//! does no I/O.
//!
//! Two schemas are read, each only from its own capability name:
//! - the project schema ([`CapabilitySchema::Primary`]): `{"role", "clusters", "maxTTL", "priority"}`
//!   from [`Identity::capabilities`];
//! - the compatibility schema of SpechtLabs/tka ([`CapabilitySchema::Compat`]):
//!   `{"role", "period", "priority"}` from [`Identity::compat_capabilities`], where `period` is the
//!   `maxTTL` and the grant applies to every cluster.

use std::fmt;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::{ClusterName, Identity, RoleName, Ttl};

/// Which schema a capability value is read with; each schema is read only from its own
/// capability name.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CapabilitySchema {
    /// The project schema: `{"role", "clusters", "maxTTL", "priority"}`.
    Primary,
    /// The SpechtLabs/tka schema: `{"role", "period", "priority"}`.
    Compat,
}

impl CapabilitySchema {
    /// The keys a value of this schema may have; any other key makes the value skipped.
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            Self::Primary => &["role", "clusters", "maxTTL", "priority"],
            Self::Compat => &["role", "period", "priority"],
        }
    }

    /// The key that bounds the session length in this schema.
    pub fn max_ttl_key(self) -> &'static str {
        match self {
            Self::Primary => "maxTTL",
            Self::Compat => "period",
        }
    }
}

impl fmt::Display for CapabilitySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Primary => "tka",
            Self::Compat => "compatibility (SpechtLabs/tka)",
        })
    }
}

/// The clusters a grant applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSelector {
    /// No `clusters` key: every cluster.
    All,
    /// Clusters whose name matches at least one of the globs.
    Matching(ClusterGlobs),
}

impl ClusterSelector {
    /// Whether the grant applies to `cluster`.
    pub fn matches(&self, cluster: &ClusterName) -> bool {
        match self {
            Self::All => true,
            Self::Matching(globs) => globs.matches(cluster),
        }
    }
}

impl fmt::Display for ClusterSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all clusters"),
            Self::Matching(globs) => f.write_str(&globs.patterns().join(", ")),
        }
    }
}

/// A non-empty list of cluster-name globs (`prod-*`, `staging-?`, `{dev,test}-eu`), matched
/// case-sensitively against the whole [`ClusterName`].
#[derive(Debug, Clone)]
pub struct ClusterGlobs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl ClusterGlobs {
    /// Compiles the globs; the error says which one is invalid and why.
    ///
    /// ```
    /// use tka_core::capability::ClusterGlobs;
    /// use tka_core::ClusterName;
    /// let globs = ClusterGlobs::new(["prod-*", "staging"]).unwrap();
    /// assert!(globs.matches(&ClusterName::new("prod-eu").unwrap()));
    /// assert!(!globs.matches(&ClusterName::new("dev").unwrap()));
    /// assert!(ClusterGlobs::new(["prod-[a"]).is_err());
    /// ```
    pub fn new<I, S>(patterns: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        if patterns.is_empty() {
            return Err(
                "\"clusters\" is an empty list, which matches no cluster; omit it to mean every cluster"
                    .to_owned(),
            );
        }
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            if pattern.is_empty() {
                return Err("\"clusters\" contains an empty glob".to_owned());
            }
            let glob = Glob::new(pattern)
                .map_err(|e| format!("\"clusters\" glob {pattern:?} is invalid: {}", e.kind()))?;
            builder.add(glob);
        }
        let set = builder
            .build()
            .map_err(|e| format!("\"clusters\" globs are invalid: {e}"))?;
        Ok(Self { patterns, set })
    }

    /// The globs as written.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether any glob matches the cluster name.
    pub fn matches(&self, cluster: &ClusterName) -> bool {
        self.set.is_match(cluster.as_str())
    }
}

impl PartialEq for ClusterGlobs {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for ClusterGlobs {}

/// One well-formed capability value: a grant of `role` on some clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role: the name of the GrantMapping that gives it meaning on a cluster.
    pub role: RoleName,
    /// The clusters the grant applies to.
    pub clusters: ClusterSelector,
    /// The upper bound for sessions from this grant (`maxTTL`, or `period` in the compat schema).
    pub max_ttl: Option<Ttl>,
    /// Preference among several usable roles: higher wins; a missing priority is 0.
    pub priority: i64,
    /// The schema (and so the capability name) the value came from.
    pub schema: CapabilitySchema,
    /// The value's position in its capability's list, for messages.
    pub index: usize,
}

impl Grant {
    /// Whether the grant applies to `cluster`.
    pub fn applies_to(&self, cluster: &ClusterName) -> bool {
        self.clusters.matches(cluster)
    }
}

/// A capability value that was not used, with the reason in words.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SkippedValue {
    /// The schema (capability name) the value was read with.
    pub schema: CapabilitySchema,
    /// The value's position in its capability's list (0-based).
    pub index: usize,
    /// The value exactly as delivered.
    pub value: Value,
    /// Why it was skipped, e.g. `unknown key "cluster" (did you mean "clusters"?)`.
    pub reason: String,
}

impl fmt::Display for SkippedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MAX: usize = 200;
        let mut raw = self.value.to_string();
        if raw.len() > MAX {
            let mut cut = MAX;
            while !raw.is_char_boundary(cut) {
                cut -= 1;
            }
            raw.truncate(cut);
            raw.push('…');
        }
        write!(
            f,
            "{} value #{} {raw}: {}",
            self.schema,
            self.index + 1,
            self.reason
        )
    }
}

/// The grants of one identity, from both schemas, with what was skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedGrants {
    /// The well-formed values, primary first, each in delivery order.
    pub grants: Vec<Grant>,
    /// The values that were skipped, with reasons.
    pub skipped: Vec<SkippedValue>,
}

impl ParsedGrants {
    /// Parses [`Identity::capabilities`] with the project schema and
    /// [`Identity::compat_capabilities`] with the compatibility schema. Never reads a value with
    /// the other schema.
    pub fn from_identity(identity: &Identity) -> Self {
        let (mut grants, mut skipped) =
            parse_values(CapabilitySchema::Primary, &identity.capabilities);
        let (compat, compat_skipped) =
            parse_values(CapabilitySchema::Compat, &identity.compat_capabilities);
        grants.extend(compat);
        skipped.extend(compat_skipped);
        Self { grants, skipped }
    }
}

/// Parses every value with one schema: well-formed values become [`Grant`]s, the others are
/// returned as [`SkippedValue`]s (fail closed: nothing is guessed).
///
/// ```
/// use serde_json::json;
/// use tka_core::capability::{parse_values, CapabilitySchema};
/// let (grants, skipped) = parse_values(
///     CapabilitySchema::Primary,
///     &[json!({"role": "sre", "clusters": ["prod-*"], "maxTTL": "4h"}), json!({"role": "sre", "cluster": "prod"})],
/// );
/// assert_eq!(grants.len(), 1);
/// assert!(skipped[0].reason.contains("did you mean \"clusters\""));
/// ```
pub fn parse_values(schema: CapabilitySchema, values: &[Value]) -> (Vec<Grant>, Vec<SkippedValue>) {
    let mut grants = Vec::with_capacity(values.len());
    let mut skipped = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match parse_value(schema, index, value) {
            Ok(grant) => grants.push(grant),
            Err(reason) => skipped.push(SkippedValue {
                schema,
                index,
                value: value.clone(),
                reason,
            }),
        }
    }
    (grants, skipped)
}

/// Parses one value; the error is the reason it must be skipped, naming every problem found.
pub fn parse_value(schema: CapabilitySchema, index: usize, value: &Value) -> Result<Grant, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "a grant must be a JSON object like {{\"role\": \"sre\"}}, not {}",
            json_kind(value)
        ));
    };
    let mut problems = Vec::new();

    let mut unknown: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|key| !schema.keys().contains(key))
        .collect();
    unknown.sort_unstable();
    for key in unknown {
        problems.push(unknown_key_message(schema, key));
    }

    let role = match object.get("role") {
        None => {
            problems.push("\"role\" is missing".to_owned());
            None
        }
        Some(Value::String(s)) => match RoleName::new(s.as_str()) {
            Ok(role) => Some(role),
            Err(e) => {
                problems.push(format!("\"role\": {e}"));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "\"role\" must be a string, not {}",
                json_kind(other)
            ));
            None
        }
    };

    let clusters = match schema {
        CapabilitySchema::Compat => Some(ClusterSelector::All),
        CapabilitySchema::Primary => match object.get("clusters") {
            None => Some(ClusterSelector::All),
            Some(Value::Array(items)) => {
                let strings: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
                match strings {
                    Some(patterns) => match ClusterGlobs::new(patterns) {
                        Ok(globs) => Some(ClusterSelector::Matching(globs)),
                        Err(e) => {
                            problems.push(e);
                            None
                        }
                    },
                    None => {
                        problems.push(
                            "\"clusters\" must be an array of strings (cluster-name globs)"
                                .to_owned(),
                        );
                        None
                    }
                }
            }
            Some(other) => {
                problems.push(format!(
                    "\"clusters\" must be an array of strings such as [\"prod-*\"], not {}",
                    json_kind(other)
                ));
                None
            }
        },
    };

    let ttl_key = schema.max_ttl_key();
    let max_ttl = match object.get(ttl_key) {
        None => Some(None),
        Some(Value::String(s)) => match Ttl::parse(s) {
            Ok(ttl) => Some(Some(ttl)),
            Err(e) => {
                problems.push(format!("\"{ttl_key}\": {e}"));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "\"{ttl_key}\" must be a duration string such as \"4h\" or \"90m\", not {}",
                json_kind(other)
            ));
            None
        }
    };

    let priority = match object.get("priority") {
        None => Some(0),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(p) => Some(p),
            None => {
                problems.push(format!(
                    "\"priority\" must be a whole number within ±9223372036854775807, not {n}"
                ));
                None
            }
        },
        Some(other) => {
            problems.push(format!(
                "\"priority\" must be a number such as 10, not {}",
                json_kind(other)
            ));
            None
        }
    };

    match (role, clusters, max_ttl, priority) {
        (Some(role), Some(clusters), Some(max_ttl), Some(priority)) if problems.is_empty() => {
            Ok(Grant {
                role,
                clusters,
                max_ttl,
                priority,
                schema,
                index,
            })
        }
        _ => Err(problems.join("; ")),
    }
}

fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(n) => format!("a number ({n})"),
        Value::String(s) => format!("a string ({s:?})"),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

fn unknown_key_message(schema: CapabilitySchema, key: &str) -> String {
    let known = schema.keys();
    let suggestion = known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(key))
        .map(|k| format!("keys are case-sensitive: did you mean \"{k}\"?"))
        .or_else(|| {
            known
                .iter()
                .map(|k| {
                    (
                        edit_distance(&key.to_ascii_lowercase(), &k.to_ascii_lowercase()),
                        k,
                    )
                })
                .filter(|(d, _)| *d <= 2)
                .min()
                .map(|(_, k)| format!("did you mean \"{k}\"?"))
        });
    let allowed = known
        .iter()
        .map(|k| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ");
    match suggestion {
        Some(s) => format!("unknown key {key:?} ({s} the keys are {allowed})"),
        None => format!("unknown key {key:?} (the keys are {allowed})"),
    }
}

/// Levenshtein distance, for "did you mean" hints on short keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur.push(substitute.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::LoginName;
    use crate::domain::{NodeId, NodeInfo, UserId, UserInfo};

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    #[allow(clippy::needless_pass_by_value)] // reads better with json!(…) at every call
    fn primary(value: Value) -> Result<Grant, String> {
        parse_value(CapabilitySchema::Primary, 0, &value)
    }

    #[allow(clippy::needless_pass_by_value)] // reads better with json!(…) at every call
    fn compat(value: Value) -> Result<Grant, String> {
        parse_value(CapabilitySchema::Compat, 0, &value)
    }

    #[test]
    fn full_primary_value_parses() {
        let grant = primary(json!({
            "role": "sre", "clusters": ["prod-*"], "maxTTL": "1h30m", "priority": 10
        }))
        .unwrap();
        assert_eq!(grant.role.as_str(), "sre");
        assert_eq!(grant.max_ttl.map(Ttl::as_secs), Some(5400));
        assert_eq!(grant.priority, 10);
        assert_eq!(grant.schema, CapabilitySchema::Primary);
    }

    #[test]
    fn minimal_value_defaults_to_all_clusters_priority_zero_no_max() {
        let grant = primary(json!({"role": "view"})).unwrap();
        assert_eq!(grant.clusters, ClusterSelector::All);
        assert!(grant.applies_to(&cluster("anything")));
        assert_eq!(grant.priority, 0);
        assert_eq!(grant.max_ttl, None);
    }

    #[test]
    fn cluster_globs_match_and_do_not_match() {
        let grant = primary(json!({"role": "sre", "clusters": ["prod-*"]})).unwrap();
        assert!(grant.applies_to(&cluster("prod-eu")));
        assert!(!grant.applies_to(&cluster("staging-eu")));
        // The glob covers the whole name, not a substring.
        assert!(!grant.applies_to(&cluster("preprod-eu")));
    }

    #[test]
    fn multiple_cluster_globs_match_any() {
        let grant = primary(json!({"role": "sre", "clusters": ["prod-?", "{dev,test}-eu", "ops"]}))
            .unwrap();
        for yes in ["prod-1", "dev-eu", "test-eu", "ops"] {
            assert!(grant.applies_to(&cluster(yes)), "{yes}");
        }
        for no in ["prod-12", "qa-eu", "ops-2"] {
            assert!(!grant.applies_to(&cluster(no)), "{no}");
        }
    }

    #[test]
    fn bad_globs_and_empty_cluster_lists_are_skipped() {
        let ok = primary(json!({"role": "sre", "clusters": ["prod-[ab]"]}));
        assert!(ok.is_ok());
        let bad = primary(json!({"role": "sre", "clusters": ["prod-[ab"]})).unwrap_err();
        assert!(bad.contains("\"prod-[ab\" is invalid"), "{bad}");
        let empty = primary(json!({"role": "sre", "clusters": []})).unwrap_err();
        assert!(empty.contains("empty list"), "{empty}");
        let empty_glob = primary(json!({"role": "sre", "clusters": [""]})).unwrap_err();
        assert!(empty_glob.contains("empty glob"), "{empty_glob}");
    }

    #[test]
    fn unknown_keys_case_variants_and_typos_are_skipped_with_hints() {
        assert!(primary(json!({"role": "sre", "clusters": ["prod"]})).is_ok());

        let typo = primary(json!({"role": "sre", "cluster": ["prod"]})).unwrap_err();
        assert!(typo.contains("unknown key \"cluster\""), "{typo}");
        assert!(typo.contains("did you mean \"clusters\""), "{typo}");

        let case = primary(json!({"Role": "sre"})).unwrap_err();
        assert!(case.contains("unknown key \"Role\""), "{case}");
        assert!(case.contains("case-sensitive"), "{case}");
        assert!(case.contains("\"role\" is missing"), "{case}");

        let max = primary(json!({"role": "sre", "maxTtl": "1h"})).unwrap_err();
        assert!(max.contains("did you mean \"maxTTL\""), "{max}");

        let other = primary(json!({"role": "sre", "namespace": "x"})).unwrap_err();
        assert!(other.contains("unknown key \"namespace\""), "{other}");
    }

    #[test]
    fn wrong_types_are_skipped() {
        assert!(primary(json!({"role": "sre", "priority": 10})).is_ok());
        let p = primary(json!({"role": "sre", "priority": "10"})).unwrap_err();
        assert!(p.contains("\"priority\" must be a number"), "{p}");
        let f = primary(json!({"role": "sre", "priority": 1.5})).unwrap_err();
        assert!(f.contains("whole number"), "{f}");

        assert!(primary(json!({"role": "sre", "clusters": ["prod"]})).is_ok());
        let c = primary(json!({"role": "sre", "clusters": "prod"})).unwrap_err();
        assert!(c.contains("\"clusters\" must be an array"), "{c}");
        let c2 = primary(json!({"role": "sre", "clusters": ["prod", 3]})).unwrap_err();
        assert!(c2.contains("array of strings"), "{c2}");

        let r = primary(json!({"role": 7})).unwrap_err();
        assert!(r.contains("\"role\" must be a string"), "{r}");
        let m = primary(json!({"role": "sre", "maxTTL": 3600})).unwrap_err();
        assert!(m.contains("\"maxTTL\" must be a duration string"), "{m}");
        let n = primary(json!({"role": "sre", "clusters": null})).unwrap_err();
        assert!(n.contains("not null"), "{n}");
    }

    #[test]
    fn invalid_roles_are_skipped() {
        assert!(primary(json!({"role": "read-only"})).is_ok());
        let upper = primary(json!({"role": "Admin"})).unwrap_err();
        assert!(upper.contains("invalid role name"), "{upper}");
        assert!(primary(json!({"role": ""})).is_err());
    }

    #[test]
    fn non_objects_are_skipped() {
        for (value, kind) in [
            (json!("sre"), "a string"),
            (json!(["sre"]), "an array"),
            (json!(null), "null"),
            (json!(3), "a number"),
            (json!(true), "a boolean"),
        ] {
            let reason = primary(value).unwrap_err();
            assert!(reason.contains("must be a JSON object"), "{reason}");
            assert!(reason.contains(kind), "{reason}");
        }
    }

    #[test]
    fn bad_durations_are_skipped() {
        assert!(primary(json!({"role": "sre", "maxTTL": "90m"})).is_ok());
        for (ttl, hint) in [
            ("soon", "invalid duration"),
            ("0s", "positive"),
            ("-1h", "positive"),
            ("5d", "unknown unit"),
        ] {
            let reason = primary(json!({"role": "sre", "maxTTL": ttl})).unwrap_err();
            assert!(reason.contains("\"maxTTL\""), "{reason}");
            assert!(reason.contains(hint), "{ttl}: {reason}");
        }
    }

    #[test]
    fn compat_schema_reads_period_as_max_ttl() {
        let grant =
            compat(json!({"role": "cluster-admin", "period": "4h", "priority": 100})).unwrap();
        assert_eq!(grant.max_ttl.map(Ttl::as_secs), Some(4 * 3600));
        assert_eq!(grant.priority, 100);
        assert_eq!(grant.clusters, ClusterSelector::All);
        assert_eq!(grant.schema, CapabilitySchema::Compat);
    }

    #[test]
    fn each_schema_rejects_the_other_schemas_keys() {
        // `period` is a compat key, not a primary one, and vice versa for `maxTTL`/`clusters`.
        let p = primary(json!({"role": "sre", "period": "4h"})).unwrap_err();
        assert!(p.contains("unknown key \"period\""), "{p}");
        let c = compat(json!({"role": "sre", "maxTTL": "4h"})).unwrap_err();
        assert!(c.contains("unknown key \"maxTTL\""), "{c}");
        let c2 = compat(json!({"role": "sre", "clusters": ["prod"]})).unwrap_err();
        assert!(c2.contains("unknown key \"clusters\""), "{c2}");
        let bad_period = compat(json!({"role": "sre", "period": "0s"})).unwrap_err();
        assert!(bad_period.contains("\"period\""), "{bad_period}");
    }

    fn identity(caps: Vec<Value>, compat: Vec<Value>) -> Identity {
        Identity {
            user: UserInfo {
                id: UserId(1),
                login_name: LoginName::new("alice@example.com").unwrap(),
                display_name: "Alice".into(),
            },
            node: NodeInfo {
                stable_id: NodeId::new("nLAPTOP").unwrap(),
                name: "laptop".into(),
                addresses: vec![],
                tags: vec![],
            },
            groups: vec![],
            capabilities: caps,
            compat_capabilities: compat,
        }
    }

    #[test]
    fn identity_values_are_read_only_with_their_own_schema() {
        let parsed = ParsedGrants::from_identity(&identity(
            vec![
                json!({"role": "sre", "maxTTL": "1h"}),
                json!({"role": "ops", "period": "2h"}),
            ],
            vec![
                json!({"role": "legacy", "period": "2h"}),
                json!({"role": "new", "maxTTL": "1h"}),
            ],
        ));
        let roles: Vec<(&str, CapabilitySchema)> = parsed
            .grants
            .iter()
            .map(|g| (g.role.as_str(), g.schema))
            .collect();
        assert_eq!(
            roles,
            [
                ("sre", CapabilitySchema::Primary),
                ("legacy", CapabilitySchema::Compat)
            ]
        );
        let skipped: Vec<(usize, CapabilitySchema)> =
            parsed.skipped.iter().map(|s| (s.index, s.schema)).collect();
        assert_eq!(
            skipped,
            [
                (1, CapabilitySchema::Primary),
                (1, CapabilitySchema::Compat)
            ]
        );
        assert_eq!(
            parsed.skipped[0].value,
            json!({"role": "ops", "period": "2h"})
        );
    }

    #[test]
    fn skipped_value_display_names_the_value_and_reason() {
        let (_, skipped) = parse_values(CapabilitySchema::Primary, &[json!({"Role": "sre"})]);
        let text = skipped[0].to_string();
        assert!(text.contains("value #1"), "{text}");
        assert!(text.contains(r#"{"Role":"sre"}"#), "{text}");
        assert!(text.contains("unknown key \"Role\""), "{text}");
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("cluster", "clusters"), 1);
        assert_eq!(edit_distance("maxttl", "maxttl"), 0);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
