//! The extender process: flags (with `SEXTANT_SCHEDULER_EXT_*` environment
//! fallbacks), the index and its watches, the HTTPS endpoint and the admin
//! port, until SIGTERM or SIGINT ([`sextant_kit::shutdown::signal`]).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    error::{Error, Result},
    http::{
        DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, Extender, ServerConfig, serve,
        serve_admin, serve_tls,
    },
    index::{Index, SharedIndex},
    metrics::Metrics,
    tls::{ServingCert, server_config},
    watch,
};

/// Flags of `sextant-scheduler-ext`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "sextant-scheduler-ext", version, about)]
pub struct Args {
    /// Address the extender (HTTPS unless --insecure-http) listens on.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_LISTEN",
        default_value = "0.0.0.0:8888"
    )]
    pub listen: SocketAddr,
    /// Address of plain-HTTP /healthz, /readyz and /metrics (probes,
    /// Prometheus).
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_ADMIN_LISTEN",
        default_value = "0.0.0.0:8889"
    )]
    pub admin_listen: SocketAddr,
    /// PEM certificate chain the extender serves (reloaded when it changes).
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_TLS_CERT",
        default_value = "/etc/sextant/scheduler-ext/tls.crt"
    )]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert (reloaded when it changes).
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_TLS_KEY",
        default_value = "/etc/sextant/scheduler-ext/tls.key"
    )]
    pub tls_key: PathBuf,
    /// PEM CA bundle: when set, clients must present a certificate it
    /// signed (kube-scheduler's tlsConfig certFile/keyFile).
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the TLS files are checked for changes.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_TLS_RELOAD_INTERVAL",
        default_value = "10s",
        value_parser = sextant_kit::duration::parse
    )]
    pub tls_reload_interval: Duration,
    /// Serve plain HTTP instead of HTTPS: local development only (anyone
    /// who reaches the port reads the index and answers the scheduler).
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_INSECURE_HTTP",
        conflicts_with = "tls_client_ca"
    )]
    pub insecure_http: bool,
    /// Path prefix of /filter and /prioritize; the path part of the
    /// scheduler configuration's `urlPrefix`.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_URL_PREFIX", default_value = "")]
    pub url_prefix: String,
    /// Deadline for a request's body from its head (e.g. `4s`, `500ms`);
    /// keep it below the scheduler configuration's `httpTimeout`.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT",
        default_value = "4s",
        value_parser = sextant_kit::duration::parse
    )]
    pub request_timeout: Duration,
    /// Deadline for the TLS handshake and each request head; also how long
    /// an idle keep-alive connection stays open.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_HEADER_TIMEOUT",
        default_value = "10s",
        value_parser = sextant_kit::duration::parse
    )]
    pub header_timeout: Duration,
    /// Connections open at once; at the cap the one waiting on its peer the
    /// longest is closed for the newcomer.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// How long a filter call for a fixed-IP pod whose FixedIP is not in the
    /// index yet waits for it before refusing every node (kube-scheduler
    /// then retries at its next flush, up to 5 minutes later). Keep it well
    /// below the scheduler's `httpTimeout`: kube-scheduler waits meanwhile.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_FIXED_IP_WAIT", default_value = "1s", value_parser = sextant_kit::duration::parse)]
    pub fixed_ip_wait: Duration,
    /// Deprecated: `--request-timeout` in milliseconds. Still read so an
    /// existing Deployment keeps working through an upgrade; wins when set.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT_MS", hide = true)]
    pub request_timeout_ms: Option<u64>,
    /// Largest request body accepted: 4 MiB holds a `nodeCacheCapable` call
    /// at 20,000 nodes several times over; raise it only for
    /// `nodeCacheCapable: false` (full v1.Node lists, ~3.5 kB per node).
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
}

impl Args {
    /// The request deadline: the deprecated millisecond flag when given
    /// (with a warning), else `--request-timeout`.
    pub fn request_timeout(&self) -> Duration {
        match self.request_timeout_ms {
            Some(ms) => {
                tracing::warn!(
                    ms,
                    "--request-timeout-ms / SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT_MS is deprecated: use --request-timeout {ms}ms"
                );
                Duration::from_millis(ms)
            }
            None => self.request_timeout,
        }
    }

    /// Runs the extender until SIGTERM or SIGINT, then returns `Ok`.
    pub async fn run(self) -> Result<()> {
        // Installed first: a SIGTERM that comes while the client is built or
        // the port bound still stops the process gracefully.
        let stop = sextant_kit::shutdown::signal().map_err(|source| Error::Signal { source })?;
        // TLS files first: a missing or broken pair stops the start with
        // the reason, before anything is served.
        let tls = if self.insecure_http {
            tracing::warn!(
                "--insecure-http: serving the extender over plain HTTP (local development only)"
            );
            None
        } else {
            let cert = Arc::new(ServingCert::load(&self.tls_cert, &self.tls_key)?);
            let config = server_config(cert.clone(), self.tls_client_ca.as_deref())?;
            Some((cert, TlsAcceptor::from(Arc::new(config))))
        };
        let client = sextant_kit::client::client()
            .await
            .map_err(|source| Error::Kube { source })?;
        let index: SharedIndex = Arc::new(RwLock::new(Index::default()));
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let request_timeout = self.request_timeout();
        let config = ServerConfig {
            prefix: self.url_prefix,
            max_body_bytes: self.max_body_bytes,
            request_timeout,
            header_timeout: self.header_timeout,
            max_connections: self.max_connections,
            held_wait: self.fixed_ip_wait,
        };
        let listener = bind(self.listen).await?;
        let admin_listener = bind(self.admin_listen).await?;
        let extender = Arc::new(Extender::new(
            index.clone(),
            metrics.clone(),
            Arc::new(registry),
            config,
        ));
        let admin = tokio::spawn(serve_admin(admin_listener, extender.clone()));
        let (serving, reload) = match tls {
            Some((cert, acceptor)) => (
                tokio::spawn(serve_tls(listener, extender, acceptor)),
                Some(tokio::spawn(cert.watch(self.tls_reload_interval, |_| {}))),
            ),
            None => (tokio::spawn(serve(listener, extender)), None),
        };
        tokio::select! {
            () = watch::run(client, index, metrics) => {}
            signal = stop => tracing::info!(%signal, "signal received, stopping gracefully"),
        }
        for task in [Some(admin), Some(serving), reload].into_iter().flatten() {
            task.abort();
        }
        Ok(())
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn request_timeout_is_a_human_duration() {
        let a = Args::try_parse_from(["sextant-scheduler-ext"]).unwrap();
        assert_eq!(a.request_timeout(), Duration::from_secs(4));
        assert_eq!(a.header_timeout, Duration::from_secs(10));
        assert_eq!(a.max_body_bytes, 4 << 20);
        assert_eq!(a.max_connections, 32);
        assert!(!a.insecure_http, "HTTPS unless asked otherwise");
        let a =
            Args::try_parse_from(["sextant-scheduler-ext", "--request-timeout", "750ms"]).unwrap();
        assert_eq!(a.request_timeout(), Duration::from_millis(750));
        let bare = Args::try_parse_from(["sextant-scheduler-ext", "--request-timeout", "4000"]);
        assert!(bare.unwrap_err().to_string().contains("no unit"));
    }

    #[test]
    fn the_deprecated_millisecond_flag_still_works() {
        let a = Args::try_parse_from([
            "sextant-scheduler-ext",
            "--request-timeout",
            "5s",
            "--request-timeout-ms",
            "4000",
        ])
        .unwrap();
        assert_eq!(a.request_timeout(), Duration::from_millis(4000));
    }
}
