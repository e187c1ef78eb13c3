//! The async client: HTTP/1.1 over the agent's unix socket, one connection
//! per call, every call under a deadline.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use tokio::net::UnixStream;
use tracing::debug;

use crate::{ApiError, Error, HEALTHZ_PATH, Health, Result};

/// Largest body [`Client`] accepts from the agent.
pub const MAX_BODY: usize = 1 << 20;

/// Sends one request to the agent at `socket` and returns status and body,
/// giving up after `deadline`. Bodies of any size are read.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    deadline: Duration,
) -> Result<(u16, Bytes)> {
    exchange(socket, method, path, body, deadline, usize::MAX).await
}

/// [`call`] for JSON in and out; a non-2xx answer becomes
/// [`Error::Status`] carrying the agent's message.
pub async fn call_json<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
    deadline: Duration,
) -> Result<T> {
    let body = encode(path, body)?;
    let (status, bytes) = call(socket, method, path, body, deadline).await?;
    decode(path, status, &bytes)
}

/// Talks to the agent at one socket with one deadline and a body limit
/// (what a long-running poller such as the device plugin wants).
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client whose every call ends within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Client {
            socket: socket.into(),
            timeout,
        }
    }

    /// `GET /v1/healthz`.
    pub async fn healthz(&self) -> Result<Health> {
        let (status, bytes) = exchange(
            &self.socket,
            Method::GET,
            HEALTHZ_PATH,
            None,
            self.timeout,
            MAX_BODY,
        )
        .await?;
        decode(HEALTHZ_PATH, status, &bytes)
    }
}

pub(crate) fn encode(path: &str, body: Option<&impl Serialize>) -> Result<Option<Vec<u8>>> {
    body.map(serde_json::to_vec)
        .transpose()
        .map_err(|source| Error::Encode {
            path: path.to_string(),
            source,
        })
}

/// A 2xx body as `T`; any other status as [`Error::Status`] with the
/// agent's `ApiError` message (else the start of the body).
pub(crate) fn decode<T: DeserializeOwned>(path: &str, status: u16, bytes: &[u8]) -> Result<T> {
    if !(200..300).contains(&status) {
        let message = serde_json::from_slice::<ApiError>(bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| {
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
            });
        return Err(Error::Status {
            path: path.to_string(),
            status,
            message,
        });
    }
    serde_json::from_slice(bytes).map_err(|source| Error::Body {
        path: path.to_string(),
        source,
    })
}

async fn exchange(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    deadline: Duration,
    limit: usize,
) -> Result<(u16, Bytes)> {
    match tokio::time::timeout(deadline, exchange_inner(socket, method, path, body, limit)).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            path: path.to_string(),
            timeout: deadline,
        }),
    }
}

async fn exchange_inner(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    limit: usize,
) -> Result<(u16, Bytes)> {
    let http_err = |source| Error::Http {
        socket: socket.to_path_buf(),
        source,
    };
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|source| Error::Connect {
            socket: socket.to_path_buf(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_err)?;
    let conn = tokio::spawn(async move {
        if let Err(e) = conn.await {
            debug!(error = %e, "agent connection ended with an error");
        }
    });
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "sextant-agent")
        .header(header::ACCEPT, "application/json")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())));
    let req = match req {
        Ok(r) => r,
        Err(source) => {
            conn.abort();
            return Err(Error::Request {
                path: path.to_string(),
                source,
            });
        }
    };
    let result = async {
        let resp = sender.send_request(req).await.map_err(http_err)?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(source) => http_err(*source),
                Err(_) => Error::BodyTooLarge {
                    path: path.to_string(),
                    limit,
                },
            })?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    conn.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_carries_the_agents_message_and_garbage_is_a_body_error() {
        let e = decode::<serde_json::Value>(
            "/v1/cni/add",
            409,
            br#"{"code":"pool_exhausted","message":"no free IP"}"#,
        )
        .expect_err("409");
        assert!(
            matches!(&e, Error::Status { status: 409, message, .. } if message == "no free IP"),
            "{e}"
        );
        let e = decode::<serde_json::Value>("/v1/healthz", 200, b"not json").expect_err("garbage");
        assert_eq!(e.metric_label(), "agent_body");
    }

    #[tokio::test]
    async fn a_missing_agent_is_a_connect_error() {
        let dir = tempfile::tempdir().expect("dir");
        let e = Client::new(dir.path().join("agent.sock"), Duration::from_secs(1))
            .healthz()
            .await
            .expect_err("no agent");
        assert!(matches!(e, Error::Connect { .. }), "{e}");
        assert!(e.is_unreachable());
    }
}
