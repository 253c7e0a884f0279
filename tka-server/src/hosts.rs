//! [`AllowedHosts`]: the `Host` values the server answers to (its own names and addresses), a
//! plain value built once from the settings. It only answers "is this Host ours?"; refusing a
//! request is [`crate::guard`]'s business, and it must not depend on any other module of the crate.

use std::collections::BTreeSet;
use std::net::IpAddr;

/// The `Host` values the API answers to: the server's own names (lowercase, without a trailing
/// dot) and addresses. Ports are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedHosts {
    names: BTreeSet<String>,
    addresses: BTreeSet<IpAddr>,
}

impl AllowedHosts {
    /// Hosts from names and addresses. Names are compared case-insensitively.
    pub fn new(
        names: impl IntoIterator<Item = String>,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Self {
        Self {
            names: names
                .into_iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
            addresses: addresses.into_iter().map(|a| a.to_canonical()).collect(),
        }
    }

    /// Whether a `Host` header value (`name`, `name:port`, `1.2.3.4:80`, `[fd7a::1]:80`) names
    /// this server.
    pub fn allows(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return false;
        };
        if authority.as_str().contains('@') {
            return false;
        }
        let name = authority.host();
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.addresses.contains(&ip.to_canonical());
        }
        self.names
            .contains(&name.trim_end_matches('.').to_ascii_lowercase())
    }
}

/// The hosts of a server named `tka-prod` at 100.64.0.5 and fd7a:115c:a1e0::5, for unit tests.
#[cfg(test)]
pub(crate) fn example_hosts() -> AllowedHosts {
    AllowedHosts::new(
        ["tka-prod".to_owned(), "TKA-prod.example.ts.net.".to_owned()],
        [
            "100.64.0.5".parse().unwrap(),
            "fd7a:115c:a1e0::5".parse().unwrap(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> AllowedHosts {
        example_hosts()
    }

    #[test]
    fn own_names_and_addresses_are_allowed_with_or_without_port() {
        let h = hosts();
        for ok in [
            "tka-prod",
            "tka-prod:80",
            "TKA-PROD",
            "tka-prod.example.ts.net",
            "tka-prod.example.ts.net.",
            "100.64.0.5",
            "100.64.0.5:80",
            "[fd7a:115c:a1e0::5]:80",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for refused in [
            "",
            "evil.example.com",
            "tka-prod.evil.com",
            "100.64.0.6",
            "127.0.0.1",
            "user@tka-prod",
            "tka-prod/x",
        ] {
            assert!(!h.allows(refused), "{refused}");
        }
    }
}
