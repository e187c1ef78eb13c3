//! What the agent watches outside the policy: the Kubernetes objects and
//! files that tell it its node's addresses, fixed IPs and services.
//!
//! ```text
//!  NodeNetwork (API) ─watch─▶ node_network ─▶ Agent::apply_node, usage report into status
//!  NodeNetwork file ─poll─▶ node_file ─▶ Agent::apply_node        (labs, sextantctl lab)
//!  FixedIP (cluster) ─watch─▶ fixed_ip::FixedIpCache ─▶ CNI ADD's fixed-IP decision
//!  Services + EndpointSlices ─watch─▶ services::desired / diff ─▶ datapath service maps
//! ```

pub(crate) mod fixed_ip;
pub mod node_file;
pub(crate) mod node_network;
pub(crate) mod services;
