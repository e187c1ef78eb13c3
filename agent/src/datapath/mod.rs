//! The eBPF datapath: loads `bpf/datapath.c` (built by `build.rs`), pins its
//! program and maps under the bpffs root, attaches it as a `cls_bpf` filter
//! on tc ingress of each pod's host veth, and fills the maps.
//!
//! ```text
//!   pod A eth0 ──▶ host veth A ── tc ingress: from_pod ──┬─▶ redirect ──▶ host veth B ──▶ pod B
//!                                  │ SERVICES/BACKENDS   └─▶ kernel stack (not a local pod)
//!                                  │ CT (per-flow DNAT / reverse NAT)
//!                                  │ ENDPOINTS[saddr].ifindex == this veth? else drop (anti-spoofing)
//!                                  └ ENDPOINTS, COUNTERS, DROPS
//! ```
//!
//! On start, pins left by an earlier agent are re-adopted before anything is
//! loaded anew, so a restart never detaches the datapath: the filters belong
//! to the interfaces and keep forwarding while no agent runs.
//!
//! One file per kind of map work, each adding its methods to [`Datapath`]:
//!
//! - `loader`: load, pin, re-adopt an earlier agent's pins, roll back a
//!   partial load, attach / detach the tc filters, remove pins;
//! - `maps`: typed access to `ENDPOINTS`, `COUNTERS` and `DROPS` (drops by
//!   reason);
//! - `services`: `SERVICES` / `BACKENDS` (frontends and their backends);
//! - `policy`: `POLICY`, `POLICY_ENFORCED`, `IPCACHE`, `POLICY_VERDICTS`;
//! - `conntrack`: `CT` / `PCT` counts and the idle sweep.

use aya::{
    maps::{HashMap, MapData, PerCpuArray, lpm_trie::LpmTrie},
    programs::SchedClassifier,
};
use std::path::PathBuf;

mod conntrack;
mod loader;
mod maps;
mod policy;
mod services;

pub use conntrack::{CtSweep, CtTimeouts};
pub use loader::{ensure_bpffs, pinned_version, program_version, remove_pins};
pub use maps::{COUNTER_NAMES, DropReason, Endpoint};
pub use policy::{ENFORCE_EGRESS, ENFORCE_INGRESS, POLICY_SLOTS, PolicyEntry};

/// The loaded, pinned datapath.
pub struct Datapath {
    root: PathBuf,
    prog: SchedClassifier,
    endpoints: HashMap<MapData, [u8; 4], [u8; 20]>,
    services: HashMap<MapData, [u8; 8], [u8; 8]>,
    backends: HashMap<MapData, [u8; 8], [u8; 8]>,
    ct: HashMap<MapData, [u8; 16], [u8; 16]>,
    counters: PerCpuArray<MapData, u64>,
    policy: LpmTrie<MapData, [u8; 12], [u8; 8]>,
    enforced: HashMap<MapData, u32, u32>,
    ipcache: LpmTrie<MapData, [u8; 4], u32>,
    pct: HashMap<MapData, [u8; 16], u64>,
    verdicts: PerCpuArray<MapData, u64>,
    drops: PerCpuArray<MapData, u64>,
    to_pod: SchedClassifier,
    next_service_id: u32,
    adopted: bool,
}
