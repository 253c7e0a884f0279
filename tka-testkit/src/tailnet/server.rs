//! The fake tailnet's LocalAPI server: HTTP/1.1 on a Unix socket in a temporary directory,
//! checking requests the way tailscaled does (403 for any `Host` but `local-tailscaled.sock` and
//! for any `Origin` or `Referer`) and recording each one, headers included, so tests can assert
//! on what a client sent. It only transports: every answer comes from [`FakeTailnet`].

use std::convert::Infallible;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tka_core::identity::TailscaleLocalApi;
use tka_core::identity::wire::{STATUS_PATH, WHOIS_PATH};
use tokio::net::UnixListener;
use tokio::task::{JoinHandle, JoinSet};

use super::state::{RecordedRequest, is_localapi_request};
use super::{FakeAnswer, FakeTailnet};

/// A running fake LocalAPI. Serves until dropped; the socket's directory goes with it.
#[derive(Debug)]
pub struct FakeLocalApi {
    socket: PathBuf,
    tailnet: FakeTailnet,
    task: JoinHandle<()>,
    // Dropped last: removes the socket file.
    _dir: TempDir,
}

impl FakeLocalApi {
    pub(super) async fn start(tailnet: FakeTailnet) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("tka-tailnet-").tempdir()?;
        let socket = dir.path().join("tailscaled.sock");
        let listener = UnixListener::bind(&socket)?;
        let task = tokio::spawn(accept_loop(listener, tailnet.clone()));
        Ok(Self {
            socket,
            tailnet,
            task,
            _dir: dir,
        })
    }

    /// The socket path, for `--tailscale-socket` or [`TailscaleLocalApi::new`].
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The real client, pointed at this socket, reading the tailnet's capability names, with no
    /// CLI fallback (so a test never runs a `tailscale` found on the machine).
    pub fn client(&self) -> TailscaleLocalApi {
        TailscaleLocalApi::new(&self.socket)
            .with_capabilities(self.tailnet.capability_names())
            .without_cli_fallback()
    }

    /// The tailnet this server answers for.
    pub fn tailnet(&self) -> &FakeTailnet {
        &self.tailnet
    }
}

impl Drop for FakeLocalApi {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every open connection.
        self.task.abort();
    }
}

async fn accept_loop(listener: UnixListener, tailnet: FakeTailnet) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::debug!(error = %e, "fake LocalAPI stops accepting");
                        return;
                    }
                };
                let tailnet = tailnet.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let tailnet = tailnet.clone();
                        async move { Ok::<_, Infallible>(handle(&tailnet, &request)) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                    {
                        tracing::debug!(error = %e, "fake LocalAPI connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Where tailscaled serves a node's TLS certificates (`<domain>?type=pair`).
const CERT_PATH: &str = "/localapi/v0/cert/";

fn handle(tailnet: &FakeTailnet, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let answer = if !is_localapi_request(request.headers()) {
        FakeAnswer::text(403, "invalid localapi request")
    } else {
        match request.uri().path() {
            WHOIS_PATH => tailnet.answer_whois(param("addr"), param("svc_name")),
            STATUS_PATH => tailnet.answer_status(),
            path if path.starts_with(CERT_PATH) && param("type") == Some("pair") => {
                tailnet.answer_cert_pair(&path[CERT_PATH.len()..])
            }
            "/" => FakeAnswer::text(200, "tailscaled"),
            _ => FakeAnswer::text(404, "404 page not found"),
        }
    };
    tailnet.record(RecordedRequest {
        method: request.method().clone(),
        path: request.uri().path().to_owned(),
        query: query.clone(),
        headers: request.headers().clone(),
        status: answer.status,
    });
    response(answer)
}

fn response(answer: FakeAnswer) -> Response<Full<Bytes>> {
    let content_type = if answer.status == 200 && answer.body.starts_with('{') {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("tailscale-version", HeaderValue::from_static("1.90.6-fake"));
    response
}
