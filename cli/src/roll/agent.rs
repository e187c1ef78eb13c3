//! A simulated node of the roll: the real agent's node IPAM
//! ([`sextant_agent_core::node::LocalIpam`]) answering the CNI ADDs and DELs
//! of the StatefulSet pods placed on the node and of a few ordinary pods
//! that come and go, each ADD decided by the agent's own fixed-IP rule
//! ([`sextant_agent_core::fixed_ip::decide`]). Only the kubelet is simulated.
//!
//! ```text
//!  NodeNetwork ─▶ apply (pool, fixedIps, handshake answers)
//!  ordinary pod ADD ─▶ decide (no FixedIP) ─▶ Any ─▶ allocate
//!  StatefulSet pod ADD ─▶ decide (its FixedIP's spec.ip) ─▶ Fixed ─▶ allocate_fixed
//!                                                          └ Wait / TimedOut: asked again next step
//!  pod deleted ─▶ free            answers, time ─▶ report ─▶ status merge patch
//! ```

use std::{collections::BTreeMap, net::Ipv4Addr};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_agent_core::{
    fixed_ip::{self, Decision, Lookup},
    node::LocalIpam,
    pool::{AllocKey, AllocRequest, DEFAULT_COOLDOWN_MS, Pool},
};
use sextant_crds::NodeNetwork;

/// How long a fixed-IP ADD waits for its address before the kubelet retries.
const ADD_WAIT_MS: u64 = 30_000;

/// A StatefulSet pod on this node: its sandbox, and the ADD's deadline.
struct StsPod {
    uid: String,
    deadline_ms: Option<u64>,
    ip: Option<Ipv4Addr>,
}

/// One node's agent.
pub struct Agent {
    node: String,
    rng: SmallRng,
    ipam: LocalIpam,
    /// Ordinary pods: number -> IP once it got one.
    ordinary: BTreeMap<u64, Option<Ipv4Addr>>,
    next_ordinary: u64,
    /// StatefulSet pods placed here, by pod name.
    sts: BTreeMap<String, StsPod>,
    namespace: String,
    report_interval_ms: u64,
    /// Status PATCHes this agent sent.
    pub patches: u64,
    /// Fixed-IP ADDs that timed out waiting (the kubelet retried them).
    pub timed_out: u64,
}

impl Agent {
    /// The agent of `node`, running `ordinary` ordinary pods, serving
    /// StatefulSet pods of `namespace`.
    pub fn new(node: &str, namespace: &str, seed: u64, ordinary: u64) -> Self {
        Agent {
            node: node.to_owned(),
            rng: SmallRng::seed_from_u64(seed),
            ipam: LocalIpam::new(Pool::new(DEFAULT_COOLDOWN_MS)),
            ordinary: (0..ordinary).map(|n| (n, None)).collect(),
            next_ordinary: ordinary,
            sts: BTreeMap::new(),
            namespace: namespace.to_owned(),
            report_interval_ms: 10_000,
            patches: 0,
            timed_out: 0,
        }
    }

    fn ordinary_request(&self, n: u64) -> AllocRequest {
        let pod = format!("{}-pod-{n}", self.node);
        AllocRequest {
            key: AllocKey {
                container_id: pod.clone(),
                ifname: "eth0".into(),
            },
            netns: String::new(),
            pod_namespace: "default".into(),
            pod_name: pod,
        }
    }

    fn sts_request(&self, pod: &str, uid: &str) -> AllocRequest {
        AllocRequest {
            key: AllocKey {
                container_id: format!("{pod}-{uid}"),
                ifname: "eth0".into(),
            },
            netns: String::new(),
            pod_namespace: self.namespace.clone(),
            pod_name: pod.to_owned(),
        }
    }

    /// The kubelet starts StatefulSet pod `pod` (incarnation `uid`) here.
    pub fn start(&mut self, pod: &str, uid: &str) {
        self.sts.insert(
            pod.to_owned(),
            StsPod {
                uid: uid.to_owned(),
                deadline_ms: None,
                ip: None,
            },
        );
    }

    /// The kubelet tears StatefulSet pod `pod` down: CNI DEL.
    pub fn stop(&mut self, pod: &str, now_ms: u64) {
        if let Some(p) = self.sts.remove(pod) {
            let key = self.sts_request(pod, &p.uid).key;
            self.ipam.free(&key, now_ms);
        }
    }

    /// One step at `now_ms`: the NodeNetwork `nn` taken in; ordinary pods
    /// end with probability `churn` and are replaced; every pod without an
    /// address asks again, StatefulSet pods with the FixedIP `lookup` gives
    /// for them; the usage report when one is due (a status merge patch
    /// for the caller to apply).
    pub fn step(
        &mut self,
        nn: &NodeNetwork,
        lookup: impl Fn(&str) -> Lookup,
        churn: f64,
        now_ms: u64,
    ) -> Option<serde_json::Value> {
        let answers = self.ipam.apply(nn, now_ms);
        if churn > 0.0 {
            let ending: Vec<u64> = self
                .ordinary
                .iter()
                .filter(|(_, ip)| ip.is_some())
                .map(|(n, _)| *n)
                .filter(|_| self.rng.random_bool(churn))
                .collect();
            for n in ending {
                let key = self.ordinary_request(n).key;
                self.ipam.free(&key, now_ms);
                self.ordinary.remove(&n);
                self.ordinary.insert(self.next_ordinary, None);
                self.next_ordinary += 1;
            }
        }
        let waiting: Vec<u64> = self
            .ordinary
            .iter()
            .filter(|(_, ip)| ip.is_none())
            .map(|(n, _)| *n)
            .collect();
        for n in waiting {
            let req = self.ordinary_request(n);
            let pod = format!("{}/{}", req.pod_namespace, req.pod_name);
            let d = fixed_ip::decide(
                &pod,
                self.ipam.pool(),
                Some(Lookup::NotFound),
                now_ms,
                now_ms,
            );
            if d == Decision::Any
                && let Ok(a) = self.ipam.allocate(&req, now_ms, "")
            {
                self.ordinary.insert(n, Some(a.ip));
            }
        }
        let names: Vec<String> = self
            .sts
            .iter()
            .filter(|(_, p)| p.ip.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for name in names {
            let Some(p) = self.sts.get_mut(&name) else {
                continue;
            };
            let deadline = *p.deadline_ms.get_or_insert(now_ms + ADD_WAIT_MS);
            let uid = p.uid.clone();
            let req = self.sts_request(&name, &uid);
            let pod = format!("{}/{name}", self.namespace);
            let got = match fixed_ip::decide(
                &pod,
                self.ipam.pool(),
                Some(lookup(&name)),
                now_ms,
                deadline,
            ) {
                Decision::Fixed(ip) => self.ipam.allocate_fixed(&req, ip, now_ms, "").ok(),
                Decision::Any => self.ipam.allocate(&req, now_ms, "").ok(),
                Decision::TimedOut(_) => {
                    // The kubelet gives the sandbox up and tries a new one.
                    self.timed_out += 1;
                    if let Some(p) = self.sts.get_mut(&name) {
                        p.deadline_ms = None;
                    }
                    None
                }
                Decision::Wait(_) | Decision::Lookup => None,
            };
            if let (Some(a), Some(p)) = (got, self.sts.get_mut(&name)) {
                p.ip = Some(a.ip);
                p.deadline_ms = None;
            }
        }
        let patch = self
            .ipam
            .report(&answers, now_ms, self.report_interval_ms, "");
        if patch.is_some() {
            self.patches += 1;
        }
        patch
    }

    /// Every address this agent has handed out, with its pod.
    pub fn allocations(&self) -> impl Iterator<Item = (Ipv4Addr, String)> + '_ {
        self.ipam
            .pool()
            .allocations()
            .map(|a| (a.ip, format!("{}/{}", a.pod_namespace, a.pod_name)))
    }

    /// The addresses of this agent's pool (its NodeNetwork's, as last taken in).
    pub fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.ipam.pool().ips().iter().copied()
    }

    /// The address StatefulSet pod `pod` got here, if any.
    pub fn sts_ip(&self, pod: &str) -> Option<Ipv4Addr> {
        self.sts.get(pod).and_then(|p| p.ip)
    }

    /// Ordinary pods running (with an address).
    pub fn ordinary_running(&self) -> usize {
        self.ordinary.values().filter(|ip| ip.is_some()).count()
    }
}
