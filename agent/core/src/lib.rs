//! The node agent's pure decisions, shared by the agent and by anything
//! that must decide exactly as the agent does (`sextantctl simulate`'s
//! simulated agents, property tests).
//!
//! ```text
//!  CNI ADD/DEL ──(now_ms)──▶ pool::Pool ◀──(now_ms)── handshake::plan ◀── NodeNetwork status.release
//!                              │   ▲                        │
//!        checkpoint::Checkpoint::of   checkpoint::restore + apply (after a restart)
//!                              ▼   │                        ▼
//!                      (the agent writes / reads the file)  answers for status.release
//! ```
//!
//! Boundaries: no IO and no clock: time comes in as milliseconds since the
//! Unix epoch, so a checkpoint carries cooldown deadlines across restarts.
//! No kube client, aya, netlink or tokio; the only outside vocabulary is the
//! agent API's allocation types and the CRDs (release states, the
//! NodeNetwork the usage report is computed from).

pub mod checkpoint;
mod error;
pub mod handshake;
pub mod pool;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod usage;

pub use error::{Error, Result};
