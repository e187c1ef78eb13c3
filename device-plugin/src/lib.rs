//! Sextant's kubelet device plugin: advertises the pod IPs a node can hold as
//! the extended resource `sextant.io/ip`, so kube-scheduler never places a pod
//! on a node with no IP left.
//!
//! It speaks the kubelet device-plugin API v1beta1 (gRPC over unix sockets in
//! `/var/lib/kubelet/device-plugins/`) and reads the node agent's
//! `GET /v1/healthz` (docs/agent-api.md). It holds no IPs itself: the agent's
//! IPAM hands out addresses at CNI ADD; the devices only make the scheduler
//! count them.
//!
//! ```text
//!  agent.sock                 poll every --poll-interval
//!  GET /v1/healthz ---------> devices::plan(prev, observation) -> DeviceList
//!                                        | watch channel (only on change)
//!                                        v
//!  kubelet <--- ListAndWatch ---- plugin::IpDevicePlugin (sextant-ip.sock)
//!  kubelet.sock <--- Register --- runtime: serve first, then register; poll
//!                                 the directory and serve + register again
//!                                 when kubelet restarts (sockets deleted)
//! ```
//!
//! Boundaries: [`devices`] is pure (no IO, no clock); the agent client and
//! its wire types are `sextant-agent-api`'s (the plugin links nothing of
//! the agent itself); //! [`registration`] are the clients; [`plugin`] is the gRPC service;
//! [`runtime`] wires them with deadlines on every call.

pub mod api;
pub mod devices;
mod error;
pub mod metrics;
pub mod paths;
pub mod plugin;
pub mod registration;
pub mod runtime;

pub use error::{Error, Result};
