//! What can go wrong building or driving a lab.

use std::{net::SocketAddrV4, process::ExitStatus, time::Duration};

/// Result of lab work.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A lab failure, each with what the lab was doing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This machine cannot build labs (not root, no iproute2).
    #[error("cannot build a lab here: {0}")]
    CannotRun(String),
    /// A system call or file operation failed.
    #[error("{action}")]
    Io {
        /// What the lab was doing.
        action: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A command (`ip netns ...`) exited non-zero.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A helper thread (in a netns) panicked.
    #[error("{what} thread panicked")]
    Panicked {
        /// Which helper.
        what: &'static str,
    },
    /// The agent's API answered an error or not at all.
    #[error(transparent)]
    Agent(#[from] sextant_agent_api::Error),
    /// The agent process ended before it was ready.
    #[error("sextant-agent exited before it was ready: {status}")]
    AgentExited {
        /// Its exit status.
        status: ExitStatus,
    },
    /// The agent did not reach `what` within `after`.
    #[error("sextant-agent: {what} after {after:?}")]
    AgentSlow {
        /// What was still missing.
        what: String,
        /// How long the lab waited.
        after: Duration,
    },
    /// The lab has no pod with this index (or it has no IP yet).
    #[error("lab pod {index} {why}")]
    NoPod {
        /// The index asked for.
        index: usize,
        /// `does not exist` or `has no IP`.
        why: &'static str,
    },
    /// `sextant-cni` failed or printed a result without an address.
    #[error("sextant-cni {command}: {reason}: {output}")]
    Cni {
        /// `ADD`, `DEL`, `CHECK`.
        command: &'static str,
        /// What is wrong.
        reason: String,
        /// What the plugin printed.
        output: String,
    },
    /// A line server did not start.
    #[error("line server on {at}: {reason}")]
    Server {
        /// Its address.
        at: SocketAddrV4,
        /// Why.
        reason: String,
    },
    /// The demo's example network policy could not be read or was refused.
    #[error("the example network policy: {reason}")]
    Policy {
        /// Why.
        reason: String,
    },
}

impl Error {
    /// Low-cardinality label (for a bench's or a test's summary).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::CannotRun(_) => "cannot_run",
            Error::Io { .. } => "io",
            Error::Command { .. } => "command",
            Error::Panicked { .. } => "panicked",
            Error::Agent(e) => e.metric_label(),
            Error::AgentExited { .. } => "agent_exited",
            Error::AgentSlow { .. } => "agent_slow",
            Error::NoPod { .. } => "no_pod",
            Error::Cni { .. } => "cni",
            Error::Server { .. } => "server",
            Error::Policy { .. } => "policy",
        }
    }

    /// Wraps an IO error with what the lab was doing.
    pub fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            action: action.into(),
            source,
        }
    }
}
