//! Wire types of the agent API (docs/agent-api.md) and of the CNI endpoints
//! `sextant-cni` calls, plus a small HTTP/1.1-over-unix-socket client.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, body::Bytes};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    datapath::{Backend, Frontend},
    error::{Error, Result},
    pool::Allocation,
};

/// `GET /v1/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ready`, `restoring` or `degraded`.
    pub state: String,
    /// Pool counts.
    pub ipam: IpamHealth,
    /// Datapath state.
    pub datapath: DatapathHealth,
}

/// `ipam` of `GET /v1/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpamHealth {
    /// `IPv4: <allocated>/<pool> allocated`.
    pub status: String,
    /// Handed out.
    #[serde(default)]
    pub allocated: usize,
    /// allocated + free + cooldown.
    #[serde(default)]
    pub pool: usize,
    /// Ready for the next ADD.
    #[serde(default)]
    pub free: usize,
    /// In cooldown.
    #[serde(default)]
    pub cooldown: usize,
    /// Pod IPs this node can ever hold.
    #[serde(default)]
    pub capacity: usize,
    /// Of `capacity`, how many cannot be provided now.
    #[serde(default)]
    pub unavailable: usize,
}

/// `datapath` of `GET /v1/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DatapathHealth {
    /// Program loaded (or re-adopted) and maps open.
    pub loaded: bool,
    /// The bpffs root.
    pub pinned: String,
    /// Entries in the endpoint map.
    #[serde(default)]
    pub endpoints: usize,
    /// Entries in the service map.
    #[serde(default)]
    pub services: usize,
}

/// `GET /v1/ipam`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpamList {
    /// Every allocation.
    pub allocations: Vec<Allocation>,
}

/// Body of `POST /v1/cni/add`, `/v1/cni/del`, `/v1/cni/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` (may be empty on DEL).
    #[serde(default)]
    pub netns: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: String,
}

/// Answer to `POST /v1/cni/add` and `/v1/cni/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniReply {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Gateway the pod routes through.
    pub gateway: Ipv4Addr,
    /// Host veth name.
    pub host_ifname: String,
    /// Host veth MAC (`aa:bb:..`).
    pub host_mac: String,
    /// Pod interface MAC.
    pub pod_mac: String,
}

/// Error body of every failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Metric label of the error.
    pub code: String,
    /// Human message with its causes.
    pub message: String,
}

/// Body of `POST /v1/services`: sets one frontend's backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The frontend.
    pub frontend: Frontend,
    /// Its backends; empty removes the frontend.
    pub backends: Vec<Backend>,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Sends one request to the agent at `socket` and returns status and body,
/// giving up after `deadline`.
pub async fn call(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    deadline: Duration,
) -> Result<(u16, Bytes)> {
    let fail = |reason: String| Error::Api {
        path: path.to_string(),
        reason,
    };
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| fail(format!("connecting to {}: {e}", socket.display())))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| fail(format!("handshake: {e}")))?;
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "sextant-agent")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| fail(format!("building request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| fail(format!("sending: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| fail(format!("reading body: {e}")))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| fail(format!("no answer within {deadline:?}")))?
}

/// `call` for JSON in and out; a non-2xx answer becomes an error carrying
/// the agent's message.
pub async fn call_json<T: DeserializeOwned>(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl Serialize>,
    deadline: Duration,
) -> Result<T> {
    let body = body
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| Error::BadRequest(format!("encoding request: {e}")))?;
    let (status, bytes) = call(socket, method, path, body, deadline).await?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(Error::Api {
            path: path.to_string(),
            reason: format!("HTTP {status}: {msg}"),
        });
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::Api {
        path: path.to_string(),
        reason: format!("decoding answer: {e}"),
    })
}
