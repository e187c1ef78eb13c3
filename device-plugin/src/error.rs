//! Device-plugin errors.

use std::{path::PathBuf, time::Duration};

/// Result of device-plugin work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong talking to the agent or kubelet, or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent socket could not be connected.
    #[error("connecting to the agent at {socket}")]
    AgentConnect {
        /// Agent socket.
        socket: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the agent failed.
    #[error("HTTP to the agent at {socket}")]
    AgentHttp {
        /// Agent socket.
        socket: PathBuf,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request to the agent could not be built.
    #[error("building GET {path} for the agent")]
    AgentRequest {
        /// Request path.
        path: &'static str,
        /// http's error.
        #[source]
        source: http::Error,
    },
    /// The agent answered with a non-200 status.
    #[error("agent answered {status} to GET {path}: {body}")]
    AgentStatus {
        /// Request path.
        path: &'static str,
        /// HTTP status.
        status: u16,
        /// Start of the body.
        body: String,
    },
    /// The agent's body is not the documented JSON.
    #[error("agent's {path} body is not valid JSON")]
    AgentBody {
        /// Request path.
        path: &'static str,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent's body exceeded the size limit.
    #[error("agent's {path} body exceeds {limit} bytes")]
    AgentBodyTooLarge {
        /// Request path.
        path: &'static str,
        /// Limit in bytes.
        limit: usize,
    },
    /// The agent did not answer within the deadline.
    #[error("agent did not answer GET {path} within {timeout:?}")]
    AgentTimeout {
        /// Request path.
        path: &'static str,
        /// The deadline.
        timeout: Duration,
    },
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
            Error::AgentConnect { .. } => "agent_connect",
            Error::AgentHttp { .. } => "agent_http",
            Error::AgentRequest { .. } => "agent_request",
            Error::AgentStatus { .. } => "agent_status",
            Error::AgentBody { .. } => "agent_body",
            Error::AgentBodyTooLarge { .. } => "agent_body_too_large",
            Error::AgentTimeout { .. } => "agent_timeout",
            Error::KubeletConnect { .. } => "kubelet_connect",
            Error::Register { .. } => "register_refused",
            Error::RegisterTimeout { .. } => "register_timeout",
            Error::Bind { .. } => "bind",
            Error::MetricsBind { .. } => "metrics_bind",
        }
    }
}

/// Formats an error with its chain of sources, for logs.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}
