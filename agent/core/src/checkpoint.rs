//! The allocation checkpoint's format and what a restart does with it:
//! a versioned record of the pool ([`Checkpoint::of`]), the double
//! assignment check ([`restore`]) and putting it back ([`apply`]). Writing
//! and reading the file (temp file, fsync, rename) is the agent's.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    pool::{Allocation, Pool},
};

/// Format version this agent reads and writes.
pub const VERSION: u32 = 1;

/// What is on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Handed-out IPs.
    pub allocations: Vec<Allocation>,
    /// Freed IPs and the end of their cooldown (ms since the Unix epoch).
    #[serde(default)]
    pub cooling: Vec<Cooling>,
    /// IPs promised to the operator for release.
    #[serde(default)]
    pub releasing: Vec<Ipv4Addr>,
}

/// One IP in cooldown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cooling {
    /// The IP.
    pub ip: Ipv4Addr,
    /// Cooldown end, ms since the Unix epoch.
    pub until_ms: u64,
}

impl Checkpoint {
    /// The checkpoint of `pool` at `now_ms`.
    pub fn of(pool: &Pool, now_ms: u64) -> Self {
        Checkpoint {
            version: VERSION,
            allocations: pool.allocations().cloned().collect(),
            cooling: pool
                .cooling(now_ms)
                .map(|(ip, until_ms)| Cooling { ip, until_ms })
                .collect(),
            releasing: pool.releasing().iter().copied().collect(),
        }
    }
}

/// What restoring a checkpoint keeps and drops.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Restored {
    /// Allocations whose pod interface still exists.
    pub kept: Vec<Allocation>,
    /// Allocations whose netns or interface is gone (their IPs go to cooldown).
    pub dropped: Vec<Allocation>,
}

/// Checks `cp` for double assignments (an error: the agent refuses to guess)
/// and splits its allocations by `alive` (does the pod interface still exist).
pub fn restore(cp: &Checkpoint, mut alive: impl FnMut(&Allocation) -> bool) -> Result<Restored> {
    let mut owners: BTreeMap<Ipv4Addr, &Allocation> = BTreeMap::new();
    for a in &cp.allocations {
        if let Some(first) = owners.insert(a.ip, a)
            && first.key() != a.key()
        {
            return Err(Error::DuplicateIp {
                ip: a.ip,
                first: first.key().to_string(),
                second: a.key().to_string(),
            });
        }
    }
    let mut out = Restored::default();
    for a in &cp.allocations {
        if alive(a) {
            out.kept.push(a.clone());
        } else {
            out.dropped.push(a.clone());
        }
    }
    Ok(out)
}

/// Applies a checked checkpoint to `pool`: kept allocations, cooldowns, and
/// the IPs of dropped allocations put into a fresh cooldown (a pod that lost
/// its interface may still have packets in flight).
pub fn apply(pool: &mut Pool, cp: &Checkpoint, restored: Restored, now_ms: u64, cooldown_ms: u64) {
    let mut cooling: BTreeMap<Ipv4Addr, u64> = cp
        .cooling
        .iter()
        .filter(|c| c.until_ms > now_ms)
        .map(|c| (c.ip, c.until_ms))
        .collect();
    for a in &restored.dropped {
        cooling.insert(a.ip, now_ms.saturating_add(cooldown_ms));
    }
    pool.restore(restored.kept, cooling, cp.releasing.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        pool::DEFAULT_COOLDOWN_MS,
        testing::{mk_pool, mk_req},
    };

    #[test]
    fn the_checkpoint_of_a_pool_holds_allocations_cooldowns_and_releases() {
        let mut p = mk_pool(4);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip");
        p.free(&b.key(), 10);
        let cp = Checkpoint::of(&p, 10);
        assert_eq!(cp.version, VERSION);
        assert_eq!(cp.allocations, vec![a]);
        assert_eq!(
            cp.cooling,
            vec![Cooling {
                ip: b.ip,
                until_ms: 10 + DEFAULT_COOLDOWN_MS
            }]
        );
        let text = serde_json::to_string(&cp).expect("json");
        assert_eq!(serde_json::from_str::<Checkpoint>(&text).expect("back"), cp);
    }

    #[test]
    fn restore_refuses_duplicate_ips_loudly() {
        let mut p = mk_pool(2);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let mut cp = Checkpoint::of(&p, 0);
        let mut twin = a.clone();
        twin.container_id = "other".into();
        cp.allocations.push(twin);
        let err = restore(&cp, |_| true).expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn restore_drops_gone_interfaces_into_cooldown() {
        let mut p = mk_pool(3);
        p.allocate(&mk_req("live"), 0, "t").expect("ip");
        let gone = p.allocate(&mk_req("gone"), 0, "t").expect("ip");
        let cp = Checkpoint::of(&p, 0);
        let r = restore(&cp, |a| a.container_id == "live").expect("restore");
        assert_eq!(r.kept.len(), 1);
        assert_eq!(r.dropped.len(), 1);
        let mut fresh = mk_pool(3);
        apply(&mut fresh, &cp, r, 100, DEFAULT_COOLDOWN_MS);
        assert_eq!(fresh.counts(100).allocated, 1);
        assert!(fresh.is_cooling(gone.ip, 100));
        // A new ADD after restart never gets the live pod's IP.
        let n = fresh.allocate(&mk_req("new"), 100, "t").expect("ip");
        assert_ne!(n.ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_ne!(n.ip, gone.ip);
    }
}
