//! kube-scheduler extender for fixed IPs and IP capacity.
//!
//! kube-scheduler calls `POST {urlPrefix}/filter` and `{urlPrefix}/prioritize`
//! with the pod and its candidate nodes; the extender answers from an
//! in-memory index of `NodeNetwork`s and `FixedIP`s kept by watches, so a
//! call never waits on the API server:
//!
//! ```text
//!  API server ──watch NodeNetworks, FixedIPs──▶ watch::run ──apply/delete/reset──▶ Index (RwLock)
//!                                                                                     │ read
//!  kube-scheduler ──ExtenderArgs──▶ http::Extender ──▶ filter::decide / prioritize::prioritize (pure)
//!                 ◀──ExtenderFilterResult / HostPriorityList──┘
//! ```
//!
//! kube-scheduler reaches it over HTTPS ([`tls`]; a client certificate is
//! required with `--tls-client-ca`), through a bounded server ([`conns`]:
//! a connection cap that evicts the longest-stalled peer, header and body
//! deadlines, a body limit). `/healthz`, `/readyz` and `/metrics` are also
//! on a plain-HTTP admin port for probes and Prometheus.
//!
//! Boundaries: the extender never writes to the API server; it only keeps
//! pods where their fixed address is or can be attached and off nodes with
//! no pod IP left. Moving the address is the FixedIP controller's job
//! (`sextant-operator`), handing it to the pod the agent's.

pub mod conns;
pub mod error;
pub mod extender;
pub mod filter;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod index;
pub mod metrics;
pub mod pod;
pub mod prioritize;
pub mod runtime;
pub mod tls;
pub mod watch;

pub use error::{Error, Result};
