//! The mutating admission webhook: every non-hostNetwork pod asks for one
//! `sextant.io/ip`, the extended resource the device plugin advertises, so
//! kube-scheduler never places a pod on a node with no pod IP left.
//!
//! ```text
//!  API server --HTTPS POST /mutate--> server (rustls, hyper, deadlines)
//!                                        | body bytes
//!                                        v
//!                                     review::review   typed AdmissionReview<Pod>,
//!                                        |             namespace and kind checks
//!                                        v
//!                                     mutate::mutate   pure: Pod -> JSONPatch | Skip
//! ```
//!
//! Every input gets an AdmissionReview back (HTTP 200): a malformed body is
//! refused with a message, never answered with a 500. The webhook is meant
//! to run with `failurePolicy: Ignore` (docs/webhook.md), so an outage never
//! blocks pod creation.
//!
//! Boundaries: no kube client and no cloud (AdmissionReview types from
//! `kube-core` only); shared names from `sextant_crds::wellknown`, process
//! scaffolding (admin server, shutdown, log, duration flags) from
//! `sextant-kit`. The binary `sextant-webhook` is its `main.rs`.

pub mod error;
pub mod metrics;
pub mod mutate;
pub mod review;
pub mod server;
pub mod tls;

pub use error::WebhookError;
pub use metrics::WebhookMetrics;
pub use mutate::{Mutation, Skip, mutate};
pub use review::{ReviewConfig, Verdict, review};
pub use server::{MUTATE_PATH, WebhookArgs, WebhookServer};
pub use tls::ReloadingCert;
