//! Node IPAM: keep every node's pool of ENI secondary IPs between its
//! watermarks, through the cloud's rate limits.
//!
//! ```text
//!  NodeNetwork ─▶ node::NodeIpam::reconcile ─▶ plan::plan (pure) ─▶ execute::execute ─▶ EniCloud
//!                       ▲                                                   │
//!                       └──── resync (one scoped describe per mutation) ◀───┘
//!  periodic: resync::list_vpc (paged, whole VPC) ─▶ every node's ENIs; gc::plan_gc ─▶ delete leaked ENIs
//! ```

pub mod execute;
pub mod gc;
pub mod node;
pub mod plan;
pub mod resync;
pub mod status;
pub mod watermark;

#[cfg(test)]
mod tests;
