//! Agent errors.

use std::{net::Ipv4Addr, path::PathBuf};

/// Result of agent work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong in the agent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool or a checkpoint restore refused (no free IP, a double
    /// assignment, a fixed IP that is not the pod's).
    #[error(transparent)]
    Core(#[from] sextant_agent_core::Error),
    /// The checkpoint could not be read or written.
    #[error("checkpoint {path}: {action}")]
    CheckpointIo {
        /// Checkpoint file.
        path: PathBuf,
        /// What we were doing.
        action: &'static str,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The checkpoint does not parse; refusing to guess which IPs are in use.
    #[error("checkpoint {path} is corrupt")]
    CheckpointCorrupt {
        /// Checkpoint file.
        path: PathBuf,
        /// Parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint was written by an incompatible agent.
    #[error("checkpoint {path} has version {found}, this agent reads version {expected}")]
    CheckpointVersion {
        /// Checkpoint file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this agent writes.
        expected: u32,
    },
    /// A netlink operation failed.
    #[error("netlink: {action}")]
    Netlink {
        /// What we were doing.
        action: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// A system call around namespaces, sockets or files failed.
    #[error("{action}")]
    Io {
        /// What we were doing.
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Loading, pinning or attaching BPF failed.
    #[error("datapath: {action}")]
    Bpf {
        /// What we were doing.
        action: String,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The Kubernetes API refused or failed.
    #[error("kubernetes: {action}")]
    Kube {
        /// What we were doing.
        action: String,
        /// kube's error (boxed: it is large).
        #[source]
        source: Box<kube::Error>,
    },
    /// A pod's fixed IP did not reach this node within the wait.
    #[error("fixed IP {ip} for {pod} not on this node after {waited:?}")]
    FixedIpNotHere {
        /// `namespace/name` of the pod.
        pod: String,
        /// The pod's fixed address.
        ip: Ipv4Addr,
        /// How long the ADD waited.
        waited: std::time::Duration,
    },
    /// A pod's `FixedIP` names an address that is not IPv4.
    #[error("FixedIP {pod} has spec.ip {ip:?}, not an IPv4 address")]
    FixedIpInvalid {
        /// `namespace/name` of the pod (and of its FixedIP).
        pod: String,
        /// The address as written.
        ip: String,
        /// Parse error.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The NodeNetwork file (`--node-network-file`) does not parse.
    #[error("NodeNetwork file {path} does not parse")]
    NodeFileInvalid {
        /// The file.
        path: PathBuf,
        /// The JSON or YAML error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A request to the agent API was malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Talking to the agent API failed (client side).
    #[error(transparent)]
    Api(#[from] sextant_agent_api::Error),
    /// A link netlink just created or reported is not there.
    #[error("{what} {name} is missing")]
    LinkMissing {
        /// Interface name.
        name: String,
        /// Which link (`host veth`, `veth peer in the pod netns`).
        what: &'static str,
    },
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Core(e) => e.metric_label(),
            Error::CheckpointIo { .. } => "checkpoint_io",
            Error::CheckpointCorrupt { .. } => "checkpoint_corrupt",
            Error::CheckpointVersion { .. } => "checkpoint_version",
            Error::Netlink { .. } => "netlink",
            Error::Io { .. } => "io",
            Error::Bpf { .. } => "bpf",
            Error::Kube { .. } => "kube",
            Error::FixedIpNotHere { .. } => "fixed_ip_not_here",
            Error::FixedIpInvalid { .. } => "fixed_ip_invalid",
            Error::NodeFileInvalid { .. } => "node_file_invalid",
            Error::BadRequest(_) => "bad_request",
            Error::Api(_) => "api",
            Error::LinkMissing { .. } => "link_missing",
        }
    }

    /// Wraps an IO error with what we were doing.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }

    /// Wraps a netlink error with what we were doing.
    pub fn netlink(action: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Netlink {
            action: action.into(),
            source,
        }
    }

    /// Wraps an aya error with what we were doing.
    pub fn bpf(
        action: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Bpf {
            action: action.into(),
            source: Box::new(source),
        }
    }
}
