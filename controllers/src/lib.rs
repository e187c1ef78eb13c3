//! Sextant's operator: the NodeNetwork IPAM reconciler and what runs beside
//! it (ENI garbage collection, full resyncs, leader election).
//!
//! The decisions live in pure `plan` functions ([`ipam::plan`], [`ipam::gc`]);
//! [`ipam::node::NodeIpam`] wraps them with the cloud calls and is shared by
//! the Kubernetes controller and by `sextantctl simulate`.
//!
//! Beside IPAM: fixed IPs for StatefulSets ([`fixed_ip`]) and the status of
//! network policies (`policy_status`: the `Accepted` condition and refusal
//! Events; enforcement itself is the agent's).
//!
//! Public only what other targets use: [`args::Args`] and its `run` (the
//! binary); the cloud and node IPAM built from flags, the node watch's pure
//! [`node_network::node_watch::node_network_for`] and the NodeNetwork cache
//! handle (the `--provider sim` test); the NodeNetwork controller's
//! reconcile, status write and error policy and the fixed-IP status patch
//! (the cluster conflict tests). The rest is crate-private.

mod apiserver;
pub mod args;
mod bare_metal;
pub mod fixed_ip;
mod metrics;
pub mod node_network;
mod policy_status;
pub mod run;
#[cfg(feature = "sim")]
mod sim;

/// Node IPAM and the fixed-IP plan are the IPAM core's.
pub use sextant_ipam as ipam;
use sextant_ipam::{Error, with_resource_version};
pub use sextant_ipam::{make_status_patch, status_patch};
