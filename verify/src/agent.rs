//! One node's agent as the models run it: the real
//! [`sextant_agent_core::node::LocalIpam`] and checkpoint code, driven in
//! the order the agent shell (`agent/src/watch/node_network.rs`,
//! `agent/src/agent/`) drives them:
//!
//! ```text
//!  watch event ─▶ LocalIpam::apply ─answers?─▶ checkpoint saved ─▶ report(answers) ─▶ PATCH in flight
//!  reporter tick ─▶ report(no answers) ─▶ PATCH in flight (when due)
//!  CNI ADD ─▶ allocate / allocate_fixed ─▶ checkpoint saved ─▶ pod runs with the address
//!  CNI DEL ─▶ free ─▶ checkpoint saved          (agent down: DEL succeeds, the sweep frees it later)
//!  crash ─▶ memory gone; the checkpoint and PATCHes already sent remain
//!  restart ─▶ checkpoint::restore + apply, sweep (pods gone ─▶ free), a fresh LIST of the NodeNetwork
//! ```
//!
//! The two loops (watch, reporter) each have at most one PATCH in flight;
//! PATCHes of the two loops, and of an incarnation that crashed, land in any
//! order, at any later time.

use std::{collections::BTreeMap, net::Ipv4Addr};

use serde_json::Value;
use sextant_agent_core::{
    checkpoint::{self, Checkpoint},
    node::{Answers, LocalIpam},
    pool::{AllocKey, AllocRequest, DEFAULT_COOLDOWN_MS, Pool},
};
use sextant_crds::NodeNetwork;

/// Milliseconds of one model tick: one reuse cooldown.
pub const TICK_MS: u64 = DEFAULT_COOLDOWN_MS;

/// Epoch of the model clock (ms since the Unix epoch).
pub const EPOCH_MS: u64 = 1_800_000_000_000;

/// The agent's clock at `tick`.
pub fn now_ms(tick: u8) -> u64 {
    EPOCH_MS + u64::from(tick) * TICK_MS
}

/// Which loop sent a PATCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Loop {
    /// The watch loop (handshake answers).
    Watch,
    /// The reporter.
    Report,
    /// A loop of an incarnation that crashed.
    Dead,
}

/// The CNI request of pod `pod` (container id = pod name).
pub fn request(pod: &str) -> AllocRequest {
    AllocRequest {
        key: key(pod),
        netns: format!("/var/run/netns/{pod}"),
        pod_namespace: "default".into(),
        pod_name: pod.into(),
    }
}

/// The allocation key of pod `pod`.
pub fn key(pod: &str) -> AllocKey {
    AllocKey {
        container_id: pod.into(),
        ifname: "eth0".into(),
    }
}

/// One agent and what survives it.
#[derive(Clone, Debug)]
pub struct Agent {
    /// The running agent's state; `None` while it is down.
    pub ipam: Option<LocalIpam>,
    /// NodeNetwork versions its watch has not delivered yet.
    pub queue: Vec<NodeNetwork>,
    /// The checkpoint file.
    pub checkpoint: Option<Checkpoint>,
    /// Status PATCHes sent and not yet applied by the API server.
    pub inflight: Vec<(Loop, Value)>,
}

impl Agent {
    /// A running agent that has seen nothing yet and will list `nn` first.
    pub fn new(nn: &NodeNetwork) -> Self {
        Agent {
            ipam: Some(LocalIpam::new(Pool::new(DEFAULT_COOLDOWN_MS))),
            queue: vec![strip(nn)],
            checkpoint: None,
            inflight: vec![],
        }
    }

    /// A new version of the NodeNetwork for the watch; of a watch more
    /// than `lag` versions behind, the oldest are skipped (as a relist
    /// does: the agent's apply is level-based, it needs the newest only).
    pub fn observe(&mut self, nn: &NodeNetwork, lag: usize) {
        if self.ipam.is_none() {
            return;
        }
        self.queue.push(strip(nn));
        while self.queue.len() > lag.max(1) {
            self.queue.remove(0);
        }
    }

    fn busy(&self, l: Loop) -> bool {
        self.inflight.iter().any(|(x, _)| *x == l)
    }

    /// Whether the watch loop can deliver the next version.
    pub fn can_watch(&self) -> bool {
        self.ipam.is_some() && !self.queue.is_empty() && !self.busy(Loop::Watch)
    }

    /// The watch loop delivers the next version.
    pub fn watch(&mut self, tick: u8) {
        if self.queue.is_empty() {
            return;
        }
        let nn = self.queue.remove(0);
        self.apply(&nn, tick);
    }

    /// Applies `nn` as the watch loop does: answers go out with the usage
    /// report, the checkpoint (with the addresses now promised) saved first.
    fn apply(&mut self, nn: &NodeNetwork, tick: u8) {
        let Some(ipam) = self.ipam.as_mut() else {
            return;
        };
        let now = now_ms(tick);
        let answers = ipam.apply(nn, now);
        if answers.is_empty() {
            return;
        }
        self.checkpoint = Some(Checkpoint::of(ipam.pool(), now));
        if let Some(p) = ipam.report(&answers, now, 0, "t") {
            // A loop still waiting on a PATCH queues the next one behind it:
            // model it as a PATCH of the same loop, landing after it.
            self.inflight.push((Loop::Watch, p));
        }
    }

    /// Whether the reporter can run.
    pub fn can_report(&self) -> bool {
        self.ipam.is_some() && !self.busy(Loop::Report)
    }

    /// The reporter's tick: `false` when no report was due.
    pub fn report(&mut self, tick: u8) -> bool {
        let Some(ipam) = self.ipam.as_mut() else {
            return false;
        };
        match ipam.report(&Answers::new(), now_ms(tick), 0, "t") {
            Some(p) => {
                self.inflight.push((Loop::Report, p));
                true
            }
            None => false,
        }
    }

    /// The PATCHes that may land next: the first of each loop.
    pub fn landable(&self) -> Vec<usize> {
        let mut firsts: BTreeMap<Loop, usize> = BTreeMap::new();
        for (i, (l, _)) in self.inflight.iter().enumerate() {
            if *l == Loop::Dead {
                firsts.insert(Loop::Dead, i);
                // Every PATCH of a dead incarnation may land in any order.
                continue;
            }
            firsts.entry(*l).or_insert(i);
        }
        let mut out: Vec<usize> = self
            .inflight
            .iter()
            .enumerate()
            .filter(|(i, (l, _))| *l == Loop::Dead || firsts.get(l) == Some(i))
            .map(|(i, _)| i)
            .collect();
        out.sort_unstable();
        out
    }

    /// Takes PATCH `i` off the wire.
    pub fn take(&mut self, i: usize) -> Option<Value> {
        (i < self.inflight.len()).then(|| self.inflight.remove(i).1)
    }

    /// CNI ADD of `pod` for any free address; `Some(None)` when the pool
    /// is empty (the pod waits), `None` when the agent is down.
    pub fn add(&mut self, pod: &str, tick: u8) -> Option<Option<Ipv4Addr>> {
        let ipam = self.ipam.as_mut()?;
        let now = now_ms(tick);
        match ipam.allocate(&request(pod), now, "t") {
            Ok(a) => {
                self.checkpoint = Some(Checkpoint::of(ipam.pool(), now));
                Some(Some(a.ip))
            }
            Err(_) => Some(None),
        }
    }

    /// CNI ADD of `pod` for its fixed address `ip`; `Some(None)` when
    /// refused, `None` when the agent is down.
    pub fn add_fixed(&mut self, pod: &str, ip: Ipv4Addr, tick: u8) -> Option<Option<Ipv4Addr>> {
        let ipam = self.ipam.as_mut()?;
        let now = now_ms(tick);
        match ipam.allocate_fixed(&request(pod), ip, now, "t") {
            Ok(a) => {
                self.checkpoint = Some(Checkpoint::of(ipam.pool(), now));
                Some(Some(a.ip))
            }
            Err(_) => Some(None),
        }
    }

    /// CNI DEL of `pod` (succeeds with the agent down; the restart's sweep frees it).
    pub fn del(&mut self, pod: &str, tick: u8) {
        if let Some(ipam) = self.ipam.as_mut() {
            let now = now_ms(tick);
            ipam.free(&key(pod), now);
            self.checkpoint = Some(Checkpoint::of(ipam.pool(), now));
        }
    }

    /// The agent dies: memory and queued watch events gone, PATCHes on the
    /// wire may still land.
    pub fn crash(&mut self) {
        self.ipam = None;
        self.queue.clear();
        for (l, _) in &mut self.inflight {
            *l = Loop::Dead;
        }
    }

    /// The agent starts again: checkpoint restored (a double assignment in
    /// it is an error: the agent refuses to start), pods whose interface is
    /// gone (`alive` false) freed by the sweep, then a fresh LIST (`nn`).
    pub fn restart(
        &mut self,
        nn: &NodeNetwork,
        tick: u8,
        alive: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let now = now_ms(tick);
        let mut pool = Pool::new(DEFAULT_COOLDOWN_MS);
        if let Some(cp) = &self.checkpoint {
            let all = checkpoint::restore(cp, |_| true).map_err(|e| e.to_string())?;
            checkpoint::apply(&mut pool, cp, all, now, DEFAULT_COOLDOWN_MS);
        }
        let mut ipam = LocalIpam::new(pool);
        let gone: Vec<AllocKey> = ipam
            .pool()
            .allocations()
            .filter(|a| !alive(&a.container_id))
            .map(|a| a.key())
            .collect();
        if !gone.is_empty() {
            for k in &gone {
                ipam.free(k, now);
            }
            self.checkpoint = Some(Checkpoint::of(ipam.pool(), now));
        }
        self.ipam = Some(ipam);
        self.queue = vec![strip(nn)];
        Ok(())
    }

    /// The allocations of the running agent: address -> pod.
    pub fn allocations(&self) -> BTreeMap<Ipv4Addr, String> {
        self.ipam
            .as_ref()
            .map(|i| {
                i.pool()
                    .allocations()
                    .map(|a| (a.ip, a.container_id.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The canonical form of this agent for state identity.
    pub fn canonical(&self) -> String {
        let q: Vec<String> = self.queue.iter().map(status_key).collect();
        let f: Vec<String> = self
            .inflight
            .iter()
            .map(|(l, p)| format!("{l:?}{p}"))
            .collect();
        format!(
            "agent{{{:?}}}q{q:?}cp{{{:?}}}f{f:?}",
            self.ipam, self.checkpoint
        )
    }
}

/// `nn` without its resourceVersion (the agent never uses it): fewer
/// distinct states.
fn strip(nn: &NodeNetwork) -> NodeNetwork {
    let mut n = nn.clone();
    n.metadata.resource_version = None;
    n
}

/// A compact canonical form of `nn`'s status: every field the code under
/// test reads or writes (the summary is derived from the rest).
pub fn status_key(nn: &NodeNetwork) -> String {
    let Some(s) = &nn.status else {
        return "-".into();
    };
    let enis: Vec<(&String, u32, &Vec<String>)> = s
        .enis
        .iter()
        .map(|e| (&e.id, e.device_index, &e.addresses))
        .collect();
    let usage = s.usage.as_ref().map(|u| (&u.used, &u.cooling, u.pending));
    let conds: Vec<(&String, &String, &String, &String)> = s
        .conditions
        .iter()
        .map(|c| (&c.type_, &c.status, &c.message, &c.reason))
        .collect();
    let times: Vec<String> = s
        .conditions
        .iter()
        .map(|c| c.last_transition_time.0.to_string())
        .collect();
    format!(
        "{enis:?}|{:?}|{usage:?}|{:?}|{:?}|{:?}|{conds:?}{times:?}|{:?}",
        s.pool.keys().collect::<Vec<_>>(),
        s.release,
        s.fixed_ips,
        s.last_resync,
        s.observed_generation
    )
}
