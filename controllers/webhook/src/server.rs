//! The HTTPS shell around [`review`](crate::review::review): TLS by rustls
//! with the reloading certificate, HTTP/1.1 with keep-alive by hyper, one task
//! per connection, a deadline on the handshake, the headers and the body.

use std::{
    collections::BTreeSet, convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc,
    time::Duration,
};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use sextant_kit::admin::{self, Admin, Readiness};
use tokio::{net::TcpListener, sync::Semaphore, time::Instant};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::{
    error::WebhookError,
    metrics::WebhookMetrics,
    mutate::PodOptOut,
    review::{ReviewConfig, Verdict, review, to_json},
    tls::{ReloadingCert, server_config},
};

/// Path the MutatingWebhookConfiguration points at: every pod is counted.
pub const MUTATE_PATH: &str = "/mutate";
/// Path of the second webhook, for namespaces an administrator labelled
/// `sextant.io/allow-pod-ip-opt-out=true`: a pod's own
/// `sextant.io/skip-ip-resource` is honoured.
pub const OPT_OUT_PATH: &str = "/mutate/pod-opt-out";
/// Largest body read: the API server's own request limit is 3 MiB.
pub const MAX_BODY: usize = 3 << 20;

/// Flags of `sextant-webhook`, each with a `SEXTANT_WEBHOOK_*` environment
/// fallback.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "sextant-webhook",
    version,
    about = "Sextant's mutating admission webhook: adds sextant.io/ip to pods"
)]
pub struct WebhookArgs {
    /// HTTPS address.
    #[arg(long, env = "SEXTANT_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub listen: SocketAddr,
    /// PEM certificate chain (reloaded when it changes).
    #[arg(
        long,
        env = "SEXTANT_WEBHOOK_TLS_CERT",
        default_value = "/etc/sextant/webhook/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key (reloaded when it changes).
    #[arg(
        long,
        env = "SEXTANT_WEBHOOK_TLS_KEY",
        default_value = "/etc/sextant/webhook/tls.key"
    )]
    pub tls_key: PathBuf,
    /// How often the TLS files are checked for changes.
    #[arg(long, env = "SEXTANT_WEBHOOK_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = sextant_kit::duration::parse)]
    pub tls_reload_interval: Duration,
    /// Namespaces whose pods are never mutated (besides the namespaceSelector).
    #[arg(
        long,
        env = "SEXTANT_WEBHOOK_SKIP_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system"
    )]
    pub skip_namespaces: Vec<String>,
    /// Most connections served at once; more wait in the listen backlog
    /// (the API server keeps a few keep-alive connections per replica).
    #[arg(
        long,
        env = "SEXTANT_WEBHOOK_MAX_CONNECTIONS",
        default_value_t = 256,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_connections: u32,
    /// Deadline for the TLS handshake, the request headers and the body.
    #[arg(long, env = "SEXTANT_WEBHOOK_REQUEST_TIMEOUT", default_value = "5s", value_parser = sextant_kit::duration::parse)]
    pub request_timeout: Duration,
    /// Address of plain-HTTP `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "SEXTANT_WEBHOOK_METRICS_ADDR",
        default_value = "0.0.0.0:9967"
    )]
    pub metrics_addr: SocketAddr,
}

impl WebhookArgs {
    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let metrics = WebhookMetrics::default();
        let cert = Arc::new(ReloadingCert::load(&self.tls_cert, &self.tls_key)?);
        let listener = bind(self.listen).await?;
        let metrics_listener = bind(self.metrics_addr).await?;
        let registry = Arc::new(metrics.registry());
        let metrics_task = tokio::spawn(admin::serve(
            metrics_listener,
            Admin::new(registry, Readiness::ready()),
        ));
        let reload_task = tokio::spawn(crate::tls::watch(
            cert.clone(),
            self.tls_reload_interval,
            metrics.clone(),
        ));
        let server = WebhookServer::new(
            cert,
            ReviewConfig {
                skip_namespaces: self
                    .skip_namespaces
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect::<BTreeSet<_>>(),
                ..ReviewConfig::default()
            },
            metrics,
            self.request_timeout,
        )?
        .with_max_connections(self.max_connections as usize);
        let stop = sextant_kit::shutdown::signal()?;
        tokio::select! {
            _ = server.serve(listener) => {}
            signal = stop => info!(%signal, "shutting down"),
        }
        metrics_task.abort();
        reload_task.abort();
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })
}

/// The webhook's HTTPS server; clones share everything.
#[derive(Clone)]
pub struct WebhookServer {
    acceptor: TlsAcceptor,
    config: Arc<ReviewConfig>,
    /// `config` with pods' own opt-out honoured, for [`OPT_OUT_PATH`].
    opt_out_config: Arc<ReviewConfig>,
    metrics: WebhookMetrics,
    timeout: Duration,
    connections: Arc<Semaphore>,
}

/// Default of `--max-connections`.
const MAX_CONNECTIONS: usize = 256;

impl WebhookServer {
    /// A server presenting `cert`, answering with `config`, each connection's
    /// handshake, headers and body read within `timeout`.
    pub fn new(
        cert: Arc<ReloadingCert>,
        config: ReviewConfig,
        metrics: WebhookMetrics,
        timeout: Duration,
    ) -> Result<Self, WebhookError> {
        Ok(WebhookServer {
            acceptor: TlsAcceptor::from(server_config(cert)?),
            opt_out_config: Arc::new(ReviewConfig {
                pod_opt_out: PodOptOut::Allowed,
                ..config.clone()
            }),
            config: Arc::new(ReviewConfig {
                pod_opt_out: PodOptOut::Refused,
                ..config
            }),
            metrics,
            timeout,
            connections: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    /// Serves at most `n` connections at once; the rest wait to be accepted.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.connections = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Accepts connections on `listener` until the future is dropped.
    pub async fn serve(self, listener: TcpListener) {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, path = MUTATE_PATH, "serving the admission webhook over HTTPS");
        }
        loop {
            // A slot first, then accept: past the cap, connections wait in
            // the kernel's backlog instead of costing a task and a handshake.
            let Ok(slot) = self.connections.clone().acquire_owned().await else {
                return;
            };
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Reviews are small request/response pairs: no Nagle delay.
            let _ = stream.set_nodelay(true);
            let me = self.clone();
            tokio::spawn(async move {
                me.connection(stream, peer).await;
                drop(slot);
            });
        }
    }

    async fn connection(self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let tls = match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                debug!(%peer, error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                debug!(%peer, "TLS handshake timed out");
                return;
            }
        };
        let timeout = self.timeout;
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let me = self.clone();
            async move { Ok::<_, Infallible>(me.handle(req).await) }
        });
        let served = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .keep_alive(true)
            .serve_connection(TokioIo::new(tls), service)
            .await;
        if let Err(e) = served {
            debug!(%peer, error = %e, "connection ended with an error");
        }
    }

    async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let pod_opt_out = match (req.method(), req.uri().path()) {
            (&Method::POST, MUTATE_PATH) => PodOptOut::Refused,
            (&Method::POST, OPT_OUT_PATH) => PodOptOut::Allowed,
            (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
            (_, MUTATE_PATH | OPT_OUT_PATH) => {
                return text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
            }
            _ => return text(StatusCode::NOT_FOUND, "not found\n"),
        };
        let body = Limited::new(req.into_body(), MAX_BODY).collect();
        let body = match tokio::time::timeout(self.timeout, body).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) => Err(format!(
                "reading the request body: {e} (limit {MAX_BODY} bytes)"
            )),
            Err(_) => Err(format!(
                "request body not received within {:?}",
                self.timeout
            )),
        };
        let start = Instant::now();
        let (answer, verdict) = match body {
            Ok(b) => match pod_opt_out {
                PodOptOut::Refused => review(&b, &self.config),
                PodOptOut::Allowed => review(&b, &self.opt_out_config),
            },
            Err(message) => {
                let r = kube_core::admission::AdmissionResponse::invalid(message);
                (r.into_review(), Verdict::Invalid)
            }
        };
        let json = to_json(&answer);
        self.metrics
            .review(verdict.label(), start.elapsed().as_secs_f64());
        if verdict == Verdict::Invalid {
            let message = answer
                .response
                .as_ref()
                .map(|r| r.result.message.as_str())
                .unwrap_or_default();
            info!(message, "refused a malformed AdmissionReview");
        } else {
            debug!(result = verdict.label(), "reviewed");
        }
        let mut resp = Response::new(Full::new(Bytes::from(json)));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        resp
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_parse_with_defaults() {
        WebhookArgs::command().debug_assert();
        let a = WebhookArgs::try_parse_from([
            "sextant-webhook",
            "--skip-namespaces",
            "kube-system,sextant-system",
        ])
        .expect("flags parse");
        assert_eq!(a.listen.port(), 9443);
        assert_eq!(a.skip_namespaces, ["kube-system", "sextant-system"]);
        assert_eq!(a.tls_reload_interval, Duration::from_secs(10));
    }
}
