//! The admin endpoints every binary serves on plain HTTP: `/metrics`
//! (Prometheus text from one registry), `/healthz` (the process answers) and
//! `/readyz` (the process says it is ready: 503 until then).
//!
//! [`serve`] runs them on their own listener; a binary that serves other
//! paths on the same port (the scheduler extender, the agent's socket) asks
//! [`Admin::respond`] first and answers the rest itself.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, info, warn};

/// Content type of the Prometheus/OpenMetrics text `encode` writes.
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;

/// Whether the process is ready, and if not, why; cheap to clone, shared
/// with whatever decides it.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<RwLock<Option<String>>>);

/// What `/readyz` says when no reason was given.
const NOT_READY: &str = "not ready";

impl Readiness {
    /// Ready from the start (a process with nothing to wait for).
    pub fn ready() -> Self {
        Readiness(Arc::new(RwLock::new(None)))
    }

    /// Not ready until [`Readiness::set`] says so.
    pub fn not_ready() -> Self {
        Readiness(Arc::new(RwLock::new(Some(NOT_READY.to_owned()))))
    }

    /// Says whether the process is ready now.
    pub fn set(&self, ready: bool) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) =
            (!ready).then(|| NOT_READY.to_owned());
    }

    /// Not ready, for `reason` (what `/readyz` answers, e.g. which lists a
    /// watch is still waiting for).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// Whether the process said it is ready.
    pub fn is_ready(&self) -> bool {
        self.reason().is_none()
    }

    /// Why the process is not ready; `None` when it is.
    pub fn reason(&self) -> Option<String> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Brings gauges up to date right before a scrape encodes them.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// What the admin endpoints answer from.
#[derive(Clone)]
pub struct Admin {
    registry: Arc<Registry>,
    readiness: Readiness,
    refresh: Option<Refresh>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.readiness)
            .field("refresh", &self.refresh.is_some())
            .finish_non_exhaustive()
    }
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

/// The Prometheus text of `registry`, or the reason it could not be encoded.
pub fn metrics_text(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    encode(&mut body, registry)?;
    Ok(body)
}

impl Admin {
    /// Endpoints over `registry`, `/readyz` following `readiness`.
    pub fn new(registry: Arc<Registry>, readiness: Readiness) -> Self {
        Admin {
            registry,
            readiness,
            refresh: None,
        }
    }

    /// Calls `refresh` before every `/metrics` answer (gauges read from
    /// state that is not itself a metric: pool counts, map sizes).
    pub fn with_refresh(mut self, refresh: Refresh) -> Self {
        self.refresh = Some(refresh);
        self
    }

    /// The registry `/metrics` serves.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The answer for an admin path; `None` for any other path, which the
    /// caller answers itself.
    pub fn respond(&self, method: &Method, path: &str) -> Option<Response<Full<Bytes>>> {
        if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
            return None;
        }
        if method != Method::GET && method != Method::HEAD {
            return Some(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed\n".into(),
            ));
        }
        if path == "/metrics"
            && let Some(refresh) = &self.refresh
        {
            refresh();
        }
        Some(match path {
            "/metrics" => match metrics_text(&self.registry) {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
                    );
                    r
                }
                Err(e) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("encoding metrics: {e}\n"),
                ),
            },
            "/readyz" => match self.readiness.reason() {
                Some(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                None => text(StatusCode::OK, "ok\n".into()),
            },
            _ => text(StatusCode::OK, "ok\n".into()),
        })
    }

    /// The answer to any request on the admin listener.
    fn answer(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        self.respond(method, path)
            .unwrap_or_else(|| text(StatusCode::NOT_FOUND, "not found\n".into()))
    }
}

/// Serves the admin endpoints on `listener` until the task is dropped: one
/// task per connection, at most [`MAX_CONNECTIONS`] at once, a request head
/// must arrive within [`HEADER_READ_TIMEOUT`].
pub async fn serve(listener: TcpListener, admin: Admin) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer): (_, SocketAddr) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = admin.answer(req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn admin(readiness: Readiness) -> Admin {
        let mut root = Registry::default();
        let c: Counter = Counter::default();
        c.inc();
        root.sub_registry_with_prefix("sextant_operator").register(
            "reconciles",
            "NodeNetwork reconciles",
            c,
        );
        Admin::new(Arc::new(root), readiness)
    }

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let readiness = Readiness::not_ready();
        let server = tokio::spawn(serve(listener, admin(readiness.clone())));

        let health = get(addr, "/healthz").await;
        assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
        assert!(health.ends_with("ok\n"), "{health}");

        let unready = get(addr, "/readyz").await;
        assert!(unready.starts_with("HTTP/1.1 503"), "{unready}");
        assert!(unready.ends_with("not ready\n"), "{unready}");
        readiness.set_not_ready("index not synced: still listing Nodes");
        let why = get(addr, "/readyz").await;
        assert!(why.starts_with("HTTP/1.1 503"), "{why}");
        assert!(
            why.ends_with("index not synced: still listing Nodes\n"),
            "{why}"
        );
        readiness.set(true);
        let ready = get(addr, "/readyz").await;
        assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");

        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK"), "{metrics}");
        assert!(metrics.contains(METRICS_CONTENT_TYPE), "{metrics}");
        assert!(
            metrics.contains("sextant_operator_reconciles_total 1"),
            "{metrics}"
        );
        assert!(metrics.ends_with("# EOF\n"), "{metrics}");

        let missing = get(addr, "/nope").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        server.abort();
    }

    #[test]
    fn a_refresh_hook_runs_before_every_scrape() {
        use prometheus_client::metrics::gauge::Gauge;
        let mut root = Registry::default();
        let pool: Gauge = Gauge::default();
        root.register("pool_free", "free addresses", pool.clone());
        let state = Arc::new(std::sync::atomic::AtomicI64::new(3));
        let seen = state.clone();
        let a = Admin::new(Arc::new(root), Readiness::ready()).with_refresh(Arc::new(move || {
            pool.set(seen.load(std::sync::atomic::Ordering::Relaxed));
        }));
        let body = |a: &Admin| {
            let r = a.respond(&Method::GET, "/metrics").unwrap();
            format!("{:?}", r.into_body())
        };
        assert!(body(&a).contains("pool_free 3"), "{}", body(&a));
        state.store(7, std::sync::atomic::Ordering::Relaxed);
        assert!(body(&a).contains("pool_free 7"), "{}", body(&a));
    }

    #[test]
    fn only_reads_are_allowed_and_other_paths_are_the_callers() {
        let a = admin(Readiness::ready());
        let r = a.respond(&Method::POST, "/metrics").unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(a.respond(&Method::GET, "/filter").is_none());
    }

    #[tokio::test]
    async fn a_client_that_never_sends_its_head_is_cut_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, admin(Readiness::ready())));
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n").await.unwrap();
        let mut out = Vec::new();
        // The server closes the connection (with or without a 408) instead
        // of holding it for ever.
        let closed = tokio::time::timeout(
            HEADER_READ_TIMEOUT + Duration::from_secs(5),
            s.read_to_end(&mut out),
        )
        .await;
        assert!(closed.is_ok(), "connection still open after the timeout");
        server.abort();
    }
}
