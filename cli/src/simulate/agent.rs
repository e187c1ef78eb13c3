//! A simulated node: pods that start and end at random, each CNI ADD and
//! DEL answered by the real agent's node IPAM
//! ([`sextant_agent_core::node::LocalIpam`]): the same pool, cooldown,
//! release handshake, `pending` count and report timing as `sextant-agent`,
//! writing the same status merge patches. Only the pods are simulated.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Mutex,
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_agent_core::{
    node::LocalIpam,
    pool::{AllocKey, AllocRequest, DEFAULT_COOLDOWN_MS, Pool},
};
use sextant_kit::sync::lock;

use super::store::Store;

/// Who holds every pod IP in the cluster: the double-allocation check.
#[derive(Default)]
pub struct Ledger {
    owners: Mutex<HashMap<Ipv4Addr, String>>,
    pub double_allocations: std::sync::atomic::AtomicU64,
}

impl Ledger {
    fn take(&self, ip: Ipv4Addr, owner: String) {
        let mut o = lock(&self.owners);
        if o.insert(ip, owner).is_some() {
            self.double_allocations
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn give_back(&self, ip: Ipv4Addr) {
        lock(&self.owners).remove(&ip);
    }
}

/// One node's agent.
pub struct Agent {
    pub node: String,
    rng: SmallRng,
    ipam: LocalIpam,
    /// Running pods: pod number -> its IP.
    pods: BTreeMap<u64, Ipv4Addr>,
    /// Pods created and not yet given an IP (their ADDs are retried every step).
    waiting: Vec<u64>,
    next_pod: u64,
    churn_per_second: f64,
    report_interval_ms: u64,
    /// Status PATCHes this agent sent.
    pub patches: u64,
}

/// What one agent step changed.
pub struct Tick {
    /// The agent wrote to its NodeNetwork (a watch event for the operator).
    pub wrote: bool,
    /// Pods still waiting for an IP.
    pub pending: u32,
    /// Free IPs left in the pool after this step.
    pub available: usize,
}

impl Agent {
    pub fn new(
        node: String,
        seed: u64,
        pods: u32,
        churn_per_minute: f64,
        report_interval: Duration,
    ) -> Self {
        Agent {
            node,
            rng: SmallRng::seed_from_u64(seed),
            ipam: LocalIpam::new(Pool::new(DEFAULT_COOLDOWN_MS)),
            pods: BTreeMap::new(),
            waiting: (1..=u64::from(pods)).collect(),
            next_pod: u64::from(pods),
            churn_per_second: churn_per_minute / 60.0,
            report_interval_ms: u64::try_from(report_interval.as_millis()).unwrap_or(u64::MAX),
            patches: 0,
        }
    }

    /// Pods running.
    pub fn running(&self) -> usize {
        self.pods.len()
    }

    fn request(&self, pod: u64) -> AllocRequest {
        AllocRequest {
            key: AllocKey {
                container_id: format!("{}-pod-{pod}", self.node),
                ifname: "eth0".to_string(),
            },
            netns: String::new(),
            pod_namespace: "default".to_string(),
            pod_name: format!("{}-pod-{pod}", self.node),
        }
    }

    /// One step of `dt` at `now_ms` (simulated milliseconds): pods end and
    /// their replacements are created, the agent takes in its NodeNetwork
    /// (answering the handshake), waiting pods' ADDs are retried, and the
    /// report goes out when the agent's rules say it is due.
    pub fn step(&mut self, store: &Store, ledger: &Ledger, dt: Duration, now_ms: u64) -> Tick {
        let p_end = (self.churn_per_second * dt.as_secs_f64()).min(1.0);
        if p_end > 0.0 {
            let ending: Vec<u64> = self
                .pods
                .keys()
                .copied()
                .filter(|_| self.rng.random_bool(p_end))
                .collect();
            for pod in ending {
                let req = self.request(pod);
                if let Some(a) = self.ipam.free(&req.key, now_ms) {
                    ledger.give_back(a.ip);
                }
                self.pods.remove(&pod);
                self.next_pod += 1;
                self.waiting.push(self.next_pod);
            }
        }
        let mut available = 0;
        let node = self.node.clone();
        let patch = store.update(&node, |nn| {
            let answers = self.ipam.apply(nn, now_ms);
            let waiting = std::mem::take(&mut self.waiting);
            for pod in waiting {
                let req = self.request(pod);
                match self.ipam.allocate(&req, now_ms, "") {
                    Ok(a) => {
                        ledger.take(a.ip, format!("{node}/{}", req.pod_name));
                        self.pods.insert(pod, a.ip);
                    }
                    Err(_) => self.waiting.push(pod),
                }
            }
            available = self.ipam.pool().counts(now_ms).free;
            self.ipam
                .report(&answers, now_ms, self.report_interval_ms, "")
        });
        let mut wrote = false;
        if let Some(patch) = patch.flatten() {
            // The PATCH the real agent sends, applied as the API server would.
            match store.merge_patch(&node, &patch) {
                Ok(()) => {
                    self.patches += 1;
                    wrote = true;
                }
                Err(e) => tracing::warn!(%node, error = %e, "usage report refused"),
            }
        }
        Tick {
            wrote,
            pending: u32::try_from(self.waiting.len()).unwrap_or(u32::MAX),
            available,
        }
    }

    /// IPs of running pods.
    pub fn pod_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.pods.values().copied()
    }
}
