//! The NodeNetwork side of the operator: one NodeNetwork per node, kept
//! filled with ENI addresses by node IPAM.
//!
//! ```text
//!  watch Node ─▶ node_watch ─▶ POST NodeNetwork (provider, instance, zone from the node;
//!                               bare metal: podCIDRs from the node or from pod_cidr's pool)
//!  watch NodeNetwork ─▶ controller::reconcile ─▶ NodeIpam (observe, plan, execute)
//!                                 └─▶ PATCH …/status (merge, guarded by the read's resourceVersion)
//!  every --full-resync-interval ─▶ full_resync: list each VPC once ─▶ patch drifted
//!                                  NodeNetworks, garbage-collect leaked ENIs
//! ```
//!
//! The decisions are the IPAM core's ([`crate::ipam`]); this folder is the
//! kube-runtime shell around them.

pub mod controller;
pub mod directory;
pub(crate) mod full_resync;
pub mod node_watch;
pub mod pod_cidr;
