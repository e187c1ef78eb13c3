//! Sextant's network policy core: pure functions, no I/O.
//!
//! ```text
//!  SextantNetworkPolicy ─┐                      SextantIdentity objects ─┐
//!  CiliumNetworkPolicy ──┼─ parse ─▶ Policy ─┐   pods, nodes, local pods ─┤
//!  NetworkPolicy ────────┘  (or every        ├─▶ compute / PolicyEngine ◀┘
//!                            problem, by path)│        │
//!                                             │        ▼
//!                                             │   MapContents ─ diff ─▶ MapDiff ─▶ agent's BPF maps
//!                                             │   (policy LPM, enforced, ipcache, policy names)
//! ```
//!
//! What it decides: which policy sources are accepted (and why not), the
//! identity numbers label sets get, and what the datapath's policy, enforced
//! and ipcache maps hold. What it leaves to its callers: watching the API,
//! creating `SextantIdentity` objects, writing status, and the BPF maps.

mod compute;
mod convert;
mod engine;
mod error;
pub mod identity;
mod labels;
mod model;
mod parse;
pub mod ports;

pub use compute::{
    Direction, ENFORCE_EGRESS, ENFORCE_INGRESS, MapContents, MapDiff, Nodes, PolicyKey,
    PolicyValue, compute, diff,
};
pub use convert::{cilium_to_sextant, policy_documents};
pub use engine::PolicyEngine;
pub use error::{Error, Problem, ProblemKind, Result};
pub use identity::{CidrIdentities, Prefix, allocate};
pub use labels::{
    IGNORED_POD_LABELS, Labels, NAMESPACE_LABELS_PREFIX, Operator, POD_NAMESPACE_LABEL,
    Requirement, SERVICE_ACCOUNT_LABEL, Selector, pod_labels,
};
pub use model::{
    Entity, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Peer, Peers, Policy, PolicyKind, PolicyRef,
    PolicySpec, PortRange, Rule,
};
pub use parse::{DEFAULT_NAMESPACE, from_network_policy, from_sextant, parse_value};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Condition, jiff::Timestamp};

/// The `Accepted` condition for a parse outcome: `True`/`Enforced`, or
/// `False` with reason `Unsupported`/`Invalid` and every problem in the message.
pub fn accepted_condition(
    outcome: &Result<Policy>,
    observed_generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    match outcome {
        Ok(_) => sextant_crds::condition(
            sextant_crds::POLICY_ACCEPTED,
            true,
            sextant_crds::REASON_ENFORCED,
            "every rule is enforced",
            observed_generation,
            now,
        ),
        Err(e) => sextant_crds::condition(
            sextant_crds::POLICY_ACCEPTED,
            false,
            e.reason(),
            e.problems_text(),
            observed_generation,
            now,
        ),
    }
}
