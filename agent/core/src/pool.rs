//! The node's local IP pool: which pod IPs the node holds, which are handed
//! out (keyed by container id + interface name), which wait out the reuse
//! cooldown, which are promised to the operator for release, and which are
//! fixed IPs that only their own pod may take.
//!
//! Pure: time (`now_ms`, milliseconds since the Unix epoch) is an input, so
//! the checkpoint can carry cooldown deadlines across restarts.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};

pub use sextant_agent_api::{AllocKey, Allocation};

use crate::error::{Error, Result};

/// Default reuse cooldown of a freed IP (AWS VPC CNI's `IP_COOLDOWN_PERIOD`).
pub const DEFAULT_COOLDOWN_MS: u64 = 30_000;

/// A CNI ADD's request for an IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocRequest {
    /// Which interface.
    pub key: AllocKey,
    /// Network namespace path.
    pub netns: String,
    /// Pod namespace.
    pub pod_namespace: String,
    /// Pod name.
    pub pod_name: String,
}

/// Counts for the agent API and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Handed out.
    pub allocated: usize,
    /// allocated + free + cooldown.
    pub pool: usize,
    /// Ready for the next ADD.
    pub free: usize,
    /// Freed, waiting out the cooldown.
    pub cooldown: usize,
    /// Promised to the operator for release.
    pub releasing: usize,
}

/// The pool. See the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pool {
    ips: BTreeSet<Ipv4Addr>,
    allocations: BTreeMap<AllocKey, Allocation>,
    by_ip: BTreeMap<Ipv4Addr, AllocKey>,
    cooling: BTreeMap<Ipv4Addr, u64>,
    releasing: BTreeSet<Ipv4Addr>,
    fixed: BTreeMap<Ipv4Addr, String>,
    cooldown_ms: u64,
}

impl Pool {
    /// An empty pool with the given reuse cooldown.
    pub fn new(cooldown_ms: u64) -> Self {
        Pool {
            cooldown_ms,
            ..Default::default()
        }
    }

    /// Replaces the set of IPs the node holds (from NodeNetwork `status.pool`
    /// or static configuration). Allocated IPs that left the pool stay
    /// allocated until their pod is deleted: a running pod keeps its address.
    pub fn set_pool(&mut self, ips: impl IntoIterator<Item = Ipv4Addr>) {
        self.ips = ips.into_iter().collect();
        let ips = &self.ips;
        self.cooling.retain(|ip, _| ips.contains(ip));
        self.releasing.retain(|ip| ips.contains(ip));
    }

    /// Replaces the fixed IPs on this node (NodeNetwork `status.fixedIps`,
    /// address -> `namespace/name`). They are never free for other pods.
    pub fn set_fixed(&mut self, fixed: BTreeMap<Ipv4Addr, String>) {
        self.fixed = fixed;
    }

    /// The fixed IPs on this node and the pod (`namespace/name`) each belongs to.
    pub fn fixed(&self) -> &BTreeMap<Ipv4Addr, String> {
        &self.fixed
    }

    /// Whether `ip` is a fixed IP of some pod.
    pub fn is_fixed(&self, ip: Ipv4Addr) -> bool {
        self.fixed.contains_key(&ip)
    }

    /// Hands fixed IP `ip` to `req.key`, whose pod must be the one
    /// `status.fixedIps` names. The same key gets its allocation again. The
    /// cooldown does not apply: a fixed IP only ever returns to its own pod.
    pub fn allocate_fixed(
        &mut self,
        req: &AllocRequest,
        ip: Ipv4Addr,
        since: &str,
    ) -> Result<Allocation> {
        if let Some(a) = self.allocations.get(&req.key) {
            return Ok(a.clone());
        }
        let pod = format!("{}/{}", req.pod_namespace, req.pod_name);
        let unavailable = |why: String| Error::FixedIpUnavailable {
            ip,
            pod: pod.clone(),
            why,
        };
        match self.fixed.get(&ip) {
            Some(owner) if *owner == pod => {}
            Some(owner) => return Err(unavailable(format!("it belongs to {owner}"))),
            None => return Err(unavailable("it is not a fixed IP of this node".into())),
        }
        if let Some(holder) = self.by_ip.get(&ip) {
            // An earlier sandbox of the same pod whose DEL has not come yet.
            return Err(unavailable(format!("still held by {holder}")));
        }
        self.cooling.remove(&ip);
        self.releasing.remove(&ip);
        let a = Allocation {
            ip,
            container_id: req.key.container_id.clone(),
            ifname: req.key.ifname.clone(),
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            since: since.to_string(),
        };
        self.insert(a.clone());
        Ok(a)
    }

    /// The IPs the node holds.
    pub fn ips(&self) -> &BTreeSet<Ipv4Addr> {
        &self.ips
    }

    /// Hands an IP to `req.key`; the same key gets the same IP again.
    pub fn allocate(&mut self, req: &AllocRequest, now_ms: u64, since: &str) -> Result<Allocation> {
        if let Some(a) = self.allocations.get(&req.key) {
            return Ok(a.clone());
        }
        self.expire(now_ms);
        let Some(ip) = self
            .ips
            .iter()
            .copied()
            .find(|ip| self.is_free(*ip, now_ms))
        else {
            return Err(Error::PoolExhausted {
                pool: self.ips.len(),
                allocated: self.allocations.len(),
                cooling: self.cooling.len(),
                releasing: self.releasing.len(),
            });
        };
        let a = Allocation {
            ip,
            container_id: req.key.container_id.clone(),
            ifname: req.key.ifname.clone(),
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
            since: since.to_string(),
        };
        self.insert(a.clone());
        Ok(a)
    }

    /// Frees the IP of `key` into cooldown; `None` when nothing was allocated.
    pub fn free(&mut self, key: &AllocKey, now_ms: u64) -> Option<Allocation> {
        let a = self.allocations.remove(key)?;
        self.by_ip.remove(&a.ip);
        self.cooling
            .insert(a.ip, now_ms.saturating_add(self.cooldown_ms));
        Some(a)
    }

    /// The allocation of `key`.
    pub fn get(&self, key: &AllocKey) -> Option<&Allocation> {
        self.allocations.get(key)
    }

    /// Every allocation, ordered by key.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.values()
    }

    /// Whether `ip` is handed out.
    pub fn is_allocated(&self, ip: Ipv4Addr) -> bool {
        self.by_ip.contains_key(&ip)
    }

    /// Whether `ip` is in cooldown at `now_ms`.
    pub fn is_cooling(&self, ip: Ipv4Addr, now_ms: u64) -> bool {
        self.cooling.get(&ip).is_some_and(|until| *until > now_ms)
    }

    /// Whether the next ADD of an ordinary pod may take `ip`.
    pub fn is_free(&self, ip: Ipv4Addr, now_ms: u64) -> bool {
        self.ips.contains(&ip)
            && !self.is_fixed(ip)
            && !self.is_allocated(ip)
            && !self.is_cooling(ip, now_ms)
            && !self.releasing.contains(&ip)
    }

    /// IPs promised to the operator for release.
    pub fn releasing(&self) -> &BTreeSet<Ipv4Addr> {
        &self.releasing
    }

    /// Replaces the IPs promised for release (from [`crate::handshake::plan`]).
    pub fn set_releasing(&mut self, releasing: BTreeSet<Ipv4Addr>) {
        self.releasing = releasing;
    }

    /// Cooldown deadlines still running at `now_ms`.
    pub fn cooling(&self, now_ms: u64) -> impl Iterator<Item = (Ipv4Addr, u64)> + '_ {
        self.cooling
            .iter()
            .filter(move |(_, until)| **until > now_ms)
            .map(|(ip, until)| (*ip, *until))
    }

    /// Drops cooldown entries that ran out.
    pub fn expire(&mut self, now_ms: u64) {
        self.cooling.retain(|_, until| *until > now_ms);
    }

    /// Counts at `now_ms`.
    pub fn counts(&self, now_ms: u64) -> Counts {
        let free = self
            .ips
            .iter()
            .filter(|ip| self.is_free(**ip, now_ms))
            .count();
        let cooldown = self
            .cooling(now_ms)
            .filter(|(ip, _)| !self.is_allocated(*ip))
            .count();
        let allocated = self.allocations.len();
        Counts {
            allocated,
            pool: allocated + free + cooldown,
            free,
            cooldown,
            releasing: self.releasing.len(),
        }
    }

    /// Restores state read from a checkpoint (already checked for duplicates
    /// by [`crate::checkpoint::restore`]).
    pub fn restore(
        &mut self,
        allocations: impl IntoIterator<Item = Allocation>,
        cooling: impl IntoIterator<Item = (Ipv4Addr, u64)>,
        releasing: impl IntoIterator<Item = Ipv4Addr>,
    ) {
        self.allocations.clear();
        self.by_ip.clear();
        for a in allocations {
            self.insert(a);
        }
        self.cooling = cooling.into_iter().collect();
        self.releasing = releasing.into_iter().collect();
    }

    fn insert(&mut self, a: Allocation) {
        self.by_ip.insert(a.ip, a.key());
        self.allocations.insert(a.key(), a);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::testing::{mk_pool, mk_req};

    #[test]
    fn allocate_is_idempotent_per_container_and_ifname() {
        let mut p = mk_pool(4);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let again = p.allocate(&mk_req("a"), 5, "t").expect("ip");
        assert_eq!(a, again);
        let mut other_if = mk_req("a");
        other_if.key.ifname = "net1".into();
        assert_ne!(p.allocate(&other_if, 0, "t").expect("ip").ip, a.ip);
        assert_eq!(p.counts(0).allocated, 2);
    }

    #[test]
    fn freed_ip_is_not_reused_before_cooldown_ends() {
        let mut p = mk_pool(1);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        assert!(p.free(&a.key(), 1_000).is_some());
        assert!(p.free(&a.key(), 1_000).is_none(), "second free is a no-op");
        assert!(matches!(
            p.allocate(&mk_req("b"), 1_000 + DEFAULT_COOLDOWN_MS - 1, "t"),
            Err(Error::PoolExhausted { cooling: 1, .. })
        ));
        let b = p
            .allocate(&mk_req("b"), 1_000 + DEFAULT_COOLDOWN_MS, "t")
            .expect("ip");
        assert_eq!(b.ip, a.ip);
    }

    #[test]
    fn counts_add_up_to_pool() {
        let mut p = mk_pool(10);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        p.allocate(&mk_req("b"), 0, "t").expect("ip");
        p.allocate(&mk_req("c"), 0, "t").expect("ip");
        p.free(&a.key(), 0);
        let c = p.counts(1);
        assert_eq!(
            c,
            Counts {
                allocated: 2,
                pool: 10,
                free: 7,
                cooldown: 1,
                releasing: 0
            }
        );
    }

    #[test]
    fn ips_leaving_the_pool_stay_allocated() {
        let mut p = mk_pool(2);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        p.set_pool([]);
        assert_eq!(p.get(&a.key()).map(|x| x.ip), Some(a.ip));
        assert!(p.allocate(&mk_req("b"), 0, "t").is_err());
    }

    fn mk_pod_req(id: &str, ns: &str, name: &str) -> AllocRequest {
        let mut r = mk_req(id);
        r.pod_namespace = ns.to_string();
        r.pod_name = name.to_string();
        r
    }

    #[test]
    fn fixed_ips_are_never_handed_to_ordinary_pods() {
        let mut p = mk_pool(3);
        p.set_fixed([(Ipv4Addr::new(10, 0, 0, 1), "db/web-0".to_string())].into());
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip");
        assert_eq!(
            (a.ip, b.ip),
            (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3))
        );
        assert!(matches!(
            p.allocate(&mk_req("c"), 0, "t"),
            Err(Error::PoolExhausted { .. })
        ));
        assert_eq!(p.counts(0).free, 0);
    }

    #[test]
    fn fixed_ip_goes_to_its_pod_only_and_skips_its_own_cooldown() {
        let ip = Ipv4Addr::new(10, 0, 0, 2);
        let mut p = mk_pool(2);
        p.set_fixed([(ip, "db/web-0".to_string())].into());
        let other = p.allocate_fixed(&mk_pod_req("x", "db", "web-1"), ip, "t");
        assert!(
            matches!(other, Err(Error::FixedIpUnavailable { .. })),
            "{other:?}"
        );
        let first = mk_pod_req("c1", "db", "web-0");
        let a = p.allocate_fixed(&first, ip, "t").expect("fixed ip");
        assert_eq!(a.ip, ip);
        assert_eq!(
            p.allocate_fixed(&first, ip, "t").expect("again"),
            a,
            "idempotent per key"
        );
        let second = mk_pod_req("c2", "db", "web-0");
        assert!(
            p.allocate_fixed(&second, ip, "t").is_err(),
            "held by the first sandbox until its DEL"
        );
        p.free(&a.key(), 1_000);
        assert!(p.is_cooling(ip, 1_001));
        let b = p.allocate_fixed(&second, ip, "t").expect("restarted pod");
        assert_eq!(b.ip, ip);
        assert!(!p.is_cooling(ip, 1_001));
        p.free(&b.key(), 2_000);
        let later = 2_000 + DEFAULT_COOLDOWN_MS;
        let d = p.allocate(&mk_req("d"), later, "t").expect("ip");
        assert_eq!(d.ip, Ipv4Addr::new(10, 0, 0, 1));
        assert!(
            p.allocate(&mk_req("e"), later, "t").is_err(),
            "after its cooldown the fixed IP is still not free for others"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Add(u8),
        Del(u8),
        Tick(u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12).prop_map(Op::Add),
            (0u8..12).prop_map(Op::Del),
            (0u16..40_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// No IP is ever owned twice, and no IP is handed out inside its cooldown.
        #[test]
        fn no_ip_owned_twice_nor_reused_in_cooldown(ops in proptest::collection::vec(op(), 1..200)) {
            let mut p = mk_pool(6);
            let mut now = 0u64;
            let mut freed_at: BTreeMap<Ipv4Addr, u64> = BTreeMap::new();
            for o in ops {
                match o {
                    Op::Add(i) => {
                        if let Ok(a) = p.allocate(&mk_req(&i.to_string()), now, "t")
                            && let Some(t) = freed_at.get(&a.ip) {
                                prop_assert!(now >= t + DEFAULT_COOLDOWN_MS);
                            }
                    }
                    Op::Del(i) => {
                        let key = mk_req(&i.to_string()).key;
                        if let Some(a) = p.free(&key, now) {
                            freed_at.insert(a.ip, now);
                        }
                    }
                    Op::Tick(d) => now += u64::from(d),
                }
                let mut seen = BTreeSet::new();
                for a in p.allocations() {
                    prop_assert!(seen.insert(a.ip), "{} owned twice", a.ip);
                }
                let c = p.counts(now);
                prop_assert_eq!(c.pool, 6);
            }
        }
    }
}
