//! The extender process: flags (with `SEXTANT_SCHEDULER_EXT_*` environment
//! fallbacks), the index and its watches, the HTTP endpoint, until SIGTERM
//! or SIGINT ([`sextant_kit::shutdown::signal`]).

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use kube::Client;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    error::{Error, Result},
    http::{Extender, ServerConfig, serve},
    index::{Index, SharedIndex},
    metrics::Metrics,
    watch,
};

/// Flags of `sextant-scheduler-ext`.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "sextant-scheduler-ext", version, about)]
pub struct Args {
    /// Address the extender, /healthz, /readyz and /metrics listen on.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_LISTEN",
        default_value = "0.0.0.0:8888"
    )]
    pub listen: SocketAddr,
    /// Path prefix of /filter and /prioritize; the path part of the
    /// scheduler configuration's `urlPrefix`.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_URL_PREFIX", default_value = "")]
    pub url_prefix: String,
    /// Deadline for a request's headers and body, in milliseconds; keep it
    /// below the scheduler configuration's `httpTimeout`.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub request_timeout_ms: u64,
    /// Largest request body accepted (full v1.Node lists are large when
    /// `nodeCacheCapable` is false).
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_MAX_BODY_BYTES", default_value_t = 128 << 20)]
    pub max_body_bytes: usize,
}

impl Args {
    /// Runs the extender until SIGTERM or SIGINT, then returns `Ok`.
    pub async fn run(self) -> Result<()> {
        // Installed first: a SIGTERM that comes while the client is built or
        // the port bound still stops the process gracefully.
        let stop = sextant_kit::shutdown::signal().map_err(|source| Error::Signal { source })?;
        let client = Client::try_default()
            .await
            .map_err(|source| Error::Kube { source })?;
        let index: SharedIndex = Arc::new(RwLock::new(Index::default()));
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let config = ServerConfig {
            prefix: self.url_prefix,
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_millis(self.request_timeout_ms),
        };
        let listener = TcpListener::bind(self.listen)
            .await
            .map_err(|source| Error::Bind {
                addr: self.listen,
                source,
            })?;
        let extender = Arc::new(Extender::new(
            index.clone(),
            metrics.clone(),
            Arc::new(registry),
            config,
        ));
        tokio::select! {
            () = serve(listener, extender) => {}
            () = watch::run(client, index, metrics) => {}
            signal = stop => tracing::info!(%signal, "signal received, stopping gracefully"),
        }
        Ok(())
    }
}
