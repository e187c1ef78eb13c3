//! What can go wrong talking to the agent, typed so callers decide by
//! variant (the CNI plugin answers "try again later" to [`Error::Connect`],
//! the device plugin counts polls by [`Error::metric_label`]).

use std::{path::PathBuf, time::Duration};

/// Result of a call to the agent.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A failed call to the agent API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The agent socket could not be connected (agent not running).
    #[error("connecting to the agent at {socket}")]
    Connect {
        /// Agent socket.
        socket: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP exchange with the agent failed.
    #[error("HTTP to the agent at {socket}")]
    Http {
        /// Agent socket.
        socket: PathBuf,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The request or its answer broke off on the socket (blocking client).
    #[error("talking to the agent at {socket}")]
    Io {
        /// Agent socket.
        socket: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The answer is not well-formed HTTP/1.1 (blocking client).
    #[error("agent's answer to {path} is not HTTP/1.1: {reason}")]
    Malformed {
        /// Request path.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The request could not be built.
    #[error("building {path} for the agent")]
    Request {
        /// Request path.
        path: String,
        /// http's error.
        #[source]
        source: http::Error,
    },
    /// The request body could not be encoded.
    #[error("encoding the body of {path}")]
    Encode {
        /// Request path.
        path: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent answered with a non-2xx status.
    #[error("agent answered {status} to {path}: {message}")]
    Status {
        /// Request path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The agent's message (its `ApiError`), else the start of the body.
        message: String,
    },
    /// The agent's body is not the documented JSON.
    #[error("agent's {path} body is not valid JSON")]
    Body {
        /// Request path.
        path: String,
        /// serde's error.
        #[source]
        source: serde_json::Error,
    },
    /// The agent's body exceeded the size limit.
    #[error("agent's {path} body exceeds {limit} bytes")]
    BodyTooLarge {
        /// Request path.
        path: String,
        /// Limit in bytes.
        limit: usize,
    },
    /// The agent did not answer within the deadline.
    #[error("agent did not answer {path} within {timeout:?}")]
    Timeout {
        /// Request path.
        path: String,
        /// The deadline.
        timeout: Duration,
    },
}

impl Error {
    /// Low-cardinality label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Connect { .. } => "agent_connect",
            Error::Http { .. } => "agent_http",
            Error::Io { .. } => "agent_io",
            Error::Malformed { .. } => "agent_malformed",
            Error::Request { .. } => "agent_request",
            Error::Encode { .. } => "agent_encode",
            Error::Status { .. } => "agent_status",
            Error::Body { .. } => "agent_body",
            Error::BodyTooLarge { .. } => "agent_body_too_large",
            Error::Timeout { .. } => "agent_timeout",
        }
    }

    /// Whether the agent is not there or not answering: nothing reached it,
    /// or nothing came back in time.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Connect { .. } | Error::Timeout { .. })
    }
}
