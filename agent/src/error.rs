//! Agent errors.

use std::{net::Ipv4Addr, path::PathBuf};

/// Result of agent work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Deadline of one API server call on a path that must not hang (a CNI
/// ADD's FixedIP lookup, a usage report): kube sets no read timeout of its
/// own short of [`sextant_kit::client::READ_TIMEOUT`].
pub const API_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

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
    /// The API server did not answer a call within its deadline.
    #[error("kubernetes: {action}: no answer within {after:?}")]
    ApiDeadline {
        /// What we were doing.
        action: String,
        /// The deadline.
        after: std::time::Duration,
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
    /// An agent API request body could not be read.
    #[error("bad request: reading body")]
    RequestRead {
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An agent API request body larger than its endpoint takes (413).
    #[error("request body over {limit} bytes for {route}")]
    BodyTooLarge {
        /// `METHOD /path`.
        route: String,
        /// The endpoint's limit in bytes.
        limit: usize,
    },
    /// A mutating agent API call from a peer that may not make it (403).
    #[error("{route} needs uid 0 or an allowed uid/gid; the peer is {peer}")]
    Forbidden {
        /// `METHOD /path`.
        route: String,
        /// The peer's credentials as the socket reported them.
        peer: String,
    },
    /// An agent API request body does not decode into its wire type.
    #[error("bad request: request body")]
    RequestBody {
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A required request field is empty.
    #[error("bad request: {field} is required")]
    MissingField {
        /// The field, as the wire names it (`containerId`, `ifname`, `netns`).
        field: &'static str,
    },
    /// The pod interface name is no Linux interface name.
    #[error("bad request: invalid interface name {ifname:?}")]
    InvalidIfname {
        /// The name asked for.
        ifname: String,
    },
    /// CNI CHECK of a container interface that holds no IP here.
    #[error("bad request: no IP allocated to {key}")]
    NotAllocated {
        /// Container and interface.
        key: sextant_agent_api::AllocKey,
    },
    /// CNI CHECK: the pod interface does not carry its IP.
    #[error("bad request: {ifname} in {netns} does not carry {ip}/32")]
    PodAddressMissing {
        /// Pod interface.
        ifname: String,
        /// Pod network namespace.
        netns: String,
        /// The IP it should carry.
        ip: Ipv4Addr,
    },
    /// CNI CHECK: the pod's host veth is gone.
    #[error("bad request: host veth {host} is missing")]
    HostVethMissing {
        /// Host veth name.
        host: String,
    },
    /// CNI CHECK: the datapath's filter is not on the pod's host veth.
    #[error("bad request: datapath not attached to {host}")]
    DatapathNotAttached {
        /// Host veth name.
        host: String,
    },
    /// A service write while the agent runs without the datapath.
    #[error("bad request: no datapath loaded")]
    NoDatapath,
    /// A frontend with more backends than the map's count can say.
    #[error("bad request: too many backends for {vip}:{port}")]
    TooManyBackends {
        /// Frontend address.
        vip: Ipv4Addr,
        /// Frontend port.
        port: u16,
    },
    /// A list flag entry that does not parse.
    #[error("bad request: {flag} entry {value:?} {reason}")]
    InvalidFlag {
        /// The flag (`--static-pool`, `--policy-fail-open-selector`).
        flag: &'static str,
        /// The entry.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
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
            Error::ApiDeadline { .. } => "api_deadline",
            Error::FixedIpNotHere { .. } => "fixed_ip_not_here",
            Error::FixedIpInvalid { .. } => "fixed_ip_invalid",
            Error::NodeFileInvalid { .. } => "node_file_invalid",
            Error::RequestRead { .. }
            | Error::RequestBody { .. }
            | Error::MissingField { .. }
            | Error::InvalidIfname { .. }
            | Error::NotAllocated { .. }
            | Error::PodAddressMissing { .. }
            | Error::HostVethMissing { .. }
            | Error::DatapathNotAttached { .. }
            | Error::NoDatapath
            | Error::TooManyBackends { .. }
            | Error::InvalidFlag { .. } => "bad_request",
            Error::Api(_) => "api",
            Error::LinkMissing { .. } => "link_missing",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::Forbidden { .. } => "forbidden",
        }
    }

    /// Whether the request (or flag) was at fault: the API answers 400 and
    /// the metric label is `bad_request`.
    pub fn is_bad_request(&self) -> bool {
        self.metric_label() == "bad_request"
    }

    /// Runs one API server call `call` (doing `action`) bounded by
    /// [`API_DEADLINE`]: a hung API server costs the caller that long, never
    /// more.
    pub async fn kube_call<T>(
        action: impl FnOnce() -> String,
        call: impl std::future::Future<Output = std::result::Result<T, kube::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(API_DEADLINE, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(source)) => Err(Error::Kube {
                action: action(),
                source: Box::new(source),
            }),
            Err(_) => Err(Error::ApiDeadline {
                action: action(),
                after: API_DEADLINE,
            }),
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
