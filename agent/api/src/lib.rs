//! The node agent's API (docs/agent-api.md): the wire types every party
//! shares, the socket path, and the one client that speaks it.
//!
//! ```text
//!  sextant-cni ──blocking::call_json (std IO, no runtime)──┐
//!  device plugin ──Client::healthz────────────────────────┼─▶ /var/run/sextant/api/agent.sock ─▶ sextant-agent server
//!  sextantctl lab, tests, benches ──call / call_json──────┘      (HTTP/1.1, JSON bodies of `types`)
//! ```
//!
//! Boundaries: serde types and an HTTP/1.1-over-unix-socket client only.
//! No kube, aya, netlink or agent logic: the agent's server and state depend
//! on this crate, never the other way round, so the CNI plugin and the
//! device plugin link nothing of the agent.

pub mod blocking;
mod client;
mod error;
pub mod types;

pub use client::{Client, call, call_json};
pub use error::{Error, Result};
pub use types::*;

/// The agent API socket: alone in its directory, so the device plugin can
/// mount that directory (read-only) and see nothing else of the agent.
pub const SOCKET_PATH: &str = "/var/run/sextant/api/agent.sock";

/// Path of the health endpoint.
pub const HEALTHZ_PATH: &str = "/v1/healthz";
