//! Extender errors. Those raised while answering kube-scheduler end up in
//! the `Error` field of an `ExtenderFilterResult` (or an HTTP error status for
//! prioritize), so their text is written for the pod's `FailedScheduling`
//! event.

use std::time::Duration;

/// Result of extender work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request, a lookup or the process failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not the JSON of kube-scheduler's `ExtenderArgs`.
    #[error("request body is not ExtenderArgs JSON")]
    BadRequest {
        /// The parser's complaint (line, column, what was expected).
        #[source]
        source: serde_json::Error,
    },
    /// `ExtenderArgs.Pod` is missing or null.
    #[error("ExtenderArgs has no Pod")]
    NoPod,
    /// Neither `NodeNames` (nodeCacheCapable) nor `Nodes` was sent.
    #[error("ExtenderArgs has neither NodeNames nor Nodes")]
    NoNodes,
    /// The pod in the request has no `metadata.name`.
    #[error("pod in ExtenderArgs has no metadata.name")]
    PodWithoutName,
    /// The body is larger than `--max-body-bytes`.
    #[error("request body exceeds {limit} bytes (--max-body-bytes)")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// The connection failed while the body was read.
    #[error("reading the request body")]
    BodyRead {
        /// What the HTTP layer reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The body did not arrive within the request deadline.
    #[error("request body not received within {deadline:?} (--request-timeout)")]
    BodyTimeout {
        /// The configured deadline.
        deadline: Duration,
    },
    /// The watches have not delivered their first full list yet.
    #[error("index not synced yet: still listing {pending} (watches started, no full list yet)")]
    NotSynced {
        /// Which kinds are still missing (`NodeNetworks`, `FixedIPs`, or both).
        pending: &'static str,
    },
    /// The pod's FixedIP carries an address that is not IPv4.
    #[error("FixedIP {namespace}/{name}: spec.ip {ip:?} is not an IPv4 address")]
    BadFixedIp {
        /// Namespace of the FixedIP (and pod).
        namespace: String,
        /// Name of the FixedIP (and pod).
        name: String,
        /// The address as written.
        ip: String,
        /// The parser's complaint.
        #[source]
        source: std::net::AddrParseError,
    },
    /// The pod asks for a fixed IP (annotation) but no FixedIP is reserved yet.
    #[error(
        "pod {namespace}/{name} is annotated {annotation}=true but FixedIP {namespace}/{name} does not exist yet; the FixedIP controller reserves it, scheduling retries"
    )]
    FixedIpMissing {
        /// Namespace of the pod.
        namespace: String,
        /// Name of the pod.
        name: String,
        /// The annotation that asked for it.
        annotation: &'static str,
    },
    /// The response could not be encoded.
    #[error("encoding the response")]
    Encode {
        /// The encoder's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The listen address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The SIGTERM/SIGINT handlers could not be installed.
    #[error("installing the SIGTERM/SIGINT handlers")]
    Signal {
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file or the TLS configuration cannot be used.
    #[error(transparent)]
    Tls(#[from] sextant_kit::tls::TlsError),
    /// No Kubernetes client could be built (no kubeconfig, no in-cluster env).
    #[error("building the Kubernetes client")]
    Kube {
        /// kube's error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::BadRequest { .. } => "bad_request",
            Error::NoPod => "no_pod",
            Error::NoNodes => "no_nodes",
            Error::PodWithoutName => "pod_without_name",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::BodyRead { .. } => "body_read",
            Error::BodyTimeout { .. } => "body_timeout",
            Error::NotSynced { .. } => "not_synced",
            Error::BadFixedIp { .. } => "bad_fixed_ip",
            Error::FixedIpMissing { .. } => "fixed_ip_missing",
            Error::Encode { .. } => "encode",
            Error::Bind { .. } => "bind",
            Error::Signal { .. } => "signal",
            Error::Tls(e) => e.metric_label(),
            Error::Kube { .. } => "kube",
        }
    }

    /// Whether the request itself is at fault (HTTP 400 where no result
    /// body can carry the message), as opposed to the extender's state.
    pub fn is_bad_request(&self) -> bool {
        matches!(
            self,
            Error::BadRequest { .. }
                | Error::NoPod
                | Error::NoNodes
                | Error::PodWithoutName
                | Error::BodyTooLarge { .. }
                | Error::BodyRead { .. }
                | Error::BodyTimeout { .. }
        )
    }
}
