//! The tailnet policy file, read offline: which capability values its grants deliver to a tka
//! server's node for a given person or tagged device. This is what the control plane computes
//! and whois then reports (see `docs/identity.md`); here it is computed from the file itself, so
//! `tka policy explain` and other tools can answer "who gets what" without a tailnet.
//!
//! Only what decides capability values is read: `groups` (to expand `group:` selectors) and
//! `grants` (`src`, `dst`, `app`); `tagOwners` only names tags. Selectors that need the
//! tailnet's live state (`autogroup:admin`, IP addresses, host aliases, device postures) cannot
//! be evaluated from the file and are reported as [`Unevaluated`], never guessed at. Pure: no
//! I/O.
//!
//! ```
//! use tka_core::tailnet_policy::{Principal, TailnetPolicy};
//!
//! let policy = TailnetPolicy::parse(r#"{
//!   // comments and trailing commas, as Tailscale stores the file
//!   "groups": {"group:sre": ["alice@example.com"]},
//!   "grants": [
//!     {"src": ["group:sre"], "dst": ["tag:tka"],
//!      "app": {"tka.dev/cap/kubernetes": [{"role": "sre", "maxTTL": "4h"}]}},
//!   ],
//! }"#).unwrap();
//! let alice = Principal::user("alice@example.com");
//! let delivered = policy.delivered(&alice, &["tag:tka".to_owned()]);
//! let values = delivered.values("tka.dev/cap/kubernetes");
//! assert_eq!(values, [serde_json::json!({"role": "sre", "maxTTL": "4h"})]);
//! assert_eq!(delivered.sources("tka.dev/cap/kubernetes")[0].src, "group:sre");
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The tag a tka server's node carries by default; a grant reaches the server when its `dst`
/// names it (or `*`).
pub const DEFAULT_SERVER_TAG: &str = "tag:tka";

/// A tailnet policy file could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyFileError {
    /// Not HuJSON (JSON with comments and trailing commas).
    #[error("the tailnet policy file is not valid HuJSON: {0}")]
    Syntax(String),
    /// Valid HuJSON, but not the shape of a policy file.
    #[error("the tailnet policy file has an unexpected shape: {0}")]
    Shape(String),
}

/// One entry of the policy file's `grants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyGrant {
    /// Its position in `grants`, 1-based (as people count them in messages).
    #[serde(skip)]
    pub number: usize,
    /// Who the grant is for.
    #[serde(default)]
    pub src: Vec<String>,
    /// Which nodes it reaches.
    #[serde(default)]
    pub dst: Vec<String>,
    /// The application capabilities it grants, by capability name.
    #[serde(default)]
    pub app: BTreeMap<String, Vec<Value>>,
}

#[derive(Debug, Deserialize)]
struct RawPolicy {
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "tagOwners")]
    tag_owners: BTreeMap<String, Value>,
    #[serde(default)]
    grants: Vec<PolicyGrant>,
}

/// The parts of a tailnet policy file that decide capability values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailnetPolicy {
    groups: BTreeMap<String, Vec<String>>,
    tags: BTreeSet<String>,
    grants: Vec<PolicyGrant>,
}

/// Whom capability values are delivered to: a person's (untagged) device, or a tagged device,
/// which acts as its tags only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum Principal {
    /// An untagged device of this login name.
    User {
        /// The login name, e.g. `alice@example.com`.
        login: String,
    },
    /// A device carrying these tags (sorted).
    Tagged {
        /// The tags, e.g. `["tag:ci"]`.
        tags: Vec<String>,
    },
}

impl Principal {
    /// An untagged device of `login`.
    pub fn user(login: impl Into<String>) -> Self {
        Self::User {
            login: login.into(),
        }
    }

    /// A device carrying `tags`.
    pub fn tagged<I, S>(tags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tags: BTreeSet<String> = tags.into_iter().map(Into::into).collect();
        Self::Tagged {
            tags: tags.into_iter().collect(),
        }
    }

    /// Reads `alice@example.com`, `tag:ci` or `tag:ci,tag:prod`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.starts_with("tag:") {
            let tags: Vec<&str> = text.split(',').map(str::trim).collect();
            if let Some(bad) = tags.iter().find(|t| !t.starts_with("tag:") || t.len() <= 4) {
                return Err(format!("{bad:?} is not a tag (tag:NAME)"));
            }
            return Ok(Self::tagged(tags));
        }
        if text.contains('@') && !text.contains(char::is_whitespace) {
            return Ok(Self::user(text));
        }
        Err(format!(
            "{text:?} is neither a login name (alice@example.com) nor tags (tag:ci)"
        ))
    }

    /// Whether this is a tagged device.
    pub fn is_tagged(&self) -> bool {
        matches!(self, Self::Tagged { .. })
    }

    /// The name of the device explain stands in for, as messages show it: "a device of
    /// alice@example.com", "a device tagged tag:ci".
    pub fn device_name(&self) -> String {
        match self {
            Self::User { login } => format!("a device of {login}"),
            Self::Tagged { tags } => format!("a device tagged {}", tags.join(",")),
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::User { login } => f.write_str(login),
            Self::Tagged { tags } => f.write_str(&tags.join(",")),
        }
    }
}

/// One capability value delivered to a principal, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeliveredValue {
    /// The value, as written in the grant.
    pub value: Value,
    /// The grant's position in `grants`, 1-based.
    pub grant: usize,
    /// The `src` selector that matched the principal (`group:sre`, `autogroup:member`, …).
    pub src: String,
}

/// The capability values a principal receives at the server's node, by capability name, in the
/// order of the grants (the control plane guarantees no order; resolution does not depend on it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    by_name: BTreeMap<String, Vec<DeliveredValue>>,
}

impl Delivered {
    /// The values under `capability`, as whois would report them.
    pub fn values(&self, capability: &str) -> Vec<Value> {
        self.sources(capability)
            .iter()
            .map(|d| d.value.clone())
            .collect()
    }

    /// The values under `capability` with their grants.
    pub fn sources(&self, capability: &str) -> &[DeliveredValue] {
        self.by_name.get(capability).map_or(&[], Vec::as_slice)
    }
}

/// A selector the file alone cannot decide, so the grant it is in was not applied to anyone
/// through it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Unevaluated {
    /// The grant's position in `grants`, 1-based.
    pub grant: usize,
    /// The selector, e.g. `autogroup:admin`.
    pub selector: String,
    /// Why it was not evaluated.
    pub reason: String,
}

impl fmt::Display for Unevaluated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "grant #{}: {} {}",
            self.grant, self.selector, self.reason
        )
    }
}

impl TailnetPolicy {
    /// Parses a policy file as Tailscale stores it: HuJSON, that is JSON plus `//` and `/* */`
    /// comments and trailing commas (nothing looser: no single quotes, unquoted keys or hex
    /// numbers). Sections other than `groups`, `tagOwners` and `grants` are ignored.
    pub fn parse(text: &str) -> Result<Self, PolicyFileError> {
        let options = jsonc_parser::ParseOptions {
            allow_comments: true,
            allow_trailing_commas: true,
            allow_loose_object_property_names: false,
            allow_missing_commas: false,
            allow_single_quoted_strings: false,
            allow_hexadecimal_numbers: false,
            allow_unary_plus_numbers: false,
            allow_bare_decimal_point_numbers: false,
            allow_non_finite_numbers: false,
            allow_extended_string_escapes: false,
        };
        let value: Value = jsonc_parser::parse_to_serde_value(text, &options)
            .map_err(|e| PolicyFileError::Syntax(e.to_string()))?;
        let raw: RawPolicy =
            serde_json::from_value(value).map_err(|e| PolicyFileError::Shape(e.to_string()))?;
        let mut tags: BTreeSet<String> = raw.tag_owners.into_keys().collect();
        let mut grants = raw.grants;
        for (i, grant) in grants.iter_mut().enumerate() {
            grant.number = i + 1;
            tags.extend(grant.src.iter().filter(|s| s.starts_with("tag:")).cloned());
        }
        Ok(Self {
            groups: raw.groups,
            tags,
            grants,
        })
    }

    /// The grants, in file order.
    pub fn grants(&self) -> &[PolicyGrant] {
        &self.grants
    }

    /// The groups `login` is a member of, sorted.
    pub fn groups_of(&self, login: &str) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, members)| members.iter().any(|m| m == login))
            .map(|(group, _)| group.clone())
            .collect()
    }

    /// Everyone the file names: every login in `groups` and in grant sources, then every tag in
    /// `tagOwners` and grant sources (each as a device carrying that one tag). Sorted.
    pub fn principals(&self) -> Vec<Principal> {
        let mut users: BTreeSet<&str> =
            self.groups.values().flatten().map(String::as_str).collect();
        for grant in &self.grants {
            users.extend(grant.src.iter().filter(|s| is_login(s)).map(String::as_str));
        }
        users
            .into_iter()
            .filter(|u| is_login(u))
            .map(Principal::user)
            .chain(self.tags.iter().map(|t| Principal::tagged([t.as_str()])))
            .collect()
    }

    /// The capability values `principal` receives at a node carrying `server_tags`: those of
    /// every grant whose `dst` names one of the tags (or `*`) and whose `src` matches the
    /// principal, each value once per grant.
    pub fn delivered(&self, principal: &Principal, server_tags: &[String]) -> Delivered {
        let groups = match principal {
            Principal::User { login } => self.groups_of(login),
            Principal::Tagged { .. } => Vec::new(),
        };
        let mut by_name: BTreeMap<String, Vec<DeliveredValue>> = BTreeMap::new();
        for grant in self
            .grants
            .iter()
            .filter(|g| reaches_server(g, server_tags))
        {
            let Some(src) = grant
                .src
                .iter()
                .find(|s| src_matches(s, principal, &groups))
            else {
                continue;
            };
            for (name, values) in &grant.app {
                by_name
                    .entry(name.clone())
                    .or_default()
                    .extend(values.iter().map(|value| DeliveredValue {
                        value: value.clone(),
                        grant: grant.number,
                        src: src.clone(),
                    }));
            }
        }
        Delivered { by_name }
    }

    /// The selectors of grants that carry one of `capabilities` to the server that the file
    /// alone cannot decide, and such grants whose `dst` does not reach the server at all.
    pub fn unevaluated(&self, capabilities: &[String], server_tags: &[String]) -> Vec<Unevaluated> {
        let mut out = Vec::new();
        for grant in &self.grants {
            if !capabilities.iter().any(|c| grant.app.contains_key(c)) {
                continue;
            }
            if !reaches_server(grant, server_tags) {
                out.push(Unevaluated {
                    grant: grant.number,
                    selector: format!("dst {}", grant.dst.join(", ")),
                    reason: format!(
                        "does not name the server's tag ({}) or \"*\", so it gives the server no capability",
                        server_tags.join(", ")
                    ),
                });
                continue;
            }
            for src in &grant.src {
                if let Some(reason) = unevaluable(src) {
                    out.push(Unevaluated {
                        grant: grant.number,
                        selector: src.clone(),
                        reason: reason.to_owned(),
                    });
                } else if let Some(group) = src.strip_prefix("group:")
                    && !self.groups.contains_key(src)
                {
                    out.push(Unevaluated {
                        grant: grant.number,
                        selector: src.clone(),
                        reason: format!(
                            "is not defined under \"groups\" (group {group:?} matches nobody)"
                        ),
                    });
                }
            }
        }
        out
    }
}

fn is_login(s: &str) -> bool {
    s.contains('@') && !s.contains(':')
}

fn reaches_server(grant: &PolicyGrant, server_tags: &[String]) -> bool {
    grant
        .dst
        .iter()
        .any(|d| d == "*" || server_tags.iter().any(|t| t == d))
}

/// Whether a `src` selector covers the principal. Unknown or live-state selectors match nobody
/// (see [`TailnetPolicy::unevaluated`]).
fn src_matches(src: &str, principal: &Principal, groups: &[String]) -> bool {
    match principal {
        Principal::User { login } => {
            src == "*"
                || src == "autogroup:member"
                || src == login
                || (src.starts_with("group:") && groups.iter().any(|g| g == src))
        }
        Principal::Tagged { tags } => {
            src == "*" || src == "autogroup:tagged" || tags.iter().any(|t| t == src)
        }
    }
}

fn unevaluable(src: &str) -> Option<&'static str> {
    if src == "*" || src == "autogroup:member" || src == "autogroup:tagged" {
        return None;
    }
    if src.starts_with("autogroup:") {
        return Some(
            "depends on the tailnet's user roles or devices, which the file does not say; run `tka list` on such a device to see what it holds",
        );
    }
    if src.starts_with("tag:") || src.starts_with("group:") || is_login(src) {
        return None;
    }
    Some(
        "is an address, host alias or other selector that only the tailnet can resolve; it was not applied",
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const CAP: &str = "tka.dev/cap/kubernetes";

    fn server() -> Vec<String> {
        vec![DEFAULT_SERVER_TAG.to_owned()]
    }

    fn policy() -> TailnetPolicy {
        TailnetPolicy::parse(
            r#"{
              // people
              "groups": {"group:sre": ["alice@example.com"], "group:eng": ["alice@example.com", "carol@example.com"]},
              "tagOwners": {"tag:tka": [], "tag:ci": [], },
              /* the grants */
              "grants": [
                {"src": ["autogroup:member"], "dst": ["tag:tka"], "ip": ["tcp:80"],
                 "app": {"tka.dev/cap/kubernetes": [{"role": "read-only"}]}},
                {"src": ["group:sre", "autogroup:admin"], "dst": ["tag:tka"],
                 "app": {"tka.dev/cap/kubernetes": [{"role": "sre", "priority": 10}]}},
                {"src": ["tag:ci"], "dst": ["*"],
                 "app": {"tka.dev/cap/kubernetes": [{"role": "deploy"}]}},
                {"src": ["*"], "dst": ["tag:web"],
                 "app": {"tka.dev/cap/kubernetes": [{"role": "everything"}]}},
                {"src": ["bob@example.com"], "dst": ["tag:tka"],
                 "app": {"specht-labs.de/cap/tka": [{"role": "legacy", "period": "1h"}]}},
              ],
            }"#,
        )
        .unwrap()
    }

    #[test]
    fn hujson_comments_and_trailing_commas_parse_but_nothing_looser() {
        assert!(TailnetPolicy::parse("{\"grants\": [],}").is_ok());
        for loose in ["{'grants': []}", "{grants: []}", "{\"x\": 0x10}"] {
            let err = TailnetPolicy::parse(loose).unwrap_err();
            assert!(matches!(err, PolicyFileError::Syntax(_)), "{loose}: {err}");
        }
        let shape = TailnetPolicy::parse("{\"grants\": {}}").unwrap_err();
        assert!(matches!(shape, PolicyFileError::Shape(_)), "{shape}");
    }

    #[test]
    fn users_get_member_group_and_own_grants_only_at_the_server() {
        let p = policy();
        let alice = p.delivered(&Principal::user("alice@example.com"), &server());
        assert_eq!(
            alice.values(CAP),
            [
                json!({"role": "read-only"}),
                json!({"role": "sre", "priority": 10})
            ]
        );
        let sources: Vec<(usize, &str)> = alice
            .sources(CAP)
            .iter()
            .map(|d| (d.grant, d.src.as_str()))
            .collect();
        assert_eq!(sources, [(1, "autogroup:member"), (2, "group:sre")]);

        let carol = p.delivered(&Principal::user("carol@example.com"), &server());
        assert_eq!(carol.values(CAP), [json!({"role": "read-only"})]);

        let bob = p.delivered(&Principal::user("bob@example.com"), &server());
        assert_eq!(
            bob.values("specht-labs.de/cap/tka"),
            [json!({"role": "legacy", "period": "1h"})]
        );
    }

    #[test]
    fn tagged_devices_act_as_their_tags_never_as_members() {
        let p = policy();
        let ci = p.delivered(&Principal::tagged(["tag:ci"]), &server());
        assert_eq!(ci.values(CAP), [json!({"role": "deploy"})]);
        let web = p.delivered(&Principal::tagged(["tag:web"]), &server());
        assert!(web.values(CAP).is_empty());
        // The grant to tag:web's dst reaches another node, not the server.
        let elsewhere = p.delivered(&Principal::tagged(["tag:ci"]), &["tag:web".to_owned()]);
        assert_eq!(
            elsewhere.values(CAP),
            [json!({"role": "deploy"}), json!({"role": "everything"})]
        );
    }

    #[test]
    fn principals_are_every_login_and_tag_named() {
        let names: Vec<String> = policy()
            .principals()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "alice@example.com",
                "bob@example.com",
                "carol@example.com",
                "tag:ci",
                "tag:tka"
            ]
        );
    }

    #[test]
    fn live_state_selectors_and_other_dsts_are_reported_not_guessed() {
        let notes = policy().unevaluated(&[CAP.to_owned()], &server());
        let selectors: Vec<(usize, &str)> = notes
            .iter()
            .map(|n| (n.grant, n.selector.as_str()))
            .collect();
        assert_eq!(selectors, [(2, "autogroup:admin"), (4, "dst tag:web")]);
    }

    #[test]
    fn principals_parse_from_the_command_line() {
        assert_eq!(
            Principal::parse("alice@example.com"),
            Ok(Principal::user("alice@example.com"))
        );
        assert_eq!(
            Principal::parse("tag:prod,tag:ci"),
            Ok(Principal::tagged(["tag:ci", "tag:prod"]))
        );
        assert!(Principal::parse("alice").is_err());
        assert!(Principal::parse("tag:ci,alice@example.com").is_err());
    }
}
