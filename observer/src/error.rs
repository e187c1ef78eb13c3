//! The observer's errors.

use std::path::PathBuf;

/// What can go wrong serving or reading flows.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flow filter in a request is malformed or asks for what Sextant does
    /// not record.
    #[error("invalid flow filter: {0}")]
    InvalidFilter(String),
    /// A GetFlows request combines options that cannot go together.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server address is neither a unix socket path nor `host:port`.
    #[error("invalid server address {address:?}: {reason}")]
    InvalidAddress {
        /// The address given.
        address: String,
        /// Why it was refused.
        reason: String,
    },
    /// Connecting to an observer failed.
    #[error("connecting to {address}")]
    Connect {
        /// The address dialled.
        address: String,
        /// The transport's error.
        #[source]
        source: tonic::transport::Error,
    },
    /// Binding the unix socket failed.
    #[error("binding {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server stopped with an error.
    #[error("serving the observer API")]
    Serve(#[source] tonic::transport::Error),
    /// Reading a peer list failed.
    #[error("reading peers from {path}")]
    Peers {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A short label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::InvalidFilter(_) => "invalid_filter",
            Error::InvalidRequest(_) => "invalid_request",
            Error::InvalidAddress { .. } => "invalid_address",
            Error::Connect { .. } => "connect",
            Error::Bind { .. } => "bind",
            Error::Serve(_) => "serve",
            Error::Peers { .. } => "peers",
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidFilter(_) | Error::InvalidRequest(_) => {
                tonic::Status::invalid_argument(e.to_string())
            }
            other => tonic::Status::unavailable(sextant_kit::errors::Chain(&other).to_string()),
        }
    }
}

/// The observer's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
