//! Fixed IPs for StatefulSets, the pure plan and the cloud steps: each
//! ordinal of a StatefulSet annotated `sextant.io/fixed-ip: "true"` keeps one
//! address across restarts, reschedules and node loss.
//!
//! ```text
//!  StatefulSet + pods + FixedIPs + NodeNetworks ─▶ plan (pure) ─▶ steps
//!      steps ─▶ execute: parking ENI per subnet, assign-with-reassignment moves ─▶ outcomes
//!  periodic: parking ENIs' addresses + every FixedIP ─▶ sweep (pure) ─▶ give back orphans
//! ```
//!
//! Recording the outcomes (FixedIP create / status / delete, NodeNetwork
//! `status.fixedIps`) is the operator's `fixed_ip::controller`.

pub mod execute;
pub mod plan;
pub mod sweep;

#[cfg(test)]
mod tests;
