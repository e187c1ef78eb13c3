//! Sextant node agent.
pub mod agent;
pub mod api;
pub mod checkpoint;
pub mod cni;
pub mod datapath;
pub mod error;
pub mod handshake;
pub mod lab;
mod metrics;
pub mod paths;
pub mod pool;
pub mod runtime;
pub mod server;
pub mod services;
pub mod usage;
pub mod veth;

pub use error::{Error, ErrorChain, Result};
pub use metrics::Metrics;
