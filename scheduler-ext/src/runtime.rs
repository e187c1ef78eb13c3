//! The extender process: flags (with `SEXTANT_SCHEDULER_EXT_*` environment
//! fallbacks), the index and its watches, the HTTP endpoint, until SIGTERM
//! or SIGINT ([`sextant_kit::shutdown::signal`]).

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

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
    /// Deadline for a request's headers and body (e.g. `4s`, `500ms`); keep
    /// it below the scheduler configuration's `httpTimeout`.
    #[arg(
        long,
        env = "SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT",
        default_value = "5s",
        value_parser = sextant_kit::duration::parse
    )]
    pub request_timeout: Duration,
    /// Deprecated: `--request-timeout` in milliseconds. Still read so an
    /// existing Deployment keeps working through an upgrade; wins when set.
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_REQUEST_TIMEOUT_MS", hide = true)]
    pub request_timeout_ms: Option<u64>,
    /// Largest request body accepted (full v1.Node lists are large when
    /// `nodeCacheCapable` is false).
    #[arg(long, env = "SEXTANT_SCHEDULER_EXT_MAX_BODY_BYTES", default_value_t = 128 << 20)]
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn request_timeout_is_a_human_duration() {
        let a = Args::try_parse_from(["sextant-scheduler-ext"]).unwrap();
        assert_eq!(a.request_timeout(), Duration::from_secs(5));
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
