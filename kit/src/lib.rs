//! What every Sextant binary shares, and nothing domain-specific (the shape
//! of linkerd's kubert): a binary's `main` parses its flags, calls
//! [`log::init`], and runs until [`shutdown::signal`] resolves, serving its
//! [`admin`] endpoints on the way.
//!
//! ```text
//!  main ─▶ log::init ─▶ run(args) ──┬─ admin::serve (/metrics /healthz /readyz)
//!                                   ├─ lease::LeaderElector (feature "lease")
//!                                   └─ until shutdown::signal (SIGTERM | SIGINT)
//!       ◀── exit(binary, outcome): status 0, or the failure logged and 1
//!  errors: every failure logged as errors::Chain ("a: b: c")
//!  flags:  every duration through duration::parse ("500ms", "30s", "5m")
//! ```
//!
//! Tests of kube-facing code get a mock API server that asserts each
//! request (`testing` feature, a dev-dependency only).
//!
//! Boundaries: no kube types except behind the `lease` and `testing`
//! features, no cloud,
//! no IPAM or datapath vocabulary. What a crate needs only for itself stays
//! in that crate.

pub mod admin;
pub mod backoff;
#[cfg(feature = "kube")]
pub mod client;
pub mod duration;
pub mod errors;
#[cfg(feature = "lease")]
pub mod lease;
pub mod log;
pub mod shutdown;
pub mod sync;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;

pub use errors::{Chain as ErrorChain, exit};
