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

/// `GET /v1/services`: the datapath's service map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceList {
    /// Every ClusterIP frontend with its backends (none without a datapath).
    pub services: Vec<ServiceSpec>,
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

/// The blocking twin of [`call_json`] for `sextant-cni`: plain std I/O over
/// the unix socket (HTTP/1.1, one request, `Connection: close`), so a plugin
/// run starts no async runtime on its path.
pub fn call_json_blocking<T: DeserializeOwned>(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&impl Serialize>,
    deadline: Duration,
) -> Result<T> {
    let body = body
        .map(serde_json::to_vec)
        .transpose()
        .map_err(|e| Error::BadRequest(format!("encoding request: {e}")))?
        .unwrap_or_default();
    let fail = |reason: String| Error::Api {
        path: path.to_string(),
        reason,
    };
    let (status, bytes) = call_blocking(socket, method, path, &body, deadline).map_err(fail)?;
    if !(200..300).contains(&status) {
        let msg = serde_json::from_slice::<ApiError>(&bytes)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        return Err(fail(format!("HTTP {status}: {msg}")));
    }
    serde_json::from_slice(&bytes).map_err(|e| fail(format!("decoding answer: {e}")))
}

fn call_blocking(
    socket: &Path,
    method: &str,
    path: &str,
    body: &[u8],
    deadline: Duration,
) -> std::result::Result<(u16, Vec<u8>), String> {
    use std::io::{Read, Write};
    let until = std::time::Instant::now() + deadline;
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connecting to {}: {e}", socket.display()))?;
    let timed_out = |e: &std::io::Error| {
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: sextant-agent\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let left = || {
        until
            .saturating_duration_since(std::time::Instant::now())
            .max(Duration::from_millis(1))
    };
    stream
        .set_write_timeout(Some(left()))
        .and_then(|()| stream.write_all(head.as_bytes()))
        .and_then(|()| stream.write_all(body))
        .map_err(|e| {
            if timed_out(&e) {
                format!("no answer within {deadline:?}")
            } else {
                format!("sending: {e}")
            }
        })?;
    let mut raw = Vec::with_capacity(1024);
    let mut buf = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(left()))
            .map_err(|e| format!("reading: {e}"))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if timed_out(&e) => return Err(format!("no answer within {deadline:?}")),
            Err(e) => return Err(format!("reading: {e}")),
        }
    }
    parse_response(&raw)
}

/// Splits an HTTP/1.1 response into status and body (`content-length`,
/// chunked, or read to close).
fn parse_response(raw: &[u8]) -> std::result::Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| "reading: answer ended inside its headers".to_string())?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "reading: headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("reading: bad status line {:?}", head.lines().next()))?;
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(
                v.parse::<usize>()
                    .map_err(|_| format!("reading: bad content-length {v:?}"))?,
            );
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    if chunked {
        return dechunk(rest).map(|b| (status, b));
    }
    match length {
        Some(n) if rest.len() < n => Err(format!(
            "reading: answer cut short ({} of {n} bytes)",
            rest.len()
        )),
        Some(n) => Ok((status, rest[..n].to_vec())),
        None => Ok((status, rest.to_vec())),
    }
}

fn dechunk(mut rest: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("reading: chunk size line cut short")?;
        let size_text = std::str::from_utf8(&rest[..eol]).map_err(|_| "reading: bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("reading: bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            return Err("reading: chunk cut short".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

#[cfg(test)]
mod blocking_tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_close_delimited_answers() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("length");
        assert_eq!(r, (200, b"{}".to_vec()));
        let r = parse_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!(r, (503, b"abcde".to_vec()));
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\nxyz").expect("close");
        assert_eq!(r, (200, b"xyz".to_vec()));
    }

    #[test]
    fn rejects_broken_answers_with_a_reason() {
        for (raw, want) in [
            (&b"HTTP/1.1 200 OK\r\ncontent-le"[..], "inside its headers"),
            (b"garbage\r\n\r\n", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}",
                "cut short",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n9\r\nab",
                "chunk cut short",
            ),
        ] {
            let e = parse_response(raw).expect_err("broken");
            assert!(e.contains(want), "{e} should mention {want}");
        }
    }

    #[test]
    fn a_missing_agent_is_a_connecting_error_and_a_silent_one_times_out() {
        let dir = tempfile::tempdir().expect("dir");
        let sock = dir.path().join("agent.sock");
        let e = call_json_blocking::<serde_json::Value>(
            &sock,
            "GET",
            "/v1/healthz",
            None::<&()>,
            Duration::from_secs(1),
        )
        .expect_err("no agent");
        assert!(
            matches!(&e, Error::Api { reason, .. } if reason.starts_with("connecting")),
            "{e}"
        );
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let e = call_json_blocking::<serde_json::Value>(
            &sock,
            "GET",
            "/v1/healthz",
            None::<&()>,
            Duration::from_millis(200),
        )
        .expect_err("silent agent");
        assert!(
            matches!(&e, Error::Api { reason, .. } if reason.starts_with("no answer")),
            "{e}"
        );
    }
}
