//! The agent API server: HTTP/1.1 on a unix socket (docs/agent-api.md).
//! Each body is parsed at this edge into its typed request (`request`)
//! before the agent sees it.
//!
//! Who may do what:
//!
//! - connecting: the socket is mode 0660, owned by root and the group
//!   [`Access::group`] names, so only root and that group's members reach it;
//! - mutating endpoints other than CNI (`PUT /v1/policy`, `POST
//!   /v1/services`): the peer's credentials (`SO_PEERCRED`, taken by the
//!   kernel at connect) must be uid 0 or on the allow-lists, else 403;
//! - CNI (`/v1/cni/*`, run as root by the container runtime) and reads:
//!   whoever can connect.
//!
//! Every body is bounded by its endpoint's limit ([`body_limit`]); a larger
//! one is refused with 413, by its `content-length` before it is read.

use std::{collections::BTreeSet, path::Path, sync::Arc};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::UnixListener;
use tracing::warn;

use sextant_agent_api::{ApiError, CniRequest, ServiceSpec};

use crate::{
    agent::Agent,
    error::{Error, Result},
    policy::PolicySnapshot,
    request::{self, CniAdd, CniCall},
};

/// Largest body of a CNI call: the request names a container, a netns
/// path, an interface and the pod (a few hundred bytes in practice).
pub const CNI_BODY_LIMIT: usize = 64 * 1024;
/// Largest `PUT /v1/policy` body: a whole policy snapshot (every policy and
/// every pod of a lab cluster; the kube watches are the production path).
pub const POLICY_BODY_LIMIT: usize = 32 * 1024 * 1024;
/// Largest `POST /v1/services` body: one frontend and its backends
/// (about 40 bytes each: 100,000 backends fit).
pub const SERVICE_BODY_LIMIT: usize = 4 * 1024 * 1024;
/// Largest body of any other request (reads carry none).
pub const OTHER_BODY_LIMIT: usize = 4 * 1024;

/// What an endpoint does, for the access check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    /// Reads state; open to whoever can connect.
    Read,
    /// CNI ADD/DEL/CHECK from the plugin; open to whoever can connect.
    Cni,
    /// Changes policy or services: uid 0 or the allow-lists only.
    Mutate,
}

fn classify(method: &Method, path: &str) -> Class {
    match (method, path) {
        (&Method::POST, p) if p.starts_with("/v1/cni/") => Class::Cni,
        (&Method::GET | &Method::HEAD, _) => Class::Read,
        _ => Class::Mutate,
    }
}

/// The body limit of `method path`.
pub fn body_limit(method: &Method, path: &str) -> usize {
    match (method, path) {
        (&Method::POST, p) if p.starts_with("/v1/cni/") => CNI_BODY_LIMIT,
        (&Method::PUT, "/v1/policy") => POLICY_BODY_LIMIT,
        (&Method::POST, "/v1/services") => SERVICE_BODY_LIMIT,
        _ => OTHER_BODY_LIMIT,
    }
}

/// Who may reach the socket and call its mutating endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Group owning the socket (mode 0660); `None` keeps the agent's group.
    pub group: Option<u32>,
    /// Uids besides 0 that may call the mutating endpoints.
    pub allow_uids: BTreeSet<u32>,
    /// Gids that may call them: matched against the peer's gid as
    /// `SO_PEERCRED` reports it (its effective gid at connect, not its
    /// supplementary groups).
    pub allow_gids: BTreeSet<u32>,
}

/// A peer's credentials, as the kernel reported them at connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Process id, when the kernel knows it.
    pub pid: Option<i32>,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} gid {}", self.uid, self.gid)?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        Ok(())
    }
}

impl Access {
    /// Whether `peer` may call a mutating endpoint (unknown credentials may not).
    pub fn permits(&self, peer: Option<Peer>) -> bool {
        peer.is_some_and(|p| {
            p.uid == 0 || self.allow_uids.contains(&p.uid) || self.allow_gids.contains(&p.gid)
        })
    }
}

/// Binds the API socket at `path` (replacing a stale socket file; the
/// parent directory is created), mode 0660 and group `access.group`.
/// Until the mode is set the socket has the umask's mode, whose group and
/// others lack write permission under the usual 022, so nobody but root
/// can connect in between.
pub fn bind(path: &Path, access: &Access) -> Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("removing stale {}", path.display()), e)),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    if let Some(gid) = access.group {
        nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
            Error::io(
                format!("giving {} to group {gid}", path.display()),
                e.into(),
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("setting mode 0660 on {}", path.display()), e))?;
    Ok(listener)
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(agent: Arc<Agent>, listener: UnixListener, access: Arc<Access>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!(error = %e, "accept on the API socket failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let peer = match stream.peer_cred() {
            Ok(c) => Some(Peer {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            }),
            Err(e) => {
                warn!(error = %e, "no peer credentials on an API connection; it may only read");
                None
            }
        };
        let agent = agent.clone();
        let access = access.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let agent = agent.clone();
                let access = access.clone();
                async move {
                    Ok::<_, std::convert::Infallible>(handle(&agent, &access, peer, req).await)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads a request's body up to `limit` bytes: by `content-length` first,
/// so a declared oversized body is refused before a byte of it is read.
async fn read_body(
    req: Request<hyper::body::Incoming>,
    route: &str,
    limit: usize,
) -> Result<Bytes> {
    let too_large = || Error::BodyTooLarge {
        route: route.to_string(),
        limit,
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(too_large()),
        Err(source) => Err(Error::RequestRead { source }),
    }
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

fn error(e: &Error) -> Response<Full<Bytes>> {
    let status = match e {
        e if e.is_bad_request() => StatusCode::BAD_REQUEST,
        Error::Core(sextant_agent_core::Error::PoolExhausted { .. })
        | Error::FixedIpNotHere { .. }
        | Error::ApiDeadline { .. } => StatusCode::SERVICE_UNAVAILABLE,
        Error::Forbidden { .. } => StatusCode::FORBIDDEN,
        Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(
        status,
        &ApiError {
            code: e.metric_label().to_string(),
            message: sextant_kit::ErrorChain(e).to_string(),
        },
    )
}

async fn handle(
    agent: &Agent,
    access: &Access,
    peer: Option<Peer>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let route = format!("{method} {path}");
    if classify(&method, &path) == Class::Mutate && !access.permits(peer) {
        let peer = peer.map_or_else(|| "unknown".to_string(), |p| p.to_string());
        warn!(%route, %peer, "mutating agent API call refused");
        return error(&Error::Forbidden { route, peer });
    }
    let body = match read_body(req, &route, body_limit(&method, &path)).await {
        Ok(b) => b,
        Err(e) => return error(&e),
    };
    let r: Result<Response<Full<Bytes>>> = async {
        Ok(match (&method, path.as_str()) {
            (&Method::GET, "/v1/healthz") => json(StatusCode::OK, &agent.health()),
            (&Method::GET, "/v1/ipam") => json(StatusCode::OK, &agent.ipam()),
            (&Method::GET, "/metrics") => Response::builder()
                .header("content-type", sextant_kit::admin::METRICS_CONTENT_TYPE)
                .body(Full::new(Bytes::from(agent.metrics_text())))
                .unwrap_or_default(),
            (&Method::POST, "/v1/cni/add") => {
                let add = CniAdd::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("add", e))?;
                json(StatusCode::OK, &agent.cni_add(&add).await?)
            }
            (&Method::POST, "/v1/cni/del") => {
                let del = CniCall::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("del", e))?;
                agent.cni_del(&del).await?;
                json(StatusCode::OK, &serde_json::json!({}))
            }
            (&Method::POST, "/v1/cni/check") => {
                let check = CniCall::try_from(request::body::<CniRequest>(&body)?)
                    .map_err(|e| agent.rejected("check", e))?;
                json(StatusCode::OK, &agent.cni_check(&check).await?)
            }
            (&Method::PUT, "/v1/policy") => json(
                StatusCode::OK,
                &agent.sync_policy(request::body::<PolicySnapshot>(&body)?)?,
            ),
            (&Method::GET, "/v1/policy") => json(StatusCode::OK, &agent.policy_report()),
            (&Method::GET, "/v1/services") => json(StatusCode::OK, &agent.services()),
            (&Method::POST, "/v1/services") => {
                agent.set_service(&request::body::<ServiceSpec>(&body)?)?;
                json(StatusCode::OK, &serde_json::json!({}))
            }
            _ => json(
                StatusCode::NOT_FOUND,
                &ApiError {
                    code: "not_found".into(),
                    message: format!("no route {method} {path}"),
                },
            ),
        })
    }
    .await;
    r.unwrap_or_else(|e| error(&e))
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        os::unix::{fs::MetadataExt, process::CommandExt},
        path::PathBuf,
        time::Duration,
    };

    use super::*;
    use crate::agent::Config;

    const PEER_SOCKET: &str = "SEXTANT_TEST_PEER_SOCKET";
    const PEER_REQUEST: &str = "SEXTANT_TEST_PEER_REQUEST";

    /// One raw HTTP/1.1 exchange: the status code, or what failed.
    fn exchange(socket: &Path, head: &str, body: &[u8]) -> std::result::Result<u16, String> {
        let mut s =
            std::os::unix::net::UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| format!("timeout: {e}"))?;
        s.write_all(head.as_bytes())
            .map_err(|e| format!("write: {e}"))?;
        // The server may answer (and close) before it read all of it.
        let _ = s.write_all(body);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        text.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("no status in {text:?}"))
    }

    fn head(method: &str, path: &str, len: usize) -> String {
        format!(
            "{method} {path} HTTP/1.1\r\nhost: agent\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
        )
    }

    /// Not a test: the client the socket tests run as another user (this
    /// binary re-executed under `uid`/`gid`); does nothing unless they set
    /// its socket.
    #[test]
    #[ignore = "a helper the API socket tests run as another user"]
    fn peer_client() {
        let (Ok(socket), Ok(req)) = (std::env::var(PEER_SOCKET), std::env::var(PEER_REQUEST))
        else {
            return;
        };
        let (method, path) = req.split_once(' ').expect("METHOD /path");
        let body = b"{}";
        match exchange(Path::new(&socket), &head(method, path, body.len()), body) {
            Ok(code) => println!("peer-status={code}"),
            Err(e) => println!("peer-error={e}"),
        }
    }

    /// `req` (`METHOD /path`, body `{}`) sent by a process of `uid`:`gid`
    /// with no other groups: `status=N` or `error=...`.
    fn as_user(uid: u32, gid: u32, socket: &Path, req: &str) -> String {
        let out = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "--exact",
                "server::tests::peer_client",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(PEER_SOCKET, socket)
            .env(PEER_REQUEST, req)
            .uid(uid)
            .gid(gid)
            .output()
            .expect("run the peer");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.split_once("peer-").map(|(_, answer)| answer.to_string()))
            .unwrap_or_else(|| {
                panic!(
                    "the peer printed no answer: {stdout} {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
    }

    struct Serving {
        _dir: tempfile::TempDir,
        socket: PathBuf,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Serving {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serving(access: Access) -> Serving {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("dir");
        // Other users must reach the socket inside.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let agent = Agent::new(Config {
            state_dir: dir.path().join("state"),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let socket = dir.path().join("agent.sock");
        let listener = bind(&socket, &access).expect("bind");
        let task = tokio::spawn(serve(agent, listener, Arc::new(access)));
        Serving {
            _dir: dir,
            socket,
            task,
        }
    }

    fn root_test(name: &str) -> bool {
        let test = format!("{}: {}", file!(), sextant_testkit::current_test(name));
        sextant_testkit::require(
            sextant_testkit::Tier::Kernel,
            sextant_testkit::root_unavailable(),
            &test,
        )
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(f).await.expect("blocking")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn socket_is_0660_with_its_group_and_only_root_or_allowed_peers_mutate() {
        if !root_test("socket_is_0660_with_its_group_and_only_root_or_allowed_peers_mutate") {
            return;
        }
        let nogroup = 65534;
        let s = serving(Access {
            group: Some(nogroup),
            ..Access::default()
        })
        .await;
        let meta = std::fs::metadata(&s.socket).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o660, "mode {:o}", meta.mode());
        assert_eq!(meta.gid(), nogroup);

        let sock = s.socket.clone();
        let answers = blocking(move || {
            let root = exchange(&sock, &head("PUT", "/v1/policy", 2), b"{}");
            let user = |uid, gid, req| as_user(uid, gid, &sock, req);
            (
                root,
                user(65534, nogroup, "PUT /v1/policy"),
                user(65534, nogroup, "POST /v1/services"),
                user(65534, nogroup, "GET /v1/healthz"),
                // CNI is not gated by uid: an empty request is a 400, not a 403.
                user(65534, nogroup, "POST /v1/cni/del"),
                // Not in the socket's group: no connection at all.
                user(65533, 65533, "GET /v1/healthz"),
            )
        })
        .await;
        assert_eq!(answers.0, Ok(200), "root may replace policy");
        assert_eq!(answers.1, "status=403", "non-root PUT /v1/policy");
        assert_eq!(answers.2, "status=403", "non-root POST /v1/services");
        assert_eq!(answers.3, "status=200", "non-root reads");
        assert_eq!(
            answers.4, "status=400",
            "non-root CNI call reaches the handler"
        );
        assert!(
            answers.5.starts_with("error=connect"),
            "a peer outside the group connected: {}",
            answers.5
        );
        drop(s);

        // The allow-lists let a non-root uid, or a gid, mutate.
        let s = serving(Access {
            group: Some(nogroup),
            allow_uids: [65534].into(),
            allow_gids: [nogroup].into(),
        })
        .await;
        let sock = s.socket.clone();
        let (by_uid, by_gid) = blocking(move || {
            (
                as_user(65534, nogroup, &sock, "PUT /v1/policy"),
                as_user(65532, nogroup, &sock, "PUT /v1/policy"),
            )
        })
        .await;
        assert_eq!(by_uid, "status=200");
        assert_eq!(by_gid, "status=200");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bodies_over_their_endpoint_limit_get_413() {
        if !root_test("bodies_over_their_endpoint_limit_get_413") {
            return;
        }
        let s = serving(Access::default()).await;
        let sock = s.socket.clone();
        let answers = blocking(move || {
            let declared = |method, path, limit: usize| {
                // Declared only: refused before a byte of it is sent.
                exchange(&sock, &head(method, path, limit + 1), b"")
            };
            let cni = vec![b'x'; CNI_BODY_LIMIT + 1024];
            let chunked = format!(
                "{:x}\r\n{}\r\n0\r\n\r\n",
                cni.len(),
                String::from_utf8_lossy(&cni)
            );
            (
                declared("PUT", "/v1/policy", POLICY_BODY_LIMIT),
                declared("POST", "/v1/services", SERVICE_BODY_LIMIT),
                declared("GET", "/v1/healthz", OTHER_BODY_LIMIT),
                // No length declared: the read stops at the limit.
                exchange(
                    &sock,
                    "POST /v1/cni/add HTTP/1.1\r\nhost: agent\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n",
                    chunked.as_bytes(),
                ),
                // Within its limit, the same endpoint parses the body.
                exchange(&sock, &head("POST", "/v1/cni/add", 2), b"{}"),
            )
        })
        .await;
        assert_eq!(answers.0, Ok(413), "policy");
        assert_eq!(answers.1, Ok(413), "services");
        assert_eq!(answers.2, Ok(413), "a read with a body");
        assert_eq!(answers.3, Ok(413), "chunked CNI body");
        assert_eq!(
            answers.4,
            Ok(400),
            "a small CNI body is read and refused as invalid"
        );
    }

    #[test]
    fn only_uid_0_or_the_allow_lists_may_mutate() {
        let peer = |uid, gid| {
            Some(Peer {
                uid,
                gid,
                pid: None,
            })
        };
        let a = Access {
            group: None,
            allow_uids: [1000].into(),
            allow_gids: [2000].into(),
        };
        assert!(a.permits(peer(0, 0)));
        assert!(a.permits(peer(1000, 5)));
        assert!(a.permits(peer(7, 2000)));
        assert!(!a.permits(peer(7, 5)));
        assert!(!a.permits(None), "unknown credentials");
        assert_eq!(classify(&Method::POST, "/v1/cni/add"), Class::Cni);
        assert_eq!(classify(&Method::GET, "/v1/policy"), Class::Read);
        assert_eq!(classify(&Method::PUT, "/v1/policy"), Class::Mutate);
        assert_eq!(classify(&Method::POST, "/v1/services"), Class::Mutate);
        assert_eq!(classify(&Method::DELETE, "/v1/anything"), Class::Mutate);
    }
}
