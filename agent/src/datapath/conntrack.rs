//! Conntrack: the service (`CT`) and policy (`PCT`) flow maps, their
//! entry count and the idle sweep against `CLOCK_MONOTONIC`, the clock the
//! kernel side stamps packets with.

use super::Datapath;

/// Conntrack idle timeouts the agent's GC applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtTimeouts {
    /// TCP flows.
    pub tcp: std::time::Duration,
    /// UDP and everything else.
    pub other: std::time::Duration,
}

impl Default for CtTimeouts {
    /// Cilium's defaults: 6 h for TCP, 60 s for the rest.
    fn default() -> Self {
        CtTimeouts {
            tcp: std::time::Duration::from_secs(21_600),
            other: std::time::Duration::from_secs(60),
        }
    }
}

/// What one conntrack sweep found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtSweep {
    /// Entries left in the service and policy conntrack maps.
    pub live: usize,
    /// Entries the sweep removed as idle.
    pub expired: usize,
}

fn monotonic_ns() -> u64 {
    // bpf_ktime_get_ns() is CLOCK_MONOTONIC.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| (t.tv_sec() as u64) * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

impl Datapath {
    /// Conntrack entries (both directions).
    pub fn conntrack_count(&self) -> usize {
        self.ct.keys().filter(|k| k.is_ok()).count()
    }

    /// Removes service and policy conntrack entries idle longer than the
    /// timeouts (the kernel side stamps every packet; LRU eviction alone
    /// would keep dead flows until the maps fill).
    pub fn sweep_conntrack(&mut self, timeouts: CtTimeouts) -> CtSweep {
        let now = monotonic_ns();
        let idle = |proto: u8, seen: u64| {
            let limit = if proto == 6 {
                timeouts.tcp
            } else {
                timeouts.other
            };
            now.saturating_sub(seen) > limit.as_nanos() as u64
        };
        let mut sweep = CtSweep::default();
        let stale: Vec<[u8; 16]> = self
            .ct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, v)| {
                let seen =
                    u64::from_ne_bytes([v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]]);
                let live = !idle(k[12], seen);
                sweep.live += usize::from(live);
                !live
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            if self.ct.remove(k).is_ok() {
                sweep.expired += 1;
            }
        }
        let stale: Vec<[u8; 16]> = self
            .pct
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, seen)| {
                let live = !idle(k[12], *seen);
                sweep.live += usize::from(live);
                !live
            })
            .map(|(k, _)| k)
            .collect();
        for k in &stale {
            if self.pct.remove(k).is_ok() {
                sweep.expired += 1;
            }
        }
        sweep
    }
}
