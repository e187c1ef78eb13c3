//! One node's IPAM as its agent keeps it: the [`Pool`], what the node's
//! NodeNetwork says of it, the ADDs waiting on an empty pool, and when the
//! usage report goes out. The real agent and every simulated one
//! (`sextantctl simulate`, `roll`, property tests) run this, so what the
//! operator sees from a simulated node is what a real node would write.
//!
//! ```text
//!  NodeNetwork ─▶ apply ─▶ pool IPs, fixed IPs, capacity ─▶ handshake::plan ─▶ answers
//!  CNI ADD ─▶ allocate ─▶ Pool ── PoolExhausted ─▶ pending (pods waiting, by pod)
//!  CNI DEL ─▶ free
//!  answers, time ─▶ report ─▶ status merge patch, or None when nothing is due
//! ```
//!
//! When a report is due: at once when there are handshake answers or when
//! more pods wait than the last report said (the operator's burst path);
//! otherwise only when the usage changed and the report interval passed.
//! An unchanged node writes nothing.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sextant_crds::{NodeNetwork, ReleaseState};

use crate::{
    error::{Error, Result},
    fixed_ip, handshake,
    pool::{AllocKey, AllocRequest, Allocation, Pool},
    usage,
};

/// How long a pod refused for an empty pool counts as waiting without
/// asking again: kubelet retries a failed sandbox with backoff up to five
/// minutes, so a pod still waiting asks within this; a deleted one drops out.
pub const PENDING_TTL_MS: u64 = 6 * 60 * 1000;

/// A handshake answer: the new state, or `None` to delete the entry.
pub type Answers = BTreeMap<String, Option<ReleaseState>>;

/// What the last report said, to tell whether the next one changes anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Reported {
    used: BTreeMap<String, String>,
    cooling: BTreeSet<String>,
    pending: u32,
}

/// One node's IPAM. See the module docs.
#[derive(Clone, Debug)]
pub struct LocalIpam {
    pool: Pool,
    capacity: usize,
    unavailable: usize,
    /// Addresses NodeNetwork `status.usage.used` may still list: what the
    /// last NodeNetwork showed there and what the last report sent.
    status_used: BTreeSet<String>,
    sent_used: BTreeSet<String>,
    /// Pods whose last ADD found no free IP: pod -> when, ms.
    waiting: BTreeMap<String, u64>,
    reported: Option<Reported>,
    reported_at_ms: Option<u64>,
}

impl LocalIpam {
    /// A node with `pool` and no report written yet.
    pub fn new(pool: Pool) -> Self {
        let capacity = pool.ips().len();
        LocalIpam {
            pool,
            capacity,
            unavailable: 0,
            status_used: BTreeSet::new(),
            sent_used: BTreeSet::new(),
            waiting: BTreeMap::new(),
            reported: None,
            reported_at_ms: None,
        }
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool, for restore and sweeps.
    pub fn pool_mut(&mut self) -> &mut Pool {
        &mut self.pool
    }

    /// `(capacity, unavailable)` from the last NodeNetwork.
    pub fn capacity(&self) -> (usize, usize) {
        (self.capacity, self.unavailable)
    }

    /// Takes in a NodeNetwork: pool IPs, fixed IPs, capacity; returns the
    /// handshake answers to write (empty when nothing changed).
    pub fn apply(&mut self, nn: &NodeNetwork, now_ms: u64) -> Answers {
        let ips = usage::pool_ips(nn);
        let n = ips.len();
        self.pool.set_pool(ips);
        let status = nn.status.as_ref();
        self.status_used = status
            .and_then(|s| s.usage.as_ref())
            .map(|u| u.used.keys().cloned().collect())
            .unwrap_or_default();
        self.pool.set_fixed(
            status
                .map(|s| fixed_ip::parse_fixed_ips(&s.fixed_ips))
                .unwrap_or_default(),
        );
        (self.capacity, self.unavailable) = usage::capacity(nn, n);
        let release = status.map(|s| s.release.clone()).unwrap_or_default();
        let answers = handshake::plan(&self.pool, &release, now_ms);
        self.pool.set_releasing(answers.releasing);
        answers.patch
    }

    /// Hands an IP to `req` (the same key gets the same IP again). A refusal
    /// for an empty pool counts the pod as waiting until it gets one, its
    /// sandbox is given up ([`PENDING_TTL_MS`] without asking again).
    pub fn allocate(&mut self, req: &AllocRequest, now_ms: u64, since: &str) -> Result<Allocation> {
        let r = self.pool.allocate(req, now_ms, since);
        self.note(req, &r, now_ms);
        r
    }

    /// Hands the fixed IP `ip` to `req`'s pod.
    pub fn allocate_fixed(
        &mut self,
        req: &AllocRequest,
        ip: std::net::Ipv4Addr,
        now_ms: u64,
        since: &str,
    ) -> Result<Allocation> {
        let r = self.pool.allocate_fixed(req, ip, since);
        self.note(req, &r, now_ms);
        r
    }

    fn note(&mut self, req: &AllocRequest, r: &Result<Allocation>, now_ms: u64) {
        let pod = waiting_key(req);
        match r {
            Ok(_) => {
                self.waiting.remove(&pod);
            }
            Err(Error::PoolExhausted { .. }) => {
                self.waiting.insert(pod, now_ms);
            }
            Err(_) => {}
        }
    }

    /// Frees `key`'s IP into cooldown.
    pub fn free(&mut self, key: &AllocKey, now_ms: u64) -> Option<Allocation> {
        self.pool.free(key, now_ms)
    }

    /// Pods waiting on an empty pool at `now_ms`.
    pub fn pending(&mut self, now_ms: u64) -> u32 {
        self.waiting
            .retain(|_, at| now_ms.saturating_sub(*at) < PENDING_TTL_MS);
        u32::try_from(self.waiting.len()).unwrap_or(u32::MAX)
    }

    /// The status merge patch of the usage report with `answers`, when one
    /// is due (see the module docs) at `now_ms` with reports every
    /// `interval_ms`; `None` when nothing is. Addresses the status may still
    /// list as used and no longer in use go as `null` (a merge patch only
    /// adds and changes keys). Marks the report as sent.
    pub fn report(
        &mut self,
        answers: &Answers,
        now_ms: u64,
        interval_ms: u64,
        reported_at: &str,
    ) -> Option<Value> {
        let now = self.reported_now(now_ms);
        let last = self.reported.as_ref();
        let changed = last != Some(&now);
        let more_waiting = now.pending > last.map_or(0, |r| r.pending);
        let interval_passed = self
            .reported_at_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= interval_ms);
        if answers.is_empty() && !more_waiting && !(changed && interval_passed) {
            return None;
        }
        let gone: BTreeSet<String> = self
            .status_used
            .union(&self.sent_used)
            .filter(|ip| !now.used.contains_key(*ip))
            .cloned()
            .collect();
        let patch =
            usage::status_patch(&self.pool, answers, now_ms, now.pending, reported_at, &gone);
        self.sent_used = now.used.keys().cloned().collect();
        self.reported = Some(now);
        self.reported_at_ms = Some(now_ms);
        Some(patch)
    }

    /// The usage report with `used` whole, for a consumer that replaces the
    /// status rather than merging (the NodeNetwork file of labs). Always.
    pub fn full_report(&mut self, answers: &Answers, now_ms: u64, reported_at: &str) -> Value {
        let pending = self.pending(now_ms);
        usage::status_patch(
            &self.pool,
            answers,
            now_ms,
            pending,
            reported_at,
            &BTreeSet::new(),
        )
    }

    fn reported_now(&mut self, now_ms: u64) -> Reported {
        let pending = self.pending(now_ms);
        Reported {
            used: self
                .pool
                .allocations()
                .map(|a| (a.ip.to_string(), a.owner()))
                .collect(),
            cooling: self
                .pool
                .cooling(now_ms)
                .map(|(ip, _)| ip.to_string())
                .collect(),
            pending,
        }
    }
}

/// Who waits: the pod (`namespace/name`), or the container when the runtime
/// named no pod. Not the container alone: a runtime tears a failed sandbox
/// down (CNI DEL) and makes a new one with a new id for the same pod.
fn waiting_key(req: &AllocRequest) -> String {
    if req.pod_name.is_empty() {
        req.key.container_id.clone()
    } else {
        format!("{}/{}", req.pod_namespace, req.pod_name)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use sextant_crds::{AgentUsage, NodeNetworkStatus, PoolEntry};

    use super::*;
    use crate::testing::{mk_pool, mk_req};

    const MIN: u64 = 60_000;

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    fn mk_node(ips: &[u8], release: &[(u8, ReleaseState)], used: &[u8]) -> NodeNetwork {
        let mut nn = NodeNetwork::new("node-a", Default::default());
        nn.status = Some(NodeNetworkStatus {
            pool: ips
                .iter()
                .map(|i| (ip(*i).to_string(), PoolEntry::default()))
                .collect(),
            release: release
                .iter()
                .map(|(i, s)| (ip(*i).to_string(), *s))
                .collect(),
            usage: Some(AgentUsage {
                used: used
                    .iter()
                    .map(|i| (ip(*i).to_string(), "x".to_string()))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        });
        nn
    }

    #[test]
    fn pods_refused_for_an_empty_pool_are_reported_pending_at_once() {
        let mut node = LocalIpam::new(mk_pool(1));
        node.allocate(&mk_req("a"), 0, "t").expect("ip");
        assert!(node.report(&Answers::new(), 0, MIN, "t").is_some());
        // Two more pods, no IP: reported now, not a report interval later.
        for id in ["b", "c"] {
            node.allocate(&mk_req(id), 1_000, "t")
                .expect_err("pool exhausted");
        }
        let patch = node
            .report(&Answers::new(), 1_000, MIN, "t")
            .expect("more pods waiting: due at once");
        assert_eq!(patch["status"]["usage"]["pending"], 2);
        // A retry of a waiting pod is not a new one.
        node.allocate(&mk_req("b"), 2_000, "t")
            .expect_err("still exhausted");
        assert_eq!(node.pending(2_000), 2);
        assert!(node.report(&Answers::new(), 2_000, MIN, "t").is_none());
    }

    #[test]
    fn a_pod_stops_waiting_when_it_gets_an_ip_or_stops_asking() {
        let mut node = LocalIpam::new(mk_pool(1));
        let a = node.allocate(&mk_req("a"), 0, "t").expect("ip");
        node.allocate(&mk_req("b"), 0, "t").expect_err("exhausted");
        node.allocate(&mk_req("c"), 0, "t").expect_err("exhausted");
        assert_eq!(node.pending(0), 2);
        node.free(&a.key(), 0);
        node.pool_mut()
            .set_pool([ip(1), ip(2)].into_iter().collect::<Vec<_>>());
        node.allocate(&mk_req("b"), 1, "t").expect("a new IP");
        assert_eq!(node.pending(1), 1, "b got one");
        assert_eq!(node.pending(PENDING_TTL_MS), 0, "c gave up");
    }

    #[test]
    fn pending_going_back_to_zero_is_written_explicitly() {
        let mut node = LocalIpam::new(mk_pool(0));
        node.allocate(&mk_req("a"), 0, "t").expect_err("exhausted");
        let p = node.report(&Answers::new(), 0, MIN, "t").expect("due");
        assert_eq!(p["status"]["usage"]["pending"], 1);
        node.pool_mut().set_pool([ip(1)]);
        node.allocate(&mk_req("a"), 1, "t").expect("ip");
        let p = node
            .report(&Answers::new(), MIN, MIN, "t")
            .expect("changed");
        assert_eq!(
            p["status"]["usage"]["pending"], 0,
            "a merge patch that omitted it would leave the old count"
        );
    }

    #[test]
    fn an_unchanged_node_writes_nothing_and_a_changed_one_waits_for_the_interval() {
        let mut node = LocalIpam::new(mk_pool(4));
        assert!(
            node.report(&Answers::new(), 0, MIN, "t").is_some(),
            "first report"
        );
        assert!(node.report(&Answers::new(), 5 * MIN, MIN, "t").is_none());
        node.allocate(&mk_req("a"), 5 * MIN, "t").expect("ip");
        assert!(
            node.report(&Answers::new(), 5 * MIN + 1, MIN, "t")
                .is_some(),
            "interval long passed"
        );
        let b = node.allocate(&mk_req("b"), 5 * MIN + 2, "t").expect("ip");
        assert!(
            node.report(&Answers::new(), 5 * MIN + 3, MIN, "t")
                .is_none(),
            "changed, but inside the interval"
        );
        node.free(&b.key(), 5 * MIN + 4);
        let answers: Answers = [(ip(4).to_string(), Some(ReleaseState::ReadyForRelease))].into();
        assert!(
            node.report(&answers, 5 * MIN + 5, MIN, "t").is_some(),
            "answers go at once"
        );
    }

    #[test]
    fn applied_node_answers_marks_and_drops_released_entries() {
        let mut node = LocalIpam::new(mk_pool(0));
        let nn = mk_node(
            &[1, 2],
            &[(2, ReleaseState::Marked), (7, ReleaseState::Released)],
            &[],
        );
        let answers = node.apply(&nn, 0);
        assert_eq!(
            answers[&ip(2).to_string()],
            Some(ReleaseState::ReadyForRelease)
        );
        assert_eq!(answers[&ip(7).to_string()], None);
        let patch = node.report(&answers, 0, MIN, "t").expect("answers due");
        assert_eq!(patch["status"]["release"]["10.0.0.2"], "ready-for-release");
        assert!(
            patch["status"]["release"]
                .as_object()
                .is_some_and(|r| r.get("10.0.0.7") == Some(&Value::Null)),
            "{patch}"
        );
        assert_eq!(node.pool().counts(0).free, 1, "10.0.0.2 promised");
    }

    #[test]
    fn addresses_the_status_lists_as_used_and_no_longer_are_removed() {
        let mut node = LocalIpam::new(mk_pool(0));
        node.apply(&mk_node(&[1, 2], &[], &[2]), 0);
        let a = node.allocate(&mk_req("a"), 0, "t").expect("ip");
        let p = node.report(&Answers::new(), 0, MIN, "t").expect("first");
        assert_eq!(p["status"]["usage"]["used"]["10.0.0.2"], Value::Null);
        node.free(&a.key(), 1);
        let p = node
            .report(&Answers::new(), MIN + 1, MIN, "t")
            .expect("changed");
        assert_eq!(
            p["status"]["usage"]["used"][a.ip.to_string()],
            Value::Null,
            "what the last report sent is removed too"
        );
    }
}
