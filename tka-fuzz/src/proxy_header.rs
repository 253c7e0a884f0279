//! The PROXY protocol v2 header in front of every connection of the login API in HA mode
//! (`tka_server::listener::read_proxy_header`): its source address is whom whois is asked
//! about, so a wrong reading is a wrong identity.
//!
//! Input: the bytes a connection sends. Properties:
//! - an accepted header starts with the v2 signature, says PROXY over a stream, is read to its
//!   declared end and no further, and its source is the address and port the header's own
//!   bytes hold; a service name starts with `svc:`;
//! - the same source written with `ppp`'s builder reads back the same;
//! - a header that is all there but refused is refused for what it says, not for running out
//!   of bytes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ppp::v2;
use tka_server::listener::{ProxyHeaderError, read_proxy_header};

/// The largest header the server reads (its `MAX_PROXY_HEADER`).
const MAX_HEADER: usize = 16 + 1024;

/// The target.
pub fn target(data: &[u8]) {
    let mut reader = data;
    let read = futures::executor::block_on(read_proxy_header(&mut reader));
    let consumed = data.len() - reader.len();
    let declared =
        (data.len() >= 16).then(|| 16 + usize::from(u16::from_be_bytes([data[14], data[15]])));
    match read {
        Ok((source, svc_name)) => {
            assert!(data.starts_with(v2::PROTOCOL_PREFIX));
            assert_eq!(Some(consumed), declared, "read past or short of the header");
            assert!(consumed <= MAX_HEADER);
            assert_eq!(data[12], 0x21, "accepted a header that is not v2 PROXY");
            assert_eq!(
                Some(source),
                source_in(data),
                "the source is not the header's"
            );
            if let Some(svc) = &svc_name {
                assert!(svc.starts_with("svc:"));
            }
            rebuilt(source);
        }
        Err(ProxyHeaderError::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            if data.starts_with(v2::PROTOCOL_PREFIX) {
                let declared = declared.unwrap_or(usize::MAX);
                assert!(
                    data.len() < declared,
                    "a complete header of {declared} bytes was refused for lack of bytes"
                );
            }
        }
        Err(e) => {
            let _ = e.to_string();
            assert!(consumed <= MAX_HEADER);
        }
    }
}

/// The source address in a v2 header's own bytes (TCP over IPv4 or IPv6).
fn source_in(data: &[u8]) -> Option<SocketAddr> {
    match data[13] {
        0x11 => {
            let ip: [u8; 4] = data.get(16..20)?.try_into().ok()?;
            let port = u16::from_be_bytes(data.get(24..26)?.try_into().ok()?);
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        0x21 => {
            let ip: [u8; 16] = data.get(16..32)?.try_into().ok()?;
            let port = u16::from_be_bytes(data.get(48..50)?.try_into().ok()?);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

fn rebuilt(source: SocketAddr) {
    let addresses = match source {
        SocketAddr::V4(s) => {
            v2::Addresses::IPv4(v2::IPv4::new(*s.ip(), Ipv4Addr::LOCALHOST, s.port(), 443))
        }
        SocketAddr::V6(s) => {
            v2::Addresses::IPv6(v2::IPv6::new(*s.ip(), Ipv6Addr::LOCALHOST, s.port(), 443))
        }
    };
    let header = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        addresses,
    )
    .write_tlv(0x02, b"svc:fuzz")
    .unwrap()
    .build()
    .unwrap();
    let mut reader = header.as_slice();
    let read = futures::executor::block_on(read_proxy_header(&mut reader)).unwrap();
    assert_eq!(read, (source, Some("svc:fuzz".to_owned())));
    assert!(reader.is_empty());
}
