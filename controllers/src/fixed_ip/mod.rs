//! Fixed IPs for StatefulSets: each ordinal of a StatefulSet annotated
//! `sextant.io/fixed-ip: "true"` keeps one address, recorded in a `FixedIP`
//! named after the pod, across restarts, reschedules and node loss.
//!
//! ```text
//!  StatefulSet + pods + FixedIPs + NodeNetworks ─▶ plan (pure) ─▶ steps
//!      steps ─▶ execute: parking ENI per subnet, assign-with-reassignment moves ─▶ outcomes
//!      outcomes ─▶ FixedIP create / status / delete, NodeNetwork status.fixedIps
//! ```
//!
//! The scheduler extender keeps a fixed-IP pod on nodes where its address can
//! follow (same zone, an ENI in the subnet or a free ENI slot); the agent's
//! CNI ADD waits, bounded, until the address is on its node's ENI.

pub mod controller;
pub(crate) use sextant_ipam::fixed_ip::{execute, plan, record, sweep};
