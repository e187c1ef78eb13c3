//! The agent's policy sync: the desired policy state as a
//! [`PolicySnapshot`] (from the API server's objects, or from the agent API
//! in labs), turned by the policy engine into incremental writes of the
//! datapath's policy maps.
//!
//! ```text
//!  API server ─reflectors─▶ watch::snapshot ─▶ PolicySnapshot ─▶ sync::NodePolicy ─▶ MapDiff ─▶ datapath policy maps
//!  agent API (POST policy) ────────────────────────┘                 └─▶ report (rejected, verdicts, events)
//! ```
//!
//! - `sync`: snapshot types, [`NodePolicy`] (snapshot to engine operations)
//!   and the map writes of a diff;
//! - `watch`: the kube side — reflectors, snapshots after each burst,
//!   `SextantIdentity` publishing and policy events.

mod sync;
pub(crate) mod watch;

pub use sync::{
    NodePolicy, PodInfo, PolicyReport, PolicySnapshot, REASON_TOO_LARGE, Rejected, write_all,
    write_diff,
};
