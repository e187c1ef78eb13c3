//! `sextant-verify`: Sextant's IP ownership protocols model-checked. Each
//! model is a small cluster whose every step runs the real code (the
//! operator's node IPAM and fixed-IP plan / execute, the agent's
//! `LocalIpam`, handshake and checkpoint) against a tiny in-memory cloud and
//! API server; the explorer visits every state reachable within the model's
//! bounds and checks the ownership invariants in each.
//!
//! ```text
//!   explore::explore ──▶ Model::actions / next ──▶ handshake::Handshake   (release handshake, one node)
//!        │                                    └──▶ fixed_ip::FixedIpMoves (reserve / move / park / release)
//!        ▼                                               │
//!   Model::check (invariants)                 real code: sextant_ipam::{node, plan, execute, fixed_ip}
//!   first violation ─▶ shortest trace                    sextant_agent_core::{node, handshake, checkpoint}
//!                                             cloud::MiniCloud (EniCloud)   apiserver::patch_status
//! ```
//!
//! Boundaries: nothing here is used by a production crate; the models copy
//! no decision logic. What they do model themselves is the environment
//! (cloud, API server, watch caches, pods, crashes) and the thin kube
//! shells' ordering of reads and writes, each documented where it is.

pub mod agent;
pub mod apiserver;
pub mod cloud;
pub mod explore;
pub mod fixed_ip;
pub mod handshake;
