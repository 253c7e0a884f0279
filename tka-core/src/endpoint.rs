//! Where a client reaches things: the URL of a tka server or of a Kubernetes API server
//! ([`ServerUrl`]), and an explicit SOCKS5 proxy ([`Socks5Addr`]) for clients whose tailscaled runs
//! in userspace-networking mode. Validation only; no I/O, no name resolution.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value that cannot be used as a server URL or proxy address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// Not an `http://` or `https://` URL with a host.
    #[error(
        "invalid server URL {input:?}: {reason}; write it like http://tka-prod or https://tka-prod.example.ts.net"
    )]
    Url {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Not `HOST:PORT`.
    #[error("invalid SOCKS5 proxy {input:?}: {reason}; write it like localhost:1055")]
    Socks5 {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// An `http://` or `https://` URL of a server: a scheme, a host (a name, an IPv4 address or a
/// bracketed IPv6 address), an optional port and an optional path, without credentials, query or
/// fragment. The scheme and host are lowercased and a trailing `/` is dropped, so one server has
/// one spelling (it is part of cache keys).
///
/// ```
/// use tka_core::endpoint::ServerUrl;
/// let url = ServerUrl::parse("HTTP://tka-Prod:8080/").unwrap();
/// assert_eq!(url.as_str(), "http://tka-prod:8080");
/// assert_eq!(url.join("/api/v1/login"), "http://tka-prod:8080/api/v1/login");
/// assert!(ServerUrl::parse("ftp://tka-prod").is_err());
/// assert!(ServerUrl::parse("http://user:pw@tka-prod").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Validates and normalizes a URL.
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        let err = |reason| EndpointError::Url {
            input: input.to_owned(),
            reason,
        };
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains spaces or control characters"));
        }
        let (scheme, rest) = input
            .split_once("://")
            .ok_or_else(|| err("it has no scheme"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(err("the scheme must be http or https"));
        }
        if rest.contains(['?', '#']) {
            return Err(err("it must not have a query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(err("it must not carry credentials"));
        }
        let host = validate_host_port(authority, true).map_err(err)?;
        let authority = authority.replacen(host, &host.to_ascii_lowercase(), 1);
        let path = path.trim_end_matches('/');
        Ok(Self(format!("{scheme}://{authority}{path}")))
    }

    /// The URL as a string, without a trailing `/`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL of `path` (which starts with `/`) on this server.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0)
    }
}

impl TryFrom<String> for ServerUrl {
    type Error = EndpointError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl std::str::FromStr for ServerUrl {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<ServerUrl> for String {
    fn from(value: ServerUrl) -> Self {
        value.0
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A SOCKS5 proxy, `HOST:PORT`, as tailscaled's `--socks5-server` offers one. Accepts an optional
/// `socks5://` or `socks5h://` prefix. Names are resolved by the proxy, so tailnet names work
/// without MagicDNS on the client.
///
/// ```
/// use tka_core::endpoint::Socks5Addr;
/// let proxy = Socks5Addr::parse("localhost:1055").unwrap();
/// assert_eq!(proxy.as_str(), "localhost:1055");
/// assert_eq!(proxy.kubeconfig_proxy_url(), "socks5://localhost:1055");
/// assert!(Socks5Addr::parse("localhost").is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Socks5Addr(String);

impl Socks5Addr {
    /// Validates `HOST:PORT` (with an optional `socks5://` or `socks5h://` prefix).
    pub fn parse(input: &str) -> Result<Self, EndpointError> {
        let err = |reason| EndpointError::Socks5 {
            input: input.to_owned(),
            reason,
        };
        if input.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(err("it contains spaces or control characters"));
        }
        let lower = input.to_ascii_lowercase();
        let rest = lower
            .strip_prefix("socks5h://")
            .or_else(|| lower.strip_prefix("socks5://"))
            .unwrap_or(&lower);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '@', '?', '#']) {
            return Err(err("it must be HOST:PORT, without path or credentials"));
        }
        validate_host_port(rest, false).map_err(err)?;
        Ok(Self(rest.to_owned()))
    }

    /// `HOST:PORT`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `proxy-url` of a kubeconfig cluster entry: `socks5://HOST:PORT`.
    pub fn kubeconfig_proxy_url(&self) -> String {
        format!("socks5://{}", self.0)
    }

    /// The proxy URL for an HTTP client that should let the proxy resolve names:
    /// `socks5h://HOST:PORT`.
    pub fn client_proxy_url(&self) -> String {
        format!("socks5h://{}", self.0)
    }
}

impl TryFrom<String> for Socks5Addr {
    type Error = EndpointError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl std::str::FromStr for Socks5Addr {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl From<Socks5Addr> for String {
    fn from(value: Socks5Addr) -> Self {
        value.0
    }
}

impl fmt::Display for Socks5Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Socks5Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Checks `host[:port]` (`port_optional`) or `host:port`; returns the host part.
fn validate_host_port(authority: &str, port_optional: bool) -> Result<&str, &'static str> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("an IPv6 address must be closed with ]")?;
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("the IPv6 address is not valid");
        }
        let host = &authority[..inside.len() + 2];
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or("unexpected text after the host")?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("it has no host");
    }
    if !host.starts_with('[') {
        let valid = host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !valid || host.len() > 253 {
            return Err("the host is not a valid name or address");
        }
    }
    match port {
        Some(p) => {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.parse::<u16>().is_err() {
                return Err("the port must be a number from 1 to 65535");
            }
            if p.parse::<u16>() == Ok(0) {
                return Err("the port must be a number from 1 to 65535");
            }
        }
        None if !port_optional => return Err("it needs a port (HOST:PORT)"),
        None => {}
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalized() {
        let ok = [
            ("http://tka-prod", "http://tka-prod"),
            (
                "https://tka-prod.tail1234.ts.net/",
                "https://tka-prod.tail1234.ts.net",
            ),
            (
                "HTTPS://Tka.Example:8443/base/",
                "https://tka.example:8443/base",
            ),
            ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            ("http://[fd7a:115c:a1e0::1]", "http://[fd7a:115c:a1e0::1]"),
        ];
        for (input, want) in ok {
            assert_eq!(
                ServerUrl::parse(input).map(String::from).as_deref(),
                Ok(want),
                "{input}"
            );
        }
    }

    #[test]
    fn server_urls_refuse_what_is_not_a_plain_http_url() {
        for bad in [
            "tka-prod",
            "ftp://tka-prod",
            "file:///etc/passwd",
            "http://",
            "http://user:pw@tka-prod",
            "http://tka-prod?x=1",
            "http://tka-prod#frag",
            "http://tka prod",
            "http://tka-prod:0",
            "http://tka-prod:99999",
            "http://tka-prod:",
            "http://[::1",
            "http://[zz::1]",
            "http://tka..prod",
            "http://tka-prod\n",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn socks5_addresses() {
        for (input, want) in [
            ("localhost:1055", "localhost:1055"),
            ("socks5://127.0.0.1:1055", "127.0.0.1:1055"),
            ("socks5h://LocalHost:1055/", "localhost:1055"),
            ("[::1]:1080", "[::1]:1080"),
        ] {
            assert_eq!(
                Socks5Addr::parse(input).map(String::from).as_deref(),
                Ok(want),
                "{input}"
            );
        }
        for bad in [
            "localhost",
            "localhost:",
            "localhost:x",
            "http://localhost:1055",
            "user@localhost:1055",
            ":1055",
        ] {
            assert!(Socks5Addr::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
