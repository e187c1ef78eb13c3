//! Client of the node agent's API (docs/agent-api.md): HTTP/1.1 over the
//! agent's unix socket, one connection per call, every call under a deadline.

use std::{path::PathBuf, time::Duration};

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::UnixStream;
use tracing::debug;

use crate::{Error, Result};

/// Largest body accepted from the agent.
const MAX_BODY: usize = 1 << 20;
/// Path of the health endpoint.
pub const HEALTHZ_PATH: &str = "/v1/healthz";

/// The agent's `state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Serving with final counts.
    Ready,
    /// Reading its checkpoint: counts are not final.
    Restoring,
    /// Serving with reduced function; counts are still the truth.
    Degraded,
    /// A state this build does not know (or none): counts taken as given.
    #[default]
    #[serde(other)]
    Unknown,
}

/// The `ipam` object of `GET /v1/healthz`. Missing numbers read as 0.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct IpamHealth {
    /// `IPv4: <allocated>/<pool> allocated`.
    pub status: String,
    /// Pod IPs handed out and not yet freed.
    pub allocated: u64,
    /// IPs attached to this node for pods.
    pub pool: u64,
    /// IPs ready for the next CNI ADD.
    pub free: u64,
    /// Freed IPs waiting out the reuse cooldown.
    pub cooldown: u64,
    /// Pod IPs this node can ever hold.
    pub capacity: u64,
    /// Of `capacity`, how many the agent cannot provide now.
    pub unavailable: u64,
}

/// The body of `GET /v1/healthz`; unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Healthz {
    /// Agent state.
    pub state: AgentState,
    /// IPAM counts.
    pub ipam: IpamHealth,
}

impl Healthz {
    /// Parses the JSON body.
    pub fn from_json(body: &[u8]) -> Result<Self> {
        serde_json::from_slice(body).map_err(|source| Error::AgentBody {
            path: HEALTHZ_PATH,
            source,
        })
    }

    /// Whether counts are not final yet.
    pub fn is_restoring(&self) -> bool {
        self.state == AgentState::Restoring
    }
}

/// Talks to the agent at `socket`.
#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    /// A client whose every call ends within `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        AgentClient {
            socket: socket.into(),
            timeout,
        }
    }

    /// `GET /v1/healthz`.
    pub async fn healthz(&self) -> Result<Healthz> {
        let body = self.get(HEALTHZ_PATH).await?;
        Healthz::from_json(&body)
    }

    async fn get(&self, path: &'static str) -> Result<Bytes> {
        match tokio::time::timeout(self.timeout, self.get_inner(path)).await {
            Ok(r) => r,
            Err(_) => Err(Error::AgentTimeout {
                path,
                timeout: self.timeout,
            }),
        }
    }

    async fn get_inner(&self, path: &'static str) -> Result<Bytes> {
        let http_err = |source| Error::AgentHttp {
            socket: self.socket.clone(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| Error::AgentConnect {
                    socket: self.socket.clone(),
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
        let req = Request::get(path)
            .header(header::HOST, "sextant-agent")
            .header(header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new());
        let req = match req {
            Ok(r) => r,
            Err(source) => {
                conn.abort();
                return Err(Error::AgentRequest { path, source });
            }
        };
        let result = async {
            let resp = sender.send_request(req).await.map_err(http_err)?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| match e.downcast::<hyper::Error>() {
                    Ok(source) => http_err(*source),
                    Err(_) => Error::AgentBodyTooLarge {
                        path,
                        limit: MAX_BODY,
                    },
                })?
                .to_bytes();
            if status != StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(Error::AgentStatus {
                    path,
                    status: status.as_u16(),
                    body: text,
                });
            }
            Ok(body)
        }
        .await;
        conn.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let body = br#"{
          "state": "ready",
          "ipam": { "status": "IPv4: 2/10 allocated", "allocated": 2, "pool": 10,
                    "free": 7, "cooldown": 1, "capacity": 234, "unavailable": 0 },
          "datapath": { "loaded": true, "pinned": "/sys/fs/bpf/sextant", "endpoints": 2, "services": 0 }
        }"#;
        let h = Healthz::from_json(body).expect("documented example parses");
        assert_eq!(h.state, AgentState::Ready);
        assert_eq!(h.ipam.capacity, 234);
        assert_eq!(h.ipam.allocated, 2);
    }

    #[test]
    fn missing_numbers_read_as_zero_and_unknown_state_is_kept_apart() {
        let h = Healthz::from_json(br#"{"state":"warming","ipam":{"capacity":3},"x":1}"#)
            .expect("parses");
        assert_eq!(h.state, AgentState::Unknown);
        assert_eq!(h.ipam.unavailable, 0);
        assert_eq!(h.ipam.capacity, 3);
    }

    #[test]
    fn garbage_is_a_typed_error() {
        let e = Healthz::from_json(b"not json").expect_err("garbage fails");
        assert_eq!(e.metric_label(), "agent_body");
    }
}
