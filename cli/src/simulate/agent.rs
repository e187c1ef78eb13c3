//! A simulated node agent: hands pool IPs to pods, keeps freed IPs in
//! cooldown, answers the release handshake and reports usage, as the real
//! agent does through its NodeNetwork.

use std::{
    collections::{BTreeMap, HashMap},
    net::Ipv4Addr,
    sync::Mutex,
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_crds::{AgentUsage, ReleaseState};
use sextant_kit::sync::lock;
use tokio::time::Instant;

use super::store::Store;

/// Cooldown of a freed IP before reuse (AWS VPC CNI's IP_COOLDOWN_PERIOD).
pub const COOLDOWN: Duration = Duration::from_secs(30);

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
    pods: BTreeMap<u64, Ipv4Addr>,
    pending: u32,
    next_pod: u64,
    cooling: BTreeMap<Ipv4Addr, Instant>,
    last_report: Option<Instant>,
    reported: Option<AgentUsage>,
    churn_per_second: f64,
    report_interval: Duration,
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
            pods: BTreeMap::new(),
            pending: pods,
            next_pod: 0,
            cooling: BTreeMap::new(),
            last_report: None,
            reported: None,
            churn_per_second: churn_per_minute / 60.0,
            report_interval,
        }
    }

    /// Pods running.
    pub fn running(&self) -> usize {
        self.pods.len()
    }

    /// One step of `dt`: churn, handshake, allocation, report.
    pub fn step(&mut self, store: &Store, ledger: &Ledger, dt: Duration, now: Instant) -> Tick {
        // Pods end; their replacements wait for an IP.
        let p_end = (self.churn_per_second * dt.as_secs_f64()).min(1.0);
        if p_end > 0.0 {
            let ending: Vec<u64> = self
                .pods
                .keys()
                .copied()
                .filter(|_| self.rng.random_bool(p_end))
                .collect();
            for pod in ending {
                if let Some(ip) = self.pods.remove(&pod) {
                    ledger.give_back(ip);
                    self.cooling.insert(ip, now + COOLDOWN);
                    self.pending += 1;
                }
            }
        }
        self.cooling.retain(|_, until| *until > now);

        let node = self.node.clone();
        let in_use: BTreeMap<Ipv4Addr, u64> = self.pods.iter().map(|(p, ip)| (*ip, *p)).collect();
        let report_due = self
            .last_report
            .is_none_or(|t| now.saturating_duration_since(t) >= self.report_interval);
        let mut wrote = false;
        let mut available = 0;
        store.update(&node, |nn| {
            let status = nn.status.get_or_insert_with(Default::default);
            // The handshake: answer marks, forget released IPs.
            let mut answered = false;
            status.release.retain(|ip, state| {
                let parsed: Option<Ipv4Addr> = ip.parse().ok();
                match (*state, parsed) {
                    (ReleaseState::Released, Some(ip)) => {
                        self.cooling.remove(&ip);
                        answered = true;
                        false
                    }
                    (ReleaseState::Marked, Some(ip)) => {
                        *state = if in_use.contains_key(&ip) || self.cooling.contains_key(&ip) {
                            ReleaseState::DoNotRelease
                        } else {
                            ReleaseState::ReadyForRelease
                        };
                        answered = true;
                        true
                    }
                    _ => true,
                }
            });
            // Hand out free IPs: in the pool, not used, not cooling, not promised away.
            let mut free: Vec<Ipv4Addr> = status
                .pool
                .keys()
                .filter_map(|ip| ip.parse().ok())
                .filter(|ip| {
                    !in_use.contains_key(ip)
                        && !self.cooling.contains_key(ip)
                        && !status.fixed_ips.contains_key(&ip.to_string())
                        && !matches!(
                            status.release.get(&ip.to_string()),
                            Some(
                                ReleaseState::Marked
                                    | ReleaseState::ReadyForRelease
                                    | ReleaseState::Released
                            )
                        )
                })
                .collect();
            free.reverse();
            let mut allocated = false;
            while self.pending > 0 {
                let Some(ip) = free.pop() else { break };
                self.next_pod += 1;
                self.pods.insert(self.next_pod, ip);
                ledger.take(ip, format!("{node}/pod-{}", self.next_pod));
                self.pending -= 1;
                allocated = true;
            }
            available = free.len();
            let usage = AgentUsage {
                used: self
                    .pods
                    .iter()
                    .map(|(p, ip)| (ip.to_string(), format!("pod-{p}")))
                    .collect(),
                cooling: self.cooling.keys().map(|ip| ip.to_string()).collect(),
                pending: self.pending,
                reported_at: None,
            };
            let changed = self.reported.as_ref() != Some(&usage);
            // Usage goes out at the report interval; the handshake at once,
            // and so does demand the operator does not know of yet (pods
            // waiting on an empty pool), so a burst is not held up a whole interval.
            let starving = self.pending > self.reported.as_ref().map_or(0, |r| r.pending);
            if (changed && report_due) || starving || (allocated && self.reported.is_none()) {
                status.usage = Some(usage.clone());
                self.reported = Some(usage);
                self.last_report = Some(now);
                wrote = true;
            }
            wrote |= answered;
        });
        Tick {
            wrote,
            pending: self.pending,
            available,
        }
    }

    /// IPs of running pods.
    pub fn pod_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.pods.values().copied()
    }
}
