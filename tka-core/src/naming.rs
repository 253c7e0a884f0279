//! Names and label values of the Kubernetes objects tka creates. Pure functions: the random parts
//! come in as [`NameSuffix`] values made by the caller (the Kubernetes backend draws them from a
//! random source), so every function here is deterministic and testable.
//!
//! RBAC matches subjects by name, so names are never reused: a session is
//! `tka-<slug>-<suffix>` with a fresh random suffix, and every change of a session's role gets
//! bindings under a fresh revision. This module never decides *whether* to create anything.

use std::fmt;
use std::hash::Hasher;

use crate::domain::{DomainError, Identity, NodeId, RoleName, SessionName, UserId};

/// The prefix of every session name (and so of every object name tka creates).
pub const NAME_PREFIX: &str = "tka-";

/// The length of a [`NameSuffix`] made by [`NameSuffix::from_random`].
pub const SUFFIX_LEN: usize = 8;

/// The longest slug [`session_name`] keeps, so that the whole name stays a DNS-1123 label.
pub const MAX_SLUG_LEN: usize = 63 - NAME_PREFIX.len() - 1 - SUFFIX_LEN;

/// The longest role slug inside a binding name.
const MAX_ROLE_SLUG_LEN: usize = 40;

/// The characters a random suffix is drawn from: lowercase letters and digits.
const SUFFIX_ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A short random part of a name: lowercase letters and digits, 1 to 16 characters.
///
/// ```
/// use tka_core::naming::NameSuffix;
/// let suffix = NameSuffix::from_random(0x1234_5678_9abc_def0);
/// assert_eq!(suffix.as_str().len(), 8);
/// assert!(NameSuffix::new("x7k2p9qz").is_ok());
/// assert!(NameSuffix::new("Not-OK").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NameSuffix(String);

impl NameSuffix {
    /// Validates a suffix: 1 to 16 lowercase letters and digits.
    pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= 16
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if ok {
            Ok(Self(value))
        } else {
            Err(DomainError::SessionName(value))
        }
    }

    /// Encodes 64 random bits as [`SUFFIX_LEN`] letters and digits (about 41 bits survive).
    pub fn from_random(mut bits: u64) -> Self {
        let mut out = String::with_capacity(SUFFIX_LEN);
        for _ in 0..SUFFIX_LEN {
            // The remainder of a division by 36 always indexes the 36-character alphabet.
            let index = usize::try_from(bits % 36).unwrap_or(0);
            out.push(char::from(SUFFIX_ALPHABET[index]));
            bits /= 36;
        }
        Self(out)
    }

    /// The suffix as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NameSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NameSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Turns arbitrary text into a DNS-1123 label fragment of at most `max` characters: lowercase
/// letters and digits, with every other run of characters replaced by one `-`, and no `-` at
/// either end. May return an empty string.
///
/// ```
/// use tka_core::naming::slug;
/// assert_eq!(slug("alice@example.com", 50), "alice-example-com");
/// assert_eq!(slug("Bob.O'Neil@Example.COM", 50), "bob-o-neil-example-com");
/// assert_eq!(slug("alice@example.com", 8), "alice-ex");
/// ```
pub fn slug(input: &str, max: usize) -> String {
    let mut out = String::with_capacity(input.len().min(max));
    let mut pending_dash = false;
    for c in input.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if pending_dash && !out.is_empty() {
                out.push('-');
            }
            pending_dash = false;
            out.push(c);
        } else {
            pending_dash = true;
        }
        if out.len() >= max {
            break;
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The slug that names a caller's objects: the first tag of a tagged device (`tag:ci` → `ci`),
/// otherwise the login name (`alice@example.com` → `alice-example-com`); `device` when nothing
/// usable is left.
pub fn identity_slug(identity: &Identity) -> String {
    let source = match identity.node.tags.first() {
        Some(tag) => tag.as_str().strip_prefix("tag:").unwrap_or(tag.as_str()),
        None => identity.user.login_name.as_str(),
    };
    let s = slug(source, MAX_SLUG_LEN);
    if s.is_empty() { "device".to_owned() } else { s }
}

/// The name of a new session: `tka-<slug>-<suffix>`, a DNS-1123 label of at most 63 characters.
/// Fails only if the result is not a label, which the slug and suffix rules rule out.
///
/// ```
/// use tka_core::naming::{NameSuffix, session_name_for};
/// let name = session_name_for("alice@example.com", &NameSuffix::new("x7k2p9qz").unwrap());
/// assert_eq!(name.unwrap().as_str(), "tka-alice-example-com-x7k2p9qz");
/// ```
pub fn session_name(identity: &Identity, suffix: &NameSuffix) -> Result<SessionName, DomainError> {
    build_session_name(&identity_slug(identity), suffix)
}

/// The name of a session for a login name or tag given as text (see [`session_name`]).
pub fn session_name_for(
    login_or_tag: &str,
    suffix: &NameSuffix,
) -> Result<SessionName, DomainError> {
    let source = login_or_tag.strip_prefix("tag:").unwrap_or(login_or_tag);
    let s = slug(source, MAX_SLUG_LEN);
    build_session_name(if s.is_empty() { "device" } else { &s }, suffix)
}

fn build_session_name(name_slug: &str, suffix: &NameSuffix) -> Result<SessionName, DomainError> {
    // A hand-made suffix may be longer than SUFFIX_LEN: cut the slug so the name stays ≤ 63.
    let keep = 63usize.saturating_sub(NAME_PREFIX.len() + 1 + suffix.as_str().len());
    let cut = slug(name_slug, keep);
    let cut = if cut.is_empty() { "d" } else { cut.as_str() };
    SessionName::new(format!("{NAME_PREFIX}{cut}-{suffix}"))
}

/// The name of a session's ServiceAccount: the session's own name.
pub fn service_account_name(session: &SessionName) -> String {
    session.as_str().to_owned()
}

/// The name of the `index`-th binding of a session's `revision` for `role`:
/// `<session>.<role slug>.<revision>-<index>`, a DNS-1123 subdomain whose every label is at most
/// 63 characters. A role change comes with a new revision, so the new bindings never share a name
/// with the old ones.
///
/// ```
/// use tka_core::naming::{NameSuffix, binding_name, session_name_for};
/// use tka_core::RoleName;
/// let session = session_name_for("tag:ci", &NameSuffix::new("abcd1234").unwrap()).unwrap();
/// let name = binding_name(&session, &RoleName::new("read.only").unwrap(), &NameSuffix::new("r1").unwrap(), 0);
/// assert_eq!(name, "tka-ci-abcd1234.read-only.r1-0");
/// ```
pub fn binding_name(
    session: &SessionName,
    role: &RoleName,
    revision: &NameSuffix,
    index: usize,
) -> String {
    let role_slug = slug(role.as_str(), MAX_ROLE_SLUG_LEN);
    let role_slug = if role_slug.is_empty() {
        "role"
    } else {
        &role_slug
    };
    format!("{session}.{role_slug}.{revision}-{index}")
}

/// A short, stable, label-safe digest of `value` (16 lowercase hex digits, FNV-1a 64). Labels
/// hold digests rather than IDs because node IDs and login names are not label-safe; a digest is
/// only an index, so whoever finds an object by it still checks the object's spec.
///
/// ```
/// use tka_core::naming::label_hash;
/// assert_eq!(label_hash("nBvQmCNTRL").len(), 16);
/// assert_eq!(label_hash("nBvQmCNTRL"), label_hash("nBvQmCNTRL"));
/// assert_ne!(label_hash("nBvQmCNTRL"), label_hash("nBvQmCNTRM"));
/// ```
pub fn label_hash(value: &str) -> String {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(value.as_bytes());
    format!("{:016x}", hasher.finish())
}

/// The value of the `tka.dev/node` label for a device.
pub fn node_label(node: &NodeId) -> String {
    label_hash(node.as_str())
}

/// The value of the `tka.dev/user` label for a user.
pub fn user_label(user: UserId) -> String {
    label_hash(&user.to_string())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::{
        LoginName, NodeInfo, Tag, UserInfo, is_dns1123_label, is_dns1123_subdomain,
    };

    fn identity(login: &str, tags: &[&str]) -> Identity {
        Identity {
            user: UserInfo {
                id: UserId(7),
                login_name: LoginName::new(login).unwrap(),
                display_name: String::new(),
            },
            node: NodeInfo {
                stable_id: NodeId::new("nNODE").unwrap(),
                name: "laptop.example.ts.net".into(),
                addresses: vec![IpAddr::from([100, 64, 0, 1])],
                tags: tags.iter().map(|t| Tag::new(*t).unwrap()).collect(),
            },
            groups: vec![],
            capabilities: vec![],
            compat_capabilities: vec![],
        }
    }

    fn suffix() -> NameSuffix {
        NameSuffix::new("x7k2p9qz").unwrap()
    }

    #[test]
    fn people_are_named_after_their_login() {
        let name = session_name(&identity("alice@example.com", &[]), &suffix()).unwrap();
        assert_eq!(name.as_str(), "tka-alice-example-com-x7k2p9qz");
    }

    #[test]
    fn tagged_devices_are_named_after_their_tag_not_the_shared_user() {
        let name = session_name(&identity("tagged-devices", &["tag:ci"]), &suffix()).unwrap();
        assert_eq!(name.as_str(), "tka-ci-x7k2p9qz");
    }

    #[test]
    fn long_logins_are_truncated_to_a_label() {
        let login = format!("{}@example.com", "a".repeat(200));
        let name = session_name(&identity(&login, &[]), &suffix()).unwrap();
        assert_eq!(name.as_str().len(), 63);
        assert!(name.as_str().ends_with("-x7k2p9qz"));
        assert!(is_dns1123_label(name.as_str()));
    }

    #[test]
    fn unusable_logins_fall_back_to_device() {
        let name = session_name(&identity("@@@", &[]), &suffix()).unwrap();
        assert_eq!(name.as_str(), "tka-device-x7k2p9qz");
    }

    #[test]
    fn slug_collapses_and_trims_separators() {
        assert_eq!(slug("--A..b__c--", 50), "a-b-c");
        assert_eq!(slug("ab-cd", 3), "ab");
        assert_eq!(slug("ünïcödé", 50), "n-c-d");
        assert_eq!(slug("", 50), "");
    }

    #[test]
    fn suffixes_differ_for_different_random_bits() {
        let a = NameSuffix::from_random(1);
        let b = NameSuffix::from_random(2);
        assert_ne!(a, b);
        assert_eq!(NameSuffix::from_random(1), a);
        assert!(NameSuffix::new("").is_err());
        assert!(NameSuffix::new("a".repeat(17)).is_err());
        assert!(NameSuffix::new("a".repeat(16)).is_ok());
    }

    #[test]
    fn a_new_revision_gives_every_binding_a_new_name() {
        let session = session_name(&identity("alice@example.com", &[]), &suffix()).unwrap();
        let role = RoleName::new("sre").unwrap();
        let old = binding_name(&session, &role, &NameSuffix::new("aaaa").unwrap(), 0);
        let new = binding_name(&session, &role, &NameSuffix::new("bbbb").unwrap(), 0);
        assert_ne!(old, new);
        assert_eq!(old, "tka-alice-example-com-x7k2p9qz.sre.aaaa-0");
    }

    #[test]
    fn label_hash_is_stable_across_releases() {
        // FNV-1a 64 of the empty string and of "a": fixed by the algorithm, so labels written by
        // one version of tka are found by the next.
        assert_eq!(label_hash(""), "cbf29ce484222325");
        assert_eq!(label_hash("a"), "af63dc4c8601ec8c");
        assert_eq!(user_label(UserId(7)), label_hash("7"));
        assert_eq!(node_label(&NodeId::new("n1").unwrap()), label_hash("n1"));
    }

    proptest! {
        #[test]
        fn any_login_gives_a_valid_session_name(login in "\\PC{1,300}", bits in any::<u64>()) {
            let Ok(login_name) = LoginName::new(login) else { return Ok(()); };
            let mut id = identity("x@y", &[]);
            id.user.login_name = login_name;
            let name = session_name(&id, &NameSuffix::from_random(bits)).unwrap();
            prop_assert!(is_dns1123_label(name.as_str()), "{name}");
            prop_assert!(name.as_str().len() <= 63);
            prop_assert!(name.as_str().starts_with(NAME_PREFIX));
        }

        #[test]
        fn any_tag_gives_a_valid_session_name(tag in "tag:[a-zA-Z][a-zA-Z0-9-]{0,127}", bits in any::<u64>()) {
            let id = identity("tagged-devices", &[tag.as_str()]);
            let name = session_name(&id, &NameSuffix::from_random(bits)).unwrap();
            prop_assert!(is_dns1123_label(name.as_str()), "{name}");
        }

        #[test]
        fn any_text_gives_a_valid_session_name(text in "\\PC{0,300}", suffix in "[a-z0-9]{1,16}") {
            let name = session_name_for(&text, &NameSuffix::new(suffix).unwrap()).unwrap();
            prop_assert!(is_dns1123_label(name.as_str()), "{name}");
        }

        #[test]
        fn binding_names_are_subdomains(role in "[a-z0-9]([a-z0-9.-]{0,200}[a-z0-9])?", bits in any::<u64>(), index in 0usize..1000) {
            let Ok(role) = RoleName::new(role) else { return Ok(()); };
            let session = session_name(&identity("alice@example.com", &[]), &NameSuffix::from_random(bits)).unwrap();
            let name = binding_name(&session, &role, &NameSuffix::from_random(bits ^ 1), index);
            prop_assert!(is_dns1123_subdomain(&name), "{name}");
            prop_assert!(name.starts_with(session.as_str()));
        }

        #[test]
        fn label_hash_is_label_safe(value in "\\PC{0,100}") {
            let h = label_hash(&value);
            prop_assert_eq!(h.len(), 16);
            prop_assert!(is_dns1123_label(&h));
        }
    }
}
