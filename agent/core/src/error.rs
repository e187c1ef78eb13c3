//! What the pure parts refuse.

use std::net::Ipv4Addr;

/// Result of core work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A refusal of the pool or of a checkpoint restore.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No IP is free for a CNI ADD.
    #[error(
        "no free pod IP: {allocated} allocated, {cooling} in cooldown, {releasing} being released of {pool}"
    )]
    PoolExhausted {
        /// IPs attached to the node.
        pool: usize,
        /// IPs handed out.
        allocated: usize,
        /// Freed IPs still in cooldown.
        cooling: usize,
        /// IPs promised to the operator for release.
        releasing: usize,
    },
    /// Two checkpointed allocations hold the same IP: a double assignment.
    #[error("checkpoint assigns {ip} twice: to {first} and to {second}; refusing to restore")]
    DuplicateIp {
        /// The IP.
        ip: Ipv4Addr,
        /// First owner (`containerId/ifname`).
        first: String,
        /// Second owner.
        second: String,
    },
    /// A fixed IP cannot go to the pod asking for it.
    #[error("fixed IP {ip} cannot go to {pod}: {why}")]
    FixedIpUnavailable {
        /// The address.
        ip: Ipv4Addr,
        /// `namespace/name` of the pod asking.
        pod: String,
        /// Whom it belongs to or who holds it.
        why: String,
    },
}

impl Error {
    /// Label for metrics (the agent counts errors by it).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::PoolExhausted { .. } => "pool_exhausted",
            Error::DuplicateIp { .. } => "duplicate_ip",
            Error::FixedIpUnavailable { .. } => "fixed_ip_unavailable",
        }
    }
}
