//! Domain types that carry meaning rather than strings: who a caller is ([`Identity`], keyed by
//! the node's stable ID), and the names and bounds the policy deals in. Constructors validate, so
//! a value of one of these types is always well-formed. No I/O here.

use std::fmt;
use std::net::IpAddr;

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use crate::duration;

/// A value that is not well-formed for its type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DomainError {
    /// A node stable ID must be non-empty printable ASCII.
    #[error("invalid node ID {0:?}")]
    NodeId(String),
    /// A login name must be non-empty and without control characters.
    #[error("invalid login name {0:?}")]
    LoginName(String),
    /// Tags look like `tag:name`.
    #[error("invalid tag {0:?}; tags look like tag:name (letters, digits and dashes)")]
    Tag(String),
    /// Role names are GrantMapping names: DNS-1123 subdomains.
    #[error(
        "invalid role name {0:?}; a role is the name of a GrantMapping: lowercase letters, digits, '-' and '.', at most 253 characters"
    )]
    RoleName(String),
    /// Cluster names are DNS-1123 labels.
    #[error(
        "invalid cluster name {0:?}; use lowercase letters, digits and '-', at most 63 characters, starting and ending with a letter or digit"
    )]
    ClusterName(String),
    /// Session names are DNS-1123 labels made by tka.
    #[error("invalid session name {0:?}")]
    SessionName(String),
    /// A TTL that cannot be used.
    #[error("invalid TTL {input:?}: {reason}")]
    Ttl {
        /// What was given.
        input: String,
        /// Why it cannot be used.
        reason: String,
    },
}

macro_rules! string_newtype {
    ($(#[$meta:meta])* $name:ident, $check:expr, $err:ident) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps the value.
            pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
                let value = value.into();
                let check: fn(&str) -> bool = $check;
                if check(&value) {
                    Ok(Self(value))
                } else {
                    Err(DomainError::$err(value))
                }
            }

            /// The value as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $name {
            type Err = DomainError;
            fn from_str(value: &str) -> Result<Self, Self::Err> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

fn is_printable_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 256 && s.bytes().all(|b| b.is_ascii_graphic())
}

fn is_login_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 512 && !s.chars().any(char::is_control)
}

fn is_tag(s: &str) -> bool {
    s.strip_prefix("tag:").is_some_and(|name| {
        !name.is_empty()
            && name.len() <= 128
            && name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    })
}

/// Whether `s` is a DNS-1123 label: what Kubernetes requires of most object names.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

string_newtype!(
    /// A node's stable ID (`StableID` in whois, e.g. `nBvQmCNTRL`): **the key of an identity**.
    /// Tagged devices all share one user profile, so sessions, rate limits and names are per node.
    NodeId,
    is_printable_token,
    NodeId
);
string_newtype!(
    /// A Tailscale login name (`alice@example.com`, or `tagged-devices` for tagged nodes).
    LoginName,
    is_login_name,
    LoginName
);
string_newtype!(
    /// An ACL tag such as `tag:ci`. A node with tags acts as its tags.
    Tag,
    is_tag,
    Tag
);
string_newtype!(
    /// A role: the name of a GrantMapping, which capability values refer to.
    RoleName,
    is_dns1123_subdomain,
    RoleName
);
string_newtype!(
    /// The name of a cluster, as capability `clusters` globs and the CLI refer to it.
    ClusterName,
    is_dns1123_label,
    ClusterName
);
string_newtype!(
    /// The name of a Session and of the objects it owns (`tka-<slug>-<suffix>`), never reused.
    SessionName,
    is_dns1123_label,
    SessionName
);

/// A Tailscale user ID (`UserProfile.ID`). On Tailscale's service every tagged device reports the
/// same one, so it never identifies a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(pub i64);

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A session lifetime: whole seconds, at least one second and at most [`Ttl::MAX`]. Larger
/// requests are not errors; they are clamped by policy, which reports it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(SignedDuration);

impl Ttl {
    /// The largest TTL representable (366 days); policy bounds are far below it.
    pub const MAX: Ttl = Ttl(SignedDuration::from_secs(366 * 24 * 3600));

    /// A TTL from a duration; it must be at least one second. Durations above [`Ttl::MAX`]
    /// saturate to it.
    pub fn from_duration(d: SignedDuration) -> Result<Self, DomainError> {
        if d.as_secs() < 1 {
            return Err(DomainError::Ttl {
                input: duration::format(d),
                reason: "a TTL must be positive (at least 1s)".into(),
            });
        }
        Ok(Self(
            SignedDuration::from_secs(d.as_secs()).min(Self::MAX.0),
        ))
    }

    /// Parses `90m`, `8h`, `1h30m`, … (see [`crate::duration`]).
    ///
    /// ```
    /// use tka_core::Ttl;
    /// assert_eq!(Ttl::parse("1h30m").unwrap().as_secs(), 5400);
    /// assert!(Ttl::parse("0s").is_err());
    /// assert!(Ttl::parse("-1h").is_err());
    /// assert!(Ttl::parse("abc").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let d = duration::parse(input).map_err(|e| DomainError::Ttl {
            input: input.to_owned(),
            reason: e.to_string(),
        })?;
        Self::from_duration(d).map_err(|_| DomainError::Ttl {
            input: input.to_owned(),
            reason: "a TTL must be positive (at least 1s)".into(),
        })
    }

    /// The TTL as a duration.
    pub fn as_duration(self) -> SignedDuration {
        self.0
    }

    /// The TTL in whole seconds.
    pub fn as_secs(self) -> i64 {
        self.0.as_secs()
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        duration::Display(self.0).fmt(f)
    }
}

impl fmt::Debug for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ttl({self})")
    }
}

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ttl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The human (or, for tagged devices, the shared `tagged-devices` profile) behind a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The user ID; recorded for audit and "revoke everything of alice", never a key.
    pub id: UserId,
    /// The login name.
    pub login_name: LoginName,
    /// The display name, for people.
    pub display_name: String,
}

/// The device that made the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node's stable ID: the key of the identity.
    pub stable_id: NodeId,
    /// The node's MagicDNS name, without the trailing dot.
    pub name: String,
    /// The node's tailnet addresses.
    pub addresses: Vec<IpAddr>,
    /// The node's ACL tags; a tagged node acts as its tags, never as the user who created it.
    pub tags: Vec<Tag>,
}

/// Who is calling, as tailscaled reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// The user profile.
    pub user: UserInfo,
    /// The device.
    pub node: NodeInfo,
    /// Groups, where the control plane reports them (may be empty).
    pub groups: Vec<String>,
    /// The values under the configured capability name, exactly as delivered, unparsed.
    pub capabilities: Vec<serde_json::Value>,
    /// The values under the compatibility capability name (the SpechtLabs/tka schema), when one
    /// is configured; empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compat_capabilities: Vec<serde_json::Value>,
}

impl Identity {
    /// The key of this identity: the node's stable ID.
    pub fn key(&self) -> &NodeId {
        &self.node.stable_id
    }

    /// Whether this is a tagged device (acting as its tags).
    pub fn is_tagged(&self) -> bool {
        !self.node.tags.is_empty()
    }

    /// Who the device acts as ([`acting_as`]): its tags, comma-separated, when tagged; else the
    /// login name.
    pub fn acting_as(&self) -> String {
        acting_as(&self.node.tags, self.user.login_name.as_str())
    }

    /// A short description for messages and audit: [`Identity::acting_as`], with the device name.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.acting_as(), self.node.name)
    }
}

/// Who a device acts as, from its tags and its user's login name: the tags, comma-separated, when
/// there are any (a tagged device acts as its tags, whoever registered it); else the login name.
/// The one rule behind [`Identity::acting_as`] and every record that names a caller.
///
/// ```
/// use tka_core::Tag;
/// use tka_core::domain::acting_as;
/// let tags = [Tag::new("tag:ci").unwrap(), Tag::new("tag:prod").unwrap()];
/// assert_eq!(acting_as(&tags, "tagged-devices"), "tag:ci,tag:prod");
/// assert_eq!(acting_as(&[], "alice@example.com"), "alice@example.com");
/// ```
pub fn acting_as(tags: &[Tag], login_name: &str) -> String {
    if tags.is_empty() {
        login_name.to_owned()
    } else {
        tags.iter().map(Tag::as_str).collect::<Vec<_>>().join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_names() {
        assert!(Tag::new("tag:ci").is_ok());
        assert!(Tag::new("ci").is_err());
        assert!(Tag::new("tag:").is_err());
        assert!(RoleName::new("sre").is_ok());
        assert!(RoleName::new("read.only").is_ok());
        assert!(RoleName::new("Admin").is_err());
        assert!(ClusterName::new("prod-eu").is_ok());
        assert!(ClusterName::new("prod_eu").is_err());
        assert!(ClusterName::new("-prod").is_err());
        assert!(NodeId::new("nBvQmCNTRL").is_ok());
        assert!(NodeId::new("").is_err());
    }

    #[test]
    fn ttl_bounds() {
        assert_eq!(Ttl::parse("90m").map(Ttl::as_secs), Ok(5400));
        assert!(Ttl::parse("0s").is_err());
        assert!(Ttl::parse("-1h").is_err());
        assert!(Ttl::parse("abc").is_err());
        assert_eq!(Ttl::parse("100000h"), Ok(Ttl::MAX));
        assert_eq!(
            Ttl::parse("1h30m").map(|t| t.to_string()).as_deref(),
            Ok("1h30m")
        );
    }

    #[test]
    fn names_deserialize_with_validation() {
        assert!(serde_json::from_str::<Tag>("\"tag:ok\"").is_ok());
        assert!(serde_json::from_str::<Tag>("\"nope\"").is_err());
    }
}
