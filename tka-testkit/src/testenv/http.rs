//! A minimal HTTP/1.0 client for the plain-HTTP loopback endpoints of the test components
//! (etcd's `/health`, the tailnet harness's admin API). It must not be used for anything else.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{TestEnvError, io_err};

/// One request; returns the status code and the body. The whole exchange is bounded by 60 s.
pub(crate) async fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String), TestEnvError> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(io_err(format!("connecting to {addr}")))?;
        let body = body.unwrap_or("");
        let head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(io_err(format!("writing to {addr}")))?;
        stream
            .write_all(body.as_bytes())
            .await
            .map_err(io_err(format!("writing to {addr}")))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(io_err(format!("reading from {addr}")))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| TestEnvError::Harness(format!("no HTTP status from {addr}: {head}")))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(60), exchange)
        .await
        .map_err(|_| TestEnvError::Harness(format!("{method} {path} on {addr} took over 60 s")))?
}
