//! Flow observability above the kernel: what happens to a flow event after
//! the datapath emitted it, with every loss counted where it happens.
//!
//! ```text
//!  kernel ring ─▶ reader thread ── FlowSender ──▶ FlowSource ─▶ ingest ─▶ Hub
//!  (agent/bpf,    (agent, later)   try_send; a full   (bounded   enrich   │ FlowStore: two lanes
//!   to come)                       queue is counted   channel)  (agent's  │  normal | priority
//!                                  as lost, stage                Enricher)│ subscribers: bounded,
//!                                  "queue")                               │  try_send, "export" loss
//!                                                                         ▼
//!            sextantctl observe ◀── Observer gRPC (unix socket / TCP) ◀── server
//!            hubble clients     ◀── sextant-relay (fans in every node's server)
//! ```
//!
//! Loss stages, each counted once with a reason: `ring` (the kernel said it
//! could not emit), `queue` (the user-space channel was full), `sequence` (a
//! gap in a CPU's sequence numbers that no lost report explains), `store`
//! (a lane overwrote its oldest flow), `export` (a client read too slowly).
//! Up to the store, `seen = kept + lost` exactly ([`store::FlowStore`]).
//!
//! The API is a subset of Hubble's `observer.Observer` with Hubble's package,
//! message and field numbers ([`api`]), so Hubble's clients decode it.
//!
//! Boundaries: no kube, no BPF. The agent feeds a [`source::FlowSender`] and
//! implements [`source::Enricher`]; what the kernel emits is a
//! [`record::FlowRecord`].

pub mod api;
pub mod client;
pub mod error;
pub mod filter;
pub mod json;
pub mod metrics;
pub mod record;
pub mod relay;
pub mod server;
pub mod source;
pub mod store;

pub use error::{Error, Result};
