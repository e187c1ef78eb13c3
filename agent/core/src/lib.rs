//! The node agent's pure decisions, shared by the agent and by anything
//! that must decide exactly as the agent does (`sextantctl simulate`'s
//! simulated agents, property tests).
//!
//! ```text
//!  node::LocalIpam: one node's pool, what its NodeNetwork says, pods waiting, when to report
//!  CNI ADD/DEL ──(now_ms)──▶ pool::Pool ◀──(now_ms)── handshake::plan ◀── NodeNetwork status.release
//!                              │   ▲                        │
//!        checkpoint::Checkpoint::of   checkpoint::restore + apply (after a restart)
//!                              ▼   │                        ▼
//!                      (the agent writes / reads the file)  answers for status.release
//!
//!  Services + EndpointSlices ─▶ services::desired ─▶ services::diff(installed) ─▶ service map writes
//!  time away from the control plane ─▶ fail_open::PolicyFailOpen::due / selects ─▶ pods to open
//! ```
//!
//! Boundaries: no IO and no clock: time comes in as milliseconds since the
//! Unix epoch (so a checkpoint carries cooldown deadlines across restarts)
//! or as a measured duration (the fail-open delay). No kube client, aya,
//! netlink or tokio; the only outside vocabulary is the agent API's types,
//! the CRDs (release states, the NodeNetwork the usage report is computed
//! from) and k8s-openapi's Service and EndpointSlice.

pub mod checkpoint;
mod error;
pub mod fail_open;
pub mod fixed_ip;
pub mod handshake;
pub mod node;
pub mod pool;
pub mod services;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage;

pub use error::{Error, Result};
