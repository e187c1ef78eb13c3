//! The extender's HTTP endpoint (HTTP/1.1 on hyper, one task per connection):
//!
//! - `POST {prefix}/filter` and `POST {prefix}/prioritize`: the
//!   kube-scheduler extender calls;
//! - `GET /healthz` (the process serves), `GET /readyz` (the index is
//!   synced), `GET /metrics` (Prometheus text): [`sextant_kit::admin`]'s
//!   answers, readiness taken from the index at each request.
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
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::{
    error::{Error, Result},
    extender::{ExtenderArgsRef, ExtenderFilterResult, HostPriorityList, NodeList, NodeName},
    filter::{Decision, decide},
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
    /// Deadline for a request's headers and for its body.
    pub request_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            prefix: String::new(),
            max_body_bytes: 128 << 20,
            request_timeout: Duration::from_secs(5),
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
        let path = req.uri().path();
        let verb = if path == self.filter_path {
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
            Ok(bytes) => parse_args(&bytes).and_then(|args| self.filter_args(args)),
            Err(e) => Err(e),
        };
        match answer {
            Ok(FilterAnswer {
                json,
                passed,
                failed,
            }) => {
                let label = if passed == 0 { "no_fit" } else { "pass" };
                self.metrics.decision("filter", label);
                debug!(passed, failed, "filter answered");
                json_bytes(json)
            }
            Err(e) => {
                self.metrics.decision("filter", "error");
                warn!(error = %ErrorChain(&e), reason = e.metric_label(), "filter failed");
                json(&ExtenderFilterResult::error(ErrorChain(&e).to_string()))
            }
        }
    }

    /// Decides a filter call once its body is parsed, and encodes the
    /// `ExtenderFilterResult`: `NodeNames` when the request sent names,
    /// the passing `Node` objects when it sent objects.
    pub fn filter_args(&self, args: ExtenderArgsRef<'_>) -> Result<FilterAnswer> {
        let pod = PodRef::from_pod(args.pod.as_ref().ok_or(Error::NoPod)?)?;
        match (args.node_names, args.nodes) {
            (Some(names), _) => {
                let refs: Vec<&str> = names.iter().map(NodeName::as_str).collect();
                let decision = decide(&self.read_index(), &pod, &refs)?;
                FilterAnswer::encode(&refs, &decision, None)
            }
            (None, Some(mut list)) => {
                let names: Vec<String> = list
                    .items
                    .iter()
                    .map(|n| n.metadata.name.clone().unwrap_or_default())
                    .collect();
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let decision = decide(&self.read_index(), &pod, &refs)?;
                let mut keep = vec![false; list.items.len()];
                for &i in &decision.passed {
                    keep[i] = true;
                }
                let mut position = 0;
                list.items.retain(|_| {
                    position += 1;
                    keep[position - 1]
                });
                FilterAnswer::encode(&refs, &decision, Some(&list))
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
}

impl FilterAnswer {
    /// Writes the `ExtenderFilterResult` straight from the decision: node
    /// names borrowed from the request, each distinct reason escaped once
    /// and copied per node, so a 6,000-node answer costs no per-node
    /// allocation or re-escaping. Each refused node lands in one map (see
    /// [`crate::filter::FilterOutcome`]).
    fn encode(names: &[&str], decision: &Decision, nodes: Option<&NodeList>) -> Result<Self> {
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

/// Serves the extender on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, extender: Arc<Extender>) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, filter = %extender.filter_path, prioritize = %extender.prioritize_path, "serving the scheduler extender");
    }
    let header_timeout = extender.config.request_timeout;
    loop {
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let extender = extender.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let extender = extender.clone();
                async move { Ok::<_, Infallible>(extender.respond(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests;
