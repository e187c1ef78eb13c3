//! `sextant-lab`: a Sextant node in network namespaces on this machine,
//! for tests, benchmarks and `sextantctl lab`. Needs root and iproute2.
//!
//! ```text
//!  test / bench / sextant-lab bin
//!        │  Lab::new(LabConfig)          ip netns add <prefix>-node, <prefix>-p0..pN
//!        │  Lab::start_agent ───spawn──▶ sextant-agent --netns <node> --socket … (real binary)
//!        │  Lab::add(i) ────────exec───▶ sextant-cni ADD in <node> for pod i ──▶ agent API
//!        │  line_server / probe ───────▶ TCP inside pod namespaces (netns threads)
//!        │  lab.health / set_service / set_policy ──sextant-agent-api──▶ agent socket
//!        ▼  drop(Lab)                    kill the agent, delete namespaces, pins, state
//! ```
//!
//! Boundaries: a harness, never linked into a production binary. It drives
//! the agent only from outside (its binaries, its API, its NodeNetwork
//! file), and borrows from the agent library only shared vocabulary (the
//! policy snapshot body, the datapath's counter names, the NodeNetwork file
//! parser). Everything it creates carries the lab's prefix and is removed
//! on drop, so labs with distinct prefixes run in parallel.

pub mod demo;
mod error;
pub mod netns;
mod node;
mod traffic;

pub use demo::{DemoReport, PodAddress, Probe, demo, demo_with};
pub use error::{Error, Result};
pub use netns::{can_run, cni_exec, cni_exec_as, in_netns, spawn_in_netns};
pub use node::{Lab, LabConfig, LabPod, LabPool, ip_of_add_result, net_conf};
pub use traffic::line_server;
