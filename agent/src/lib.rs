//! Sextant node agent: turns the pod IPs the operator attaches to a node
//! into pod networking. It owns the node's local IP pool (allocation,
//! cooldown, checkpoint, usage report, release handshake), wires pods for
//! `sextant-cni` over netlink, and programs the eBPF datapath with aya.
//! It talks to the operator only through its NodeNetwork, never directly.
//!
//! ```text
//!  kubelet ─exec─▶ sextant-cni ─HTTP/unix─▶ server ─▶ agent ─┬─▶ sextant-agent-core: pool, handshake, checkpoint format (pure)
//!                                                            ├─▶ checkpoint         (temp, fsync, rename)
//!  NodeNetwork ◀─status patch── runtime (watch, reports) ◀───┤
//!  Services/EndpointSlices ─watch─▶ services (pure diff) ────┼─▶ datapath (aya) ─▶ bpffs pins, tc filters
//!                                                            └─▶ veth (rtnetlink) ─▶ pod netns
//! ```
//!
//! The pool, the release handshake, the checkpoint format and the usage
//! report are
//! `sextant-agent-core`'s (pure, time passed in); pure parts still here
//! (`fixed_ip::decide`, `services::desired`/`diff`)
//! take time and state as inputs too. The wire types of the API are
//! `sextant-agent-api`'s. The netns
//! harness that runs this agent for tests, benchmarks and `sextantctl lab`
//! is the `sextant-lab` crate, outside this library.
pub mod agent;
pub mod checkpoint;
pub mod cni;
pub mod datapath;
pub mod error;
pub mod fixed_ip;
mod metrics;
pub mod node_file;
pub mod paths;
pub mod policy;
pub mod policy_watch;
pub mod runtime;
pub mod server;
pub mod services;
pub mod usage;
pub mod veth;

pub use error::{Error, Result};
pub use metrics::Metrics;
