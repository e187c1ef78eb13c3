//! `sextant-ipam`: the decisions and cloud steps of node IPAM and of fixed
//! IPs, with no Kubernetes client. Node IPAM keeps every node's pool of ENI
//! secondary IPs between its watermarks, through the cloud's rate limits;
//! fixed IPs give each StatefulSet ordinal one sticky address.
//!
//! ```text
//!  NodeNetwork ─▶ node::NodeIpam::reconcile ─▶ plan::plan (pure) ─▶ execute::execute ─▶ EniCloud
//!                       ▲                                                   │
//!                       └──── resync (one scoped describe per mutation) ◀───┘
//!                 status::make_status_patch (record: the merge patch the shell writes)
//!  periodic: resync::list_vpc (paged, whole VPC) ─▶ every node's ENIs; gc::plan_gc ─▶ delete leaked ENIs
//!  fixed IPs: fixed_ip::plan (pure: StatefulSet, pods, FixedIPs, nodes ─▶ steps)
//!             ─▶ fixed_ip::execute (parking ENIs, moves) ─▶ outcomes ─▶ FixedIP status
//! ```
//!
//! Boundaries: no kube client or runtime (the CRD types of `sextant-crds` are
//! plain data here), no cloud SDK (only the `EniCloud` trait of
//! `sextant-cloud`). The operator (`sextant-operator`) is the kube shell
//! around this crate; `sextantctl simulate`, `roll` and `bench` drive the very
//! same functions on the simulated cloud.

mod error;
pub mod execute;
pub mod fixed_ip;
pub mod gc;
pub mod metrics;
pub mod node;
pub mod plan;
pub mod resync;
pub mod status;
pub mod watermark;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use status::{make_status_patch, status_patch, with_resource_version};
