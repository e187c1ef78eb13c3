//! The extender's HTTP endpoint (HTTP/1.1 on hyper, over rustls by default,
//! one task per connection):
//!
//! - `POST {prefix}/filter` and `POST {prefix}/prioritize`: the
//!   kube-scheduler extender calls ([`serve_tls`]; [`serve`] is the plain
//!   HTTP of `--insecure-http`, for local development);
//! - `GET /healthz` (the process serves), `GET /readyz` (the index is
//!   synced), `GET /metrics` (Prometheus text): [`sextant_kit::admin`]'s
//!   answers, readiness taken from the index at each request; on the
//!   extender port and on the plain-HTTP admin port ([`serve_admin`]) that
//!   probes and Prometheus use.
//!
//! Bounds: at most `max_connections` connections per listener, the one
//! waiting on its peer the longest evicted for a newcomer ([`crate::conns`]);
//! the TLS handshake and each request head within `header_timeout`, each
//! body within `request_timeout` and at most `max_body_bytes`
//! ([`DEFAULT_MAX_BODY_BYTES`]: `nodeCacheCapable` bodies at 20,000 nodes
//! with room to spare).
//!
//! Error answers. A filter call that cannot be decided (malformed body, index
//! not synced, failed FixedIP lookup) is answered **HTTP 200 with
//! `ExtenderFilterResult.Error` set**: kube-scheduler only decodes the body of
//! a 200 and reports its `Error` text in the pod's `FailedScheduling` event,
//! whereas any other status becomes a bare "failed filter with extender at
//! URL …, code N". Prioritize answers a bare `HostPriorityList` with no room
//! for an error, so its failures are HTTP 400 (the request is at fault) or
//! 503 (the extender cannot answer yet) with a text body; kube-scheduler
//! ignores a failing extender's scores for that cycle. Every request has a
//! deadline: headers must arrive within it, and the body too.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, PoisonError},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::{
    body::{Body, Bytes},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use serde::Serialize;
use sextant_kit::{
    ErrorChain,
    admin::{Admin, Readiness},
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{
    conns::Conns,
    error::{Error, Result},
    extender::{ExtenderArgsRef, ExtenderFilterResult, HostPriorityList, NodeList, NodeName},
    filter::{Basis, Decision, decide_for_scheduler},
    index::SharedIndex,
    metrics::Metrics,
    pod::PodRef,
    prioritize::prioritize,
};

/// How the endpoint is reached and bounded.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Path prefix of the extender verbs (`""` or `/sextant`), the path part
    /// of the scheduler configuration's `urlPrefix`.
    pub prefix: String,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
    /// Deadline for a request's body, from its head.
    pub request_timeout: Duration,
    /// Deadline for the TLS handshake and for each request head (also how
    /// long an idle keep-alive connection stays open).
    pub header_timeout: Duration,
    /// Connections open at once on the extender port.
    pub max_connections: usize,
    /// How long a filter call for a fixed-IP pod the index cannot place yet
    /// (its FixedIP not reserved or not listed yet) waits for the index
    /// before refusing every node. The FixedIP controller reserves a
    /// StatefulSet's addresses as its pods are created, so the race is
    /// usually lost by milliseconds; a refused pod waits for kube-scheduler's
    /// next flush of unschedulable pods (up to 5 minutes). kube-scheduler
    /// schedules one pod at a time: keep this short, and below `httpTimeout`.
    pub held_wait: Duration,
}

/// Default `--fixed-ip-wait`.
pub const DEFAULT_HELD_WAIT: Duration = Duration::from_secs(1);
/// How often a held filter call looks at the index again.
const HELD_POLL: Duration = Duration::from_millis(25);

/// Default `--max-body-bytes`: 4 MiB. A `nodeCacheCapable` filter call at
/// 20,000 nodes is 0.95 MB with 45-character node names and a 48 kB pod
/// (`a_20k_node_call_fits_the_default_body_limit_with_room`); 4 MiB still
/// holds 20,000 names of 100 characters beside a pod at the API server's
/// 1.5 MiB object limit.
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;

/// Default `--max-connections`: kube-scheduler schedules one pod at a time
/// and keeps a couple of keep-alive connections per replica; 32 leaves room
/// for every replica and for probes while bounding body memory to
/// 32 x [`DEFAULT_MAX_BODY_BYTES`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 32;

/// How long a connection may wait on its peer before the cap may evict it
/// for a newcomer ([`crate::conns`]): a newcomer behind a flood of `A`
/// connections beyond the cap waits about `A x 0.5 s / max_connections`.
pub const EVICTABLE_AFTER: Duration = Duration::from_millis(500);

/// Connections open at once on the admin port (probes, Prometheus).
pub const ADMIN_MAX_CONNECTIONS: usize = 16;

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prefix: String::new(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: Duration::from_secs(4),
            header_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            held_wait: DEFAULT_HELD_WAIT,
        }
    }
}

impl ServerConfig {
    /// The prefix with one leading slash and no trailing one (`""` stays empty).
    fn normalized_prefix(&self) -> String {
        let p = self.prefix.trim_matches('/');
        if p.is_empty() {
            String::new()
        } else {
            format!("/{p}")
        }
    }
}

/// Which extender verb a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verb {
    Filter,
    Prioritize,
}

/// Answers extender calls from the shared index.
pub struct Extender {
    index: SharedIndex,
    metrics: Metrics,
    /// `/metrics`, `/healthz`, `/readyz`; ready while the index is synced.
    admin: Admin,
    readiness: Readiness,
    config: ServerConfig,
    filter_path: String,
    prioritize_path: String,
}

impl Extender {
    /// An extender over `index`; `registry` is what `/metrics` serves.
    pub fn new(
        index: SharedIndex,
        metrics: Metrics,
        registry: Arc<Registry>,
        config: ServerConfig,
    ) -> Extender {
        let prefix = config.normalized_prefix();
        let readiness = Readiness::not_ready();
        Extender {
            index,
            metrics,
            admin: Admin::new(registry, readiness.clone()),
            readiness,
            filter_path: format!("{prefix}/filter"),
            prioritize_path: format!("{prefix}/prioritize"),
            config,
        }
    }

    /// The answer to one HTTP request.
    pub async fn respond<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.respond_on(req, Routes::All).await
    }

    async fn respond_on<B>(&self, req: Request<B>, routes: Routes) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        let verb = if routes == Routes::AdminOnly {
            None
        } else if path == self.filter_path {
            Some(Verb::Filter)
        } else if path == self.prioritize_path {
            Some(Verb::Prioritize)
        } else {
            None
        };
        if let Some(verb) = verb {
            if req.method() != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
            }
            return match verb {
                Verb::Filter => self.filter(req.into_body()).await,
                Verb::Prioritize => self.prioritize(req.into_body()).await,
            };
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n".into());
        }
        match path {
            "/readyz" => match self.read_index().check_synced() {
                Ok(()) => self.readiness.set(true),
                // Not synced: `/readyz` says which lists are still missing.
                Err(pending) => self
                    .readiness
                    .set_not_ready(format!("index not synced: still listing {pending}")),
            },
            "/metrics" => {
                let index = self.read_index();
                self.metrics
                    .index_sizes(index.node_count(), index.fixed_ip_count());
            }
            _ => {}
        }
        self.admin
            .respond(req.method(), path)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n".into()))
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, crate::index::Index> {
        // A writer that panicked left a consistent map behind (each call is
        // one insert or remove); keep answering from it.
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    async fn read_body<B>(&self, body: B) -> Result<Bytes>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.config.max_body_bytes;
        let deadline = self.config.request_timeout;
        let collected = tokio::time::timeout(deadline, Limited::new(body, limit).collect())
            .await
            .map_err(|_| Error::BodyTimeout { deadline })?
            .map_err(|source| {
                if source.is::<LengthLimitError>() {
                    Error::BodyTooLarge { limit }
                } else {
                    Error::BodyRead { source }
                }
            })?;
        Ok(collected.to_bytes())
    }

    async fn filter<B>(&self, body: B) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let _timer = self.metrics.filter_timer();
        let answer = match self.read_body(body).await {
            Ok(bytes) => self.filter_waiting(&bytes).await,
            Err(e) => Err(e),
        };
        match answer {
            Ok(FilterAnswer {
                json,
                passed,
                failed,
                basis,
            }) => {
                let label = match basis {
                    Basis::Held => "held",
                    _ if passed == 0 => "no_fit",
                    _ => "pass",
                };
                if basis == Basis::UnsyncedPassAll {
                    self.metrics.unsynced_answer("filter");
                }
                self.metrics.decision("filter", label);
                debug!(passed, failed, ?basis, "filter answered");
                json_bytes(json)
            }
            Err(e) => {
                self.metrics.decision("filter", "error");
                warn!(error = %ErrorChain(&e), reason = e.metric_label(), "filter failed");
                json(&ExtenderFilterResult::error(ErrorChain(&e).to_string()))
            }
        }
    }

    /// [`filter_args`](Self::filter_args), looked at again for up to
    /// [`ServerConfig::held_wait`] while the answer holds a fixed-IP pod the
    /// index cannot place yet.
    async fn filter_waiting(&self, bytes: &[u8]) -> Result<FilterAnswer> {
        let deadline = tokio::time::Instant::now() + self.config.held_wait;
        loop {
            let answer = parse_args(bytes).and_then(|args| self.filter_args(args))?;
            if answer.basis != Basis::Held || tokio::time::Instant::now() >= deadline {
                return Ok(answer);
            }
            tokio::time::sleep(HELD_POLL.min(self.config.held_wait)).await;
        }
    }

    /// Decides a filter call once its body is parsed
    /// ([`decide_for_scheduler`]: the index's verdict, or the policy for a
    /// pod it cannot judge yet), and encodes the `ExtenderFilterResult`:
    /// `NodeNames` when the request sent names, the passing `Node` objects
    /// when it sent objects.
    pub fn filter_args(&self, args: ExtenderArgsRef<'_>) -> Result<FilterAnswer> {
        let pod = PodRef::from_pod(args.pod.as_ref().ok_or(Error::NoPod)?)?;
        match (args.node_names, args.nodes) {
            (Some(names), _) => {
                let refs: Vec<&str> = names.iter().map(NodeName::as_str).collect();
                let (decision, basis) = decide_for_scheduler(&self.read_index(), &pod, &refs)?;
                FilterAnswer::encode(&refs, &decision, None, basis)
            }
            (None, Some(mut list)) => {
                let names: Vec<String> = list
                    .items
                    .iter()
                    .map(|n| n.metadata.name.clone().unwrap_or_default())
                    .collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let (decision, basis) = decide_for_scheduler(&self.read_index(), &pod, &refs)?;
                let mut keep = vec![false; list.items.len()];
                for &i in &decision.passed {
                    keep[i] = true;
                }
                let mut position = 0;
                list.items.retain(|_| {
                    position += 1;
                    keep[position - 1]
                });
                FilterAnswer::encode(&refs, &decision, Some(&list), basis)
            }
            (None, None) => Err(Error::NoNodes),
        }
    }

    async fn prioritize<B>(&self, body: B) -> Response<Full<Bytes>>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let answer = match self.read_body(body).await {
            Ok(bytes) => parse_args(&bytes).and_then(|args| self.prioritize_args(args)),
            Err(e) => Err(e),
        };
        match answer {
            Ok(list) => {
                self.metrics.decision("prioritize", "scored");
                json(&list)
            }
            Err(e) => {
                self.metrics.decision("prioritize", "error");
                warn!(error = %ErrorChain(&e), reason = e.metric_label(), "prioritize failed");
                let status = if e.is_bad_request() {
                    StatusCode::BAD_REQUEST
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, format!("{}\n", ErrorChain(&e)))
            }
        }
    }

    /// Decides a prioritize call once its body is parsed.
    pub fn prioritize_args(&self, args: ExtenderArgsRef<'_>) -> Result<HostPriorityList> {
        let pod = PodRef::from_pod(args.pod.as_ref().ok_or(Error::NoPod)?)?;
        let names: Vec<&str> = match (&args.node_names, &args.nodes) {
            (Some(names), _) => names.iter().map(NodeName::as_str).collect(),
            (None, Some(list)) => list
                .items
                .iter()
                .map(|n| n.metadata.name.as_deref().unwrap_or_default())
                .collect(),
            (None, None) => return Err(Error::NoNodes),
        };
        prioritize(&self.read_index(), &pod, &names)
    }
}

/// An encoded `ExtenderFilterResult` and its counts.
#[derive(Debug)]
pub struct FilterAnswer {
    /// The JSON body.
    pub json: Vec<u8>,
    /// Nodes that pass.
    pub passed: usize,
    /// Nodes filtered out.
    pub failed: usize,
    /// What the decision was based on.
    pub basis: Basis,
}

impl FilterAnswer {
    /// Writes the `ExtenderFilterResult` straight from the decision: node
    /// names borrowed from the request, each distinct reason escaped once
    /// and copied per node, so a 6,000-node answer costs no per-node
    /// allocation or re-escaping. Each refused node lands in one map (see
    /// [`crate::filter::FilterOutcome`]).
    fn encode(
        names: &[&str],
        decision: &Decision,
        nodes: Option<&NodeList>,
        basis: Basis,
    ) -> Result<Self> {
        let enc = |source| Error::Encode { source };
        let reasons: Vec<Vec<u8>> = decision
            .reasons
            .iter()
            .map(serde_json::to_vec)
            .collect::<Result<_, _>>()
            .map_err(enc)?;
        let longest = reasons.iter().map(Vec::len).max().unwrap_or(0);
        let mut json = Vec::with_capacity(names.len() * 40 + decision.failed.len() * longest + 128);
        json.push(b'{');
        match nodes {
            Some(list) => {
                json.extend_from_slice(b"\"Nodes\":");
                serde_json::to_writer(&mut json, list).map_err(enc)?;
                json.extend_from_slice(b",\"NodeNames\":null");
            }
            None => {
                json.extend_from_slice(b"\"Nodes\":null,\"NodeNames\":[");
                for (k, &i) in decision.passed.iter().enumerate() {
                    if k > 0 {
                        json.push(b',');
                    }
                    serde_json::to_writer(&mut json, names[i]).map_err(enc)?;
                }
                json.push(b']');
            }
        }
        for (key, unresolvable) in [
            (&b",\"FailedNodes\":{"[..], false),
            (&b",\"FailedAndUnresolvableNodes\":{"[..], true),
        ] {
            json.extend_from_slice(key);
            let mut first = true;
            for f in decision
                .failed
                .iter()
                .filter(|f| f.unresolvable == unresolvable)
            {
                if !first {
                    json.push(b',');
                }
                first = false;
                serde_json::to_writer(&mut json, names[f.node]).map_err(enc)?;
                json.push(b':');
                json.extend_from_slice(reasons.get(f.reason).map_or(&b"\"\""[..], Vec::as_slice));
            }
            json.push(b'}');
        }
        json.extend_from_slice(b",\"Error\":\"\"}");
        Ok(FilterAnswer {
            json,
            passed: decision.passed.len(),
            failed: decision.failed.len(),
            basis,
        })
    }
}

fn parse_args(body: &[u8]) -> Result<ExtenderArgsRef<'_>> {
    serde_json::from_slice(body).map_err(|source| Error::BadRequest { source })
}

fn json_bytes(body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json<T: Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => json_bytes(body),
        Err(source) => {
            let e = Error::Encode { source };
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{}\n", ErrorChain(&e)),
            )
        }
    }
}

/// Which paths a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routes {
    /// The extender verbs and the admin paths.
    All,
    /// `/healthz`, `/readyz`, `/metrics` only.
    AdminOnly,
}

/// Serves the extender over plain HTTP on `listener` until the task is
/// dropped (`--insecure-http`: local development, tests, benchmarks).
pub async fn serve(listener: TcpListener, extender: Arc<Extender>) {
    serve_with(listener, extender, None, Routes::All).await;
}

/// Serves the extender over HTTPS (`acceptor`) on `listener` until the task
/// is dropped.
pub async fn serve_tls(listener: TcpListener, extender: Arc<Extender>, acceptor: TlsAcceptor) {
    serve_with(listener, extender, Some(acceptor), Routes::All).await;
}

/// Serves `/healthz`, `/readyz` and `/metrics` over plain HTTP on
/// `listener` (kubelet probes, Prometheus) until the task is dropped.
pub async fn serve_admin(listener: TcpListener, extender: Arc<Extender>) {
    serve_with(listener, extender, None, Routes::AdminOnly).await;
}

async fn serve_with(
    listener: TcpListener,
    extender: Arc<Extender>,
    tls: Option<TlsAcceptor>,
    routes: Routes,
) {
    if let Ok(addr) = listener.local_addr() {
        match routes {
            Routes::All => info!(
                %addr,
                https = tls.is_some(),
                filter = %extender.filter_path,
                prioritize = %extender.prioritize_path,
                max_connections = extender.config.max_connections,
                "serving the scheduler extender"
            ),
            Routes::AdminOnly => info!(%addr, "serving /healthz, /readyz and /metrics"),
        }
    }
    let conns = match routes {
        Routes::All => Conns::new(
            extender.config.max_connections,
            EVICTABLE_AFTER,
            extender.metrics.clone(),
        ),
        // Probes and scrapes: their own small cap, outside the extender's gauge.
        Routes::AdminOnly => Conns::new(ADMIN_MAX_CONNECTIONS, EVICTABLE_AFTER, Metrics::default()),
    };
    loop {
        let (stream, peer): (TcpStream, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let admitted = conns.admit().await;
        let extender = extender.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let slot = admitted.slot.clone();
            tokio::select! {
                () = connection(stream, peer, extender, tls, routes, &admitted) => {}
                () = slot.evicted() => debug!(%peer, "connection evicted at the cap"),
            }
        });
    }
}

/// One connection: the TLS handshake (if any) and the request head within
/// the header deadline, then HTTP/1.1 with keep-alive.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    extender: Arc<Extender>,
    tls: Option<TlsAcceptor>,
    routes: Routes,
    admitted: &crate::conns::Admitted,
) {
    let header_timeout = extender.config.header_timeout;
    match tls {
        None => http(TokioIo::new(stream), peer, extender, routes, admitted).await,
        Some(acceptor) => {
            match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => http(TokioIo::new(tls), peer, extender, routes, admitted).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake not done within the header deadline"),
            }
        }
    }
}

async fn http<I>(
    io: TokioIo<I>,
    peer: SocketAddr,
    extender: Arc<Extender>,
    routes: Routes,
    admitted: &crate::conns::Admitted,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let header_timeout = extender.config.header_timeout;
    let slot = admitted.slot.clone();
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let extender = extender.clone();
        let slot = slot.clone();
        async move {
            // The head is in; the body is the peer's to send next.
            slot.waiting();
            let answer = extender.respond_on(req, routes).await;
            // Answered: the next head is the peer's to send.
            slot.waiting();
            Ok::<_, Infallible>(answer)
        }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(io, service)
        .await
    {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod bounds_tests;
