//! Policy status: tells users whether the datapath enforces their network
//! policies. Every `SextantNetworkPolicy` is parsed with `sextant-policy`
//! and gets an `Accepted` condition; a refused one (L7 rules, named ports,
//! a bad CIDR, ...) also a Warning Event listing every offending field by
//! path. `networking.k8s.io/v1` NetworkPolicies have no status Sextant owns,
//! so a refused one gets only the Event.
//!
//! ```text
//!  watch SextantNetworkPolicy ─┐                       ┌─▶ PATCH …/status (only when it changes)
//!                              ├─▶ parse ─▶ plan::judge ┼─▶ Warning Event (Unsupported | Invalid)
//!  watch NetworkPolicy ────────┘   (sextant-policy)     └─▶ PolicyIndex ─▶ sextant_operator_policies{state}
//! ```
//!
//! The decisions are pure ([`plan`]); the index of verdicts ([`index`]) is
//! synchronous and fed by reconciles (apply) and the watches (delete,
//! relist); [`controller`] is the kube-runtime shell. The agent parses the
//! same objects with the same crate and enforces only what this reports as
//! accepted, so status and datapath cannot disagree.

pub(crate) mod controller;
pub(crate) mod identity_gc;
pub(crate) mod index;
pub(crate) mod plan;
