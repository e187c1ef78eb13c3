//! The CNI side of the agent: the `sextant-cni` plugin (kubelet's runtime
//! execs it; it forwards to the agent's socket) and the pod plumbing the
//! agent does for it over netlink (veth pair, addresses, routes).
//!
//! ```text
//!  runtime ─exec─▶ sextant-cni ─ plugin::run ─HTTP/unix─▶ agent ─▶ veth::setup / teardown ─▶ pod netns
//!                              └─ DEL, agent down ─────────────────▶ veth::teardown (host side)
//! ```

mod plugin;
pub(crate) mod veth;

pub use plugin::{
    CniEnv, CniError, DEFAULT_ADD_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS, NetConf,
    SUPPORTED_VERSIONS, run,
};
