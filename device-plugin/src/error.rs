//! Device-plugin errors.

use std::{path::PathBuf, time::Duration};

/// Result of device-plugin work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the agent or kubelet, or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Talking to the node agent failed.
    #[error(transparent)]
    Agent(#[from] sextant_agent_api::Error),
    /// Kubelet's registration socket could not be reached.
    #[error("connecting to kubelet at {socket}")]
    KubeletConnect {
        /// Kubelet socket.
        socket: PathBuf,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Kubelet refused the registration.
    #[error("kubelet refused registering {resource}")]
    Register {
        /// Resource name.
        resource: &'static str,
        /// gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// Kubelet did not answer within the deadline.
    #[error("kubelet did not answer Register within {timeout:?}")]
    RegisterTimeout {
        /// The deadline.
        timeout: Duration,
    },
    /// The plugin socket could not be created.
    #[error("binding the plugin socket {path}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics listener could not be bound.
    #[error("binding the metrics address {addr}")]
    MetricsBind {
        /// Address.
        addr: std::net::SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Agent(e) => e.metric_label(),
            Error::KubeletConnect { .. } => "kubelet_connect",
            Error::Register { .. } => "register_refused",
            Error::RegisterTimeout { .. } => "register_timeout",
            Error::Bind { .. } => "bind",
            Error::MetricsBind { .. } => "metrics_bind",
        }
    }
}
