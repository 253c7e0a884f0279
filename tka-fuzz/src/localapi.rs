//! The real LocalAPI client (`tka_core::identity::localapi::TailscaleLocalApi`) reading whatever
//! a process listening on tailscaled's socket answers: the HTTP exchange, status codes, the
//! answer's size cap and error texts, in front of the wire parsers of the `whois` target.
//!
//! Input: the raw bytes of the answer (status line, headers, body), served for every request by
//! a fake daemon on a Unix socket in a fresh directory under the temporary directory. Properties:
//! - a whois succeeds only on a `200` answer, and then its identity is what the wire parser
//!   makes of the answer's body; a `404` is "not in the tailnet";
//! - a status succeeds only on a `200`;
//! - every other answer is an error that prints, within the client's deadline.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tka_core::identity::{TailnetStatus as _, wire};
use tka_core::{
    CapabilityNames, IdentityError, IdentityProvider as _, TailscaleLocalApi, WhoisRequest,
};

struct Fake {
    dir: PathBuf,
    client: TailscaleLocalApi,
    answer: Arc<Mutex<Vec<u8>>>,
    runtime: tokio::runtime::Runtime,
    /// One input at a time: the answer is shared by every connection.
    turn: Mutex<()>,
}

fn fake() -> &'static Fake {
    static FAKE: OnceLock<Fake> = OnceLock::new();
    FAKE.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tka-fuzz-localapi-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("tailscaled.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let answer = Arc::new(Mutex::new(Vec::new()));
        let served = Arc::clone(&answer);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                // The request head, then the answer, then the end of the connection.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = served.lock().unwrap().clone();
                let _ = conn.write_all(&answer);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        let client = TailscaleLocalApi::new(socket)
            .with_capabilities(names())
            .with_timeout(Duration::from_secs(2))
            .without_cli_fallback();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Fake {
            dir,
            client,
            answer,
            runtime,
            turn: Mutex::new(()),
        }
    })
}

fn names() -> CapabilityNames {
    CapabilityNames {
        primary: "tka.dev/cap/kubernetes".to_owned(),
        compat: Some("specht-labs.de/cap/tka".to_owned()),
    }
}

/// Removes the fake daemon's directory (its socket); later calls of [`target`] fail.
pub fn remove_socket() {
    let _ = std::fs::remove_dir_all(&fake().dir);
}

/// The status code of an answer hyper would read: `HTTP/1.x NNN`, after any empty lines
/// (which hyper skips, as RFC 9112 allows).
fn status_code(answer: &[u8]) -> Option<u16> {
    let start = answer.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let answer = &answer[start..];
    let rest = answer
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| answer.strip_prefix(b"HTTP/1.0 "))?;
    std::str::from_utf8(rest.get(..3)?).ok()?.parse().ok()
}

/// The body of an answer framed by one `Content-Length` or by the end of the connection;
/// `None` for other framings (chunked, several lengths), which this does not follow.
fn plain_body(answer: &[u8]) -> Option<&[u8]> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(start) = response.parse(answer).ok()? else {
        return None;
    };
    let rest = &answer[start..];
    let mut length = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return None;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return None;
            }
            length = Some(
                std::str::from_utf8(header.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()?,
            );
        }
    }
    match length {
        Some(n) => rest.get(..n),
        None => Some(rest),
    }
}

/// The target.
pub fn target(data: &[u8]) {
    let fake = fake();
    let _turn = fake.turn.lock().unwrap_or_else(|e| e.into_inner());
    data.clone_into(&mut fake.answer.lock().unwrap());
    let peer: SocketAddr = "100.64.0.7:41641".parse().unwrap();
    let status = status_code(data);

    match fake
        .runtime
        .block_on(fake.client.lookup(&WhoisRequest::connection(peer)))
    {
        Ok(identity) => {
            assert_eq!(status, Some(200), "a whois succeeded on a non-200 answer");
            if let Some(body) = plain_body(data) {
                assert_eq!(
                    wire::parse_whois(body, &names()).ok().as_ref(),
                    Some(&identity),
                    "the identity is not the answer's body"
                );
            }
        }
        Err(IdentityError::NotInTailnet(_)) => assert_eq!(status, Some(404)),
        Err(e) => {
            let _ = e.to_string();
        }
    }
    match fake.runtime.block_on(fake.client.status()) {
        Ok(_) => assert_eq!(status, Some(200), "a status succeeded on a non-200 answer"),
        Err(e) => {
            let _ = e.to_string();
        }
    }
}
