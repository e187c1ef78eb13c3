//! Fixed IPs for StatefulSets, the pure plan and the cloud steps: each
//! ordinal of a StatefulSet annotated `sextant.io/fixed-ip: "true"` keeps one
//! address across restarts, reschedules and node loss.
//!
//! ```text
//!  StatefulSet + pods + FixedIPs + NodeNetworks ─▶ plan (pure) ─▶ steps
//!      steps ─▶ record::claims: the destination's status.fixedIps names the pod (first)
//!      steps ─▶ execute: parking ENI per subnet, assign-with-reassignment moves ─▶ outcomes
//!      outcomes ─▶ record::gives_up / moved_off_patch: the old node lets go ─▶ FixedIP status
//!  periodic: parking ENIs' addresses + every FixedIP ─▶ sweep (pure) ─▶ give back orphans
//! ```
//!
//! The NodeNetwork writes and their order are decided here ([`record`]);
//! sending them, and the FixedIP create / status / delete, is the
//! operator's `fixed_ip::controller` (and `sextantctl roll`'s in-memory store).

pub mod execute;
pub mod plan;
pub mod record;
pub mod sweep;

#[cfg(test)]
mod tests;
