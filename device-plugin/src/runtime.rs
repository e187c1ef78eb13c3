//! The process: flags, the agent poller, the plugin server and the
//! registration loop that follows kubelet restarts.
//!
//! Every `--poll-interval` the registration loop checks two files in the
//! device-plugin directory: this plugin's socket (kubelet deletes it when it
//! restarts) and `kubelet.sock` (a new one means a new kubelet). A missing or
//! foreign plugin socket is served anew; a `kubelet.sock` not yet registered
//! with gets a Register. Serving always comes before registering. Polling
//! the directory (rather than inotify) costs two `stat`s a second and sees
//! every case inotify would, including a directory replaced by a mount.

use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};

use sextant_agent_api::Client;
use sextant_kit::{ErrorChain, duration};
use tokio::{
    net::UnixListener,
    sync::watch,
    task::JoinHandle,
    time::{MissedTickBehavior, interval},
};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::Server;
use tracing::{debug, info, warn};

use crate::{
    Error, Result,
    api::device_plugin_server::DevicePluginServer,
    devices::{self, DeviceList, Observation, Policy},
    metrics::Metrics,
    paths,
    plugin::IpDevicePlugin,
    registration::{self, SocketId},
};

/// Flags of `sextant-device-plugin`, each with a `SEXTANT_*` environment
/// fallback.
#[derive(Clone, Debug, clap::Parser)]
#[command(name = "sextant-device-plugin", version, about)]
pub struct Args {
    /// Kubelet's device-plugin directory (holds kubelet.sock and ours).
    #[arg(long, env = "SEXTANT_DEVICE_PLUGIN_DIR", default_value = paths::DEVICE_PLUGIN_DIR)]
    pub device_plugin_dir: PathBuf,
    /// Name of this plugin's socket inside the directory.
    #[arg(long, env = "SEXTANT_PLUGIN_SOCKET", default_value = paths::PLUGIN_SOCKET)]
    pub socket_name: String,
    /// The node agent's API socket.
    #[arg(long, env = "SEXTANT_AGENT_SOCKET", default_value = sextant_agent_api::SOCKET_PATH)]
    pub agent_socket: PathBuf,
    /// How often the agent is polled and the directory checked; a capacity
    /// change reaches ListAndWatch within one interval.
    #[arg(long, env = "SEXTANT_POLL_INTERVAL", default_value = "1s", value_parser = duration::parse)]
    pub poll_interval: Duration,
    /// Deadline of one agent call.
    #[arg(long, env = "SEXTANT_AGENT_TIMEOUT", default_value = "500ms", value_parser = duration::parse)]
    pub agent_timeout: Duration,
    /// Deadline of one kubelet call (Register) and of each served call.
    #[arg(long, env = "SEXTANT_KUBELET_TIMEOUT", default_value = "5s", value_parser = duration::parse)]
    pub kubelet_timeout: Duration,
    /// Failed agent polls in a row after which every device is unhealthy.
    #[arg(long, env = "SEXTANT_AGENT_DOWN_AFTER", default_value_t = Policy::default().agent_down_after)]
    pub agent_down_after: u32,
    /// Most devices ever advertised.
    #[arg(long, env = "SEXTANT_MAX_DEVICES", default_value_t = Policy::default().max_devices)]
    pub max_devices: u32,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "SEXTANT_METRICS_ADDR", default_value = "0.0.0.0:9966")]
    pub metrics_addr: SocketAddr,
}

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Kubelet's device-plugin directory.
    pub dir: PathBuf,
    /// Our socket's name in `dir`.
    pub socket_name: String,
    /// The agent's socket.
    pub agent_socket: PathBuf,
    /// Agent poll and directory check interval.
    pub poll_interval: Duration,
    /// Deadline of one agent call.
    pub agent_timeout: Duration,
    /// Deadline of one kubelet call.
    pub kubelet_timeout: Duration,
    /// Advertising limits.
    pub policy: Policy,
}

impl From<&Args> for Config {
    fn from(a: &Args) -> Self {
        Config {
            dir: a.device_plugin_dir.clone(),
            socket_name: a.socket_name.clone(),
            agent_socket: a.agent_socket.clone(),
            poll_interval: a.poll_interval,
            agent_timeout: a.agent_timeout,
            kubelet_timeout: a.kubelet_timeout,
            policy: Policy {
                max_devices: a.max_devices,
                agent_down_after: a.agent_down_after,
            },
        }
    }
}

impl Args {
    /// Serves metrics and runs the plugin until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        let m = Metrics::default();
        let registry = std::sync::Arc::new(m.registry());
        let listener = tokio::net::TcpListener::bind(self.metrics_addr)
            .await
            .map_err(|source| Error::MetricsBind {
                addr: self.metrics_addr,
                source,
            })?;
        let admin =
            sextant_kit::admin::Admin::new(registry, sextant_kit::admin::Readiness::ready());
        let metrics_task = tokio::spawn(sextant_kit::admin::serve(listener, admin));
        let result = run(Config::from(&self), m, shutdown_signal()).await;
        metrics_task.abort();
        Ok(result?)
    }
}

/// Resolves on SIGTERM or SIGINT; if the handlers cannot be installed the
/// plugin runs until killed.
async fn shutdown_signal() {
    match sextant_kit::shutdown::signal() {
        Ok(stop) => {
            let signal = stop.await;
            info!(%signal, "shutting down");
        }
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM or SIGINT; the plugin stops only when killed");
            std::future::pending::<()>().await;
        }
    }
}

/// Runs the plugin until `shutdown` completes, then removes its socket.
pub async fn run(
    config: Config,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let agent = Client::new(&config.agent_socket, config.agent_timeout);
    let mut poller = AgentPoller {
        agent,
        policy: config.policy,
        failures: 0,
        metrics: metrics.clone(),
    };
    let (tx, rx) = watch::channel(DeviceList::default());
    // One reading before serving, so kubelet's first list is the real one
    // whenever the agent is up.
    poller.poll_once(&tx).await;
    let poll_interval = config.poll_interval;
    let poll_task = tokio::spawn(async move {
        let mut ticker = interval(poll_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            poller.poll_once(&tx).await;
        }
    });

    let service = IpDevicePlugin::new(rx, metrics.clone());
    let mut registrar = Registrar {
        plugin_socket: config.dir.join(&config.socket_name),
        kubelet_socket: config.dir.join(paths::KUBELET_SOCKET),
        config: config.clone(),
        service,
        metrics,
        server: None,
        registered_with: None,
    };
    let mut ticker = interval(config.poll_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let result = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            _ = ticker.tick() => {}
        }
        if let Err(e) = registrar.check().await {
            match e {
                // Without our own socket nothing works: give up and let the
                // DaemonSet restart us.
                Error::Bind { .. } => break Err(e),
                e => warn!(error = %ErrorChain(&e), "registration with kubelet failed; retrying"),
            }
        }
    };
    poll_task.abort();
    registrar.stop();
    result
}

/// Polls the agent and publishes the device list when it changes.
struct AgentPoller {
    agent: Client,
    policy: Policy,
    failures: u32,
    metrics: Metrics,
}

impl AgentPoller {
    async fn poll_once(&mut self, tx: &watch::Sender<DeviceList>) {
        let prev = *tx.borrow();
        let next = match self.agent.healthz().await {
            Ok(h) => {
                if self.failures > 0 {
                    info!(after = self.failures, "agent answers again");
                }
                self.failures = 0;
                self.metrics.agent_poll("ok");
                devices::plan(prev, Observation::Agent(&h), self.policy)
            }
            Err(e) => {
                self.failures = self.failures.saturating_add(1);
                self.metrics.agent_poll(e.metric_label());
                if self.failures == 1 || self.failures == self.policy.agent_down_after {
                    warn!(error = %ErrorChain(&e), failures = self.failures, "agent poll failed");
                } else {
                    debug!(error = %ErrorChain(&e), failures = self.failures, "agent poll failed");
                }
                devices::plan(
                    prev,
                    Observation::AgentDown {
                        consecutive: self.failures,
                    },
                    self.policy,
                )
            }
        };
        let changed = tx.send_if_modified(|cur| {
            if *cur == next {
                false
            } else {
                *cur = next;
                true
            }
        });
        if changed {
            info!(
                total = next.total,
                healthy = next.healthy(),
                "sextant.io/ip devices changed"
            );
            self.metrics.published(&next);
        }
    }
}

/// The plugin server task and the socket it listens on.
struct Serving {
    task: JoinHandle<()>,
    socket: SocketId,
}

/// Keeps the plugin served and registered with the current kubelet.
struct Registrar {
    plugin_socket: PathBuf,
    kubelet_socket: PathBuf,
    config: Config,
    service: IpDevicePlugin,
    metrics: Metrics,
    server: Option<Serving>,
    registered_with: Option<SocketId>,
}

impl Registrar {
    async fn check(&mut self) -> Result<()> {
        let ours = SocketId::of(&self.plugin_socket);
        let serving = self
            .server
            .as_ref()
            .is_some_and(|s| Some(s.socket) == ours && !s.task.is_finished());
        if !serving {
            if self.server.is_some() {
                info!(socket = %self.plugin_socket.display(), "plugin socket gone (kubelet restarted?); serving anew");
            }
            self.stop();
            self.server = Some(self.serve()?);
            // A new socket has to be announced again.
            self.registered_with = None;
        }
        match SocketId::of(&self.kubelet_socket) {
            None => {
                if self.registered_with.take().is_some() {
                    info!(socket = %self.kubelet_socket.display(), "kubelet.sock gone; waiting for kubelet");
                }
                Ok(())
            }
            Some(k) if self.registered_with == Some(k) => Ok(()),
            Some(k) => {
                let r = registration::register(
                    &self.kubelet_socket,
                    &self.config.socket_name,
                    self.config.kubelet_timeout,
                )
                .await;
                match r {
                    Ok(()) => {
                        self.metrics.registration("ok");
                        info!(resource = paths::RESOURCE_NAME, endpoint = %self.config.socket_name, "registered with kubelet");
                        self.registered_with = Some(k);
                        Ok(())
                    }
                    Err(e) => {
                        self.metrics.registration(e.metric_label());
                        Err(e)
                    }
                }
            }
        }
    }

    fn serve(&self) -> Result<Serving> {
        let path = &self.plugin_socket;
        let bind_err = |source| Error::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(bind_err)?;
        let socket = SocketId::of(path).ok_or_else(|| {
            bind_err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "socket vanished right after bind",
            ))
        })?;
        let timeout = self.config.kubelet_timeout;
        let service = DevicePluginServer::new(self.service.clone());
        let shown = path.display().to_string();
        let task = tokio::spawn(async move {
            let served = Server::builder()
                .timeout(timeout)
                .http2_keepalive_interval(Some(Duration::from_secs(10)))
                .http2_keepalive_timeout(Some(timeout))
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
            if let Err(e) = served {
                warn!(socket = %shown, error = %ErrorChain(&e), "plugin server stopped");
            }
        });
        info!(socket = %path.display(), "serving the device-plugin API");
        Ok(Serving { task, socket })
    }

    fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.task.abort();
            // Remove the socket only if it is still the one we bound.
            if SocketId::of(&self.plugin_socket) == Some(s.socket) {
                let _ = std::fs::remove_file(&self.plugin_socket);
            }
        }
    }
}

/// Where the plugin socket lives for `config`.
pub fn plugin_socket_path(config: &Config) -> PathBuf {
    config.dir.join(&config.socket_name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_parse_with_defaults() {
        Args::command().debug_assert();
        let a = Args::try_parse_from(["sextant-device-plugin"]).expect("defaults parse");
        let c = Config::from(&a);
        assert_eq!(c.dir, PathBuf::from(paths::DEVICE_PLUGIN_DIR));
        assert_eq!(c.poll_interval, Duration::from_secs(1));
        assert_eq!(c.agent_timeout, Duration::from_millis(500));
        assert_eq!(c.policy, Policy::default());
    }

    #[test]
    fn durations_parse_and_negative_ones_are_refused() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse(" 2s "), Ok(Duration::from_secs(2)));
        assert!(duration::parse("-1s").is_err());
        assert!(duration::parse("soon").is_err());
    }
}
