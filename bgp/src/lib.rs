//! BGP direct routing for bare-metal nodes, with BIRD 2 as the speaker.
//!
//! Each node runs BIRD in its own container; this crate is the agent's side
//! of it. It never speaks BGP itself: it renders BIRD's configuration from
//! what the node owns, hands it to BIRD over the control socket, and reads
//! back what BIRD did.
//!
//! ```text
//!  NodeNetwork (podCIDRs, fixedIPs) ─┐
//!  peers file (Helm values, Secret) ─┴─▶ Desired ──render──▶ bird.conf text
//!                                                              │
//!           Speaker: write candidate ─▶ birdc `configure check` ─▶ rename ─▶ `configure`
//!                                                              │
//!           birdc `show protocols all` / `show route export` / `show bfd sessions`
//!                                                              ▼
//!                                                sextant_bgp_* metrics, last error
//! ```
//!
//! The pure parts ([`render`], the reply parsers in [`birdc`]) take plain
//! data; [`Speaker`] does the IO. Sextant exports only the node's pod CIDRs
//! and the /32s of the FixedIPs on it, and imports nothing.

pub mod birdc;
mod desired;
mod metrics;
mod peer;
mod prefix;
pub mod render;
mod speaker;

pub use desired::Desired;
pub use metrics::Metrics;
pub use peer::{BfdSpec, GracefulRestartSpec, Peer, PeerSpec, PeersFile};
pub use prefix::Ipv4Net;
pub use speaker::{Applied, Speaker, SpeakerConfig};

use std::path::PathBuf;

/// Everything that can go wrong between the inputs, the files and BIRD.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CIDR or address that does not parse as an IPv4 network.
    #[error("{value:?} is not an IPv4 CIDR: {reason}")]
    Cidr { value: String, reason: &'static str },
    /// A peer address that is not a usable IPv4 unicast address.
    #[error("peer address {value:?} is not an IPv4 unicast address: {reason}")]
    PeerAddress { value: String, reason: &'static str },
    /// A peer whose settings cannot be rendered.
    #[error("peer {peer}: {reason}")]
    Peer { peer: String, reason: String },
    /// Two peers with the same address.
    #[error("peer {peer} is listed more than once")]
    DuplicatePeer { peer: String },
    /// The peers file could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The peers file is not valid JSON for [`PeersFile`].
    #[error("parsing peers file {path}: {source}")]
    PeersFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// BIRD's control socket could not be reached or broke mid-reply.
    #[error("BIRD control socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// BIRD did not answer within the timeout.
    #[error("BIRD control socket {path}: no reply to {command:?} within {timeout_ms} ms")]
    Timeout {
        path: PathBuf,
        command: String,
        timeout_ms: u128,
    },
    /// A reply line that does not follow the control protocol.
    #[error("BIRD reply line {line:?} does not follow the control protocol: {reason}")]
    Protocol { line: String, reason: &'static str },
    /// A command BIRD answered with an error code (8xxx run-time, 9xxx parse).
    #[error("BIRD refused {command:?}: {code} {message}")]
    Bird {
        command: String,
        code: u16,
        message: String,
    },
    /// A configuration BIRD's `configure check` (or `configure`) rejected;
    /// the running configuration stays.
    #[error("BIRD rejected the configuration, the last good one stays: {message}")]
    Rejected { message: String },
    /// A file name that cannot be quoted for a birdc command.
    #[error("path {path:?} cannot be passed to birdc (needs UTF-8 without quotes or backslashes)")]
    Path { path: PathBuf },
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Cidr { .. } | Error::PeerAddress { .. } => "invalid_input",
            Error::Peer { .. } | Error::DuplicatePeer { .. } => "invalid_peer",
            Error::Io { .. } | Error::PeersFile { .. } | Error::Path { .. } => "file",
            Error::Socket { .. } | Error::Timeout { .. } => "socket",
            Error::Protocol { .. } => "protocol",
            Error::Bird { .. } => "bird_error",
            Error::Rejected { .. } => "rejected",
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
