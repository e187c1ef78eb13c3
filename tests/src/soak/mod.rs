//! The chaos soak's parts (issue 14): kwok nodes each with a real
//! `sextant-agent` in a network namespace of its own, a small kubelet that
//! makes each node's agent hold the pods bound to that node, and an auditor
//! that counts wrong address ownership across the operator's NodeNetwork
//! statuses, the agents and the pods. `tests/tests/cluster_soak.rs` drives
//! them against the real control plane and the real operator.
//!
//! ```text
//!  kube-apiserver ◀── sextant-operator (--provider sim) ── NodeNetwork status, FixedIPs
//!     │  ▲
//!     │  └── sextant-agent ×N, each in its netns (node::SoakNode), NODE_NAME=<kwok node>
//!     │            ▲ POST /v1/cni/add|del (agent socket)
//!     └─ pods ──▶ kubelet::Kubelet (pod netns per pod)
//!  audit::audit(NodeNetworks, GET /v1/ipam + /v1/healthz per agent, pods, ADD history) ──▶ Row
//! ```

pub mod audit;
pub mod kubelet;
pub mod node;
