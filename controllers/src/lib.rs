//! Sextant's operator: the NodeNetwork IPAM reconciler and what runs beside
//! it (ENI garbage collection, full resyncs, leader election).
//!
//! The decisions live in pure `plan` functions ([`ipam::plan`], [`ipam::gc`]);
//! [`ipam::node::NodeIpam`] wraps them with the cloud calls and is shared by
//! the Kubernetes controller and by `sextantctl simulate`.
//!
//! Beside IPAM: fixed IPs for StatefulSets ([`fixed_ip`]) and the status of
//! network policies ([`policy_status`]: the `Accepted` condition and refusal
//! Events; enforcement itself is the agent's).

pub mod apiserver;
pub mod args;
pub mod fixed_ip;
pub mod metrics;
pub mod node_network;
pub mod policy_status;
pub mod run;
#[cfg(feature = "sim")]
pub mod sim;

/// Node IPAM and the fixed-IP plan are the IPAM core's.
pub use sextant_ipam as ipam;
pub use sextant_ipam::{Error, Result, make_status_patch, status_patch, with_resource_version};
