//! Sextant node agent: turns the pod IPs the operator attaches to a node
//! into pod networking. It owns the node's local IP pool (allocation,
//! cooldown, checkpoint, usage report, release handshake), wires pods for
//! `sextant-cni` over netlink, and programs the eBPF datapath with aya.
//! It talks to the operator only through its NodeNetwork, never directly.
//!
//! ```text
//!  kubelet ─exec─▶ sextant-cni ─HTTP/unix─▶ server ─▶ agent ─┬─▶ sextant-agent-core: pool, handshake, checkpoint format (pure)
//!                                                            ├─▶ checkpoint         (temp, fsync, rename)
//!  NodeNetwork ◀─status patch── watch::node_network ◀────────┤
//!  Services/EndpointSlices ─watch─▶ watch::services ─────────┼─▶ datapath (aya) ─▶ bpffs pins, tc filters
//!  policies, pods, ... ─watch─▶ policy (sync) ───────────────┤
//!                                                            └─▶ cni::veth (rtnetlink) ─▶ pod netns
//! ```
//!
//! The folders:
//!
//! - `cni/`: the `sextant-cni` plugin and the pod plumbing (veth);
//! - `datapath/`: the eBPF datapath — loader, maps, services, policy,
//!   conntrack;
//! - `policy/`: the policy sync (snapshot to engine to map writes) and its
//!   kube watch;
//! - `watch/`: the NodeNetwork (API or file), FixedIP and Service watches;
//! - `agent/` (the state the server, watches and loops share, one file per
//!   concern: CNI, NodeNetwork, policy, status), `server.rs`
//!   (the agent API), `request.rs` (its parsed requests), `runtime.rs` (flags and wiring), `checkpoint.rs`,
//!   `usage.rs`, `metrics.rs`, `error.rs`, `paths.rs`.
//!
//! The pool, the release handshake, the checkpoint format, the usage
//! report, the fixed-IP decision, the service diff and the policy
//! fail-open decision are `sextant-agent-core`'s (pure, time passed in);
//! no decision is made here. The wire types of the API are
//! `sextant-agent-api`'s. The netns harness that runs this agent for tests,
//! benchmarks and `sextantctl lab` is the `sextant-lab` crate, outside this
//! library.
// Public: what the two binaries, `sextant-lab`, this crate's integration
// tests and benches use. Everything else is the agent's own.
pub(crate) mod agent;
pub(crate) mod checkpoint;
pub mod cni;
pub mod datapath;
mod error;
mod metrics;
pub(crate) mod paths;
pub mod policy;
pub(crate) mod request;
pub mod runtime;
pub(crate) mod server;
pub(crate) mod usage;
pub mod watch;

pub use error::{Error, Result};
