//! The release handshake of one node, model-checked: the operator's node
//! IPAM ([`sextant_ipam::node::NodeIpam`]: plan, execute, resync) and the
//! agent ([`crate::agent::Agent`]: `LocalIpam`, handshake, checkpoint)
//! talking through the NodeNetwork status, over a cloud of a few addresses.
//!
//! ```text
//!  pods ─ADD/DEL─▶ agent ─PATCH (unguarded merge, in flight, any order)─▶ API server ─▶ watch queues
//!                    ▲                                                         │   (lag ≤ N versions)
//!                    └──────────────── agent watch ◀───────────────────────────┤
//!  operator cache ◀──────────────────────────────────────────────────────────────┘
//!     └─▶ NodeIpam (real) ─▶ MiniCloud ─▶ status PATCH guarded by the read's resourceVersion
//!  faults: agent crash + restart from its checkpoint, operator crash between
//!          its cloud steps and its status write, stale operator reads, reordered PATCHes
//! ```
//!
//! The operator shell is modelled as `sextant-operator::node_network`
//! runs it: a reconcile reads its watch cache, or after a 409 the API
//! server's current object (with `lastResync` cleared when cloud steps went
//! unrecorded), and writes the status guarded by the read's version; with
//! [`Shell::TwoPhase`] (today's) it records a decision that unassigns
//! before making it ([`NodeIpam::decide`], guarded write,
//! [`NodeIpam::carry_out`]), with [`Shell::Reconcile`] (the old one) after.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use jiff::Timestamp;
use sextant_crds::{IpamSpec, NodeNetwork, NodeNetworkSpec, Provider};
use sextant_ipam::{
    make_status_patch,
    metrics::IpamMetrics,
    node::{IpamConfig, NodeIpam},
    plan::ReleasedBound,
    resync::{apply_enis, eni_statuses},
};

use crate::{
    agent::{Agent, EPOCH_MS, TICK_MS},
    apiserver::{Written, patch_status},
    cloud::{CloudState, INSTANCE_TYPE, MiniCloud, VPC, ZONE},
    explore::Model,
};

/// The node.
pub const NODE: &str = "node-a";
/// Its instance.
pub const INSTANCE: &str = "i-a";

/// How the operator shell orders its reads, cloud steps and writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    /// `NodeIpam::reconcile` (cloud steps first), then the status write
    /// guarded by the read's version: the operator shell before issue 14's
    /// defect 7 was fixed, kept as a baseline.
    Reconcile,
    /// `NodeIpam::decide`; a decision that unassigns is written first,
    /// guarded by the read's version, and only then carried out; then the
    /// result is written guarded by the first write's version (the shell of
    /// `sextant-operator::node_network` since commit 4e5b0a8).
    TwoPhase,
}

/// The bounds of one model.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses of the subnet (10.0.0.1 ..).
    pub addresses: u8,
    /// Of them on the node's ENI at the start.
    pub initial: u8,
    /// Pods that start (once) and may end.
    pub pods: u8,
    /// Agent crashes allowed.
    pub agent_crashes: u8,
    /// Operator crashes allowed (between cloud steps and status write, or idle).
    pub operator_crashes: u8,
    /// Cooldowns that may pass.
    pub ticks: u8,
    /// How many versions a watch cache may lag behind the API server.
    pub lag: usize,
    /// The operator shell.
    pub shell: Shell,
    /// Whether the operator's periodic full resync runs.
    pub full_resync: bool,
    /// Check, from every state, that a fault-free continuation settles with
    /// the pool equal to the cloud's and nothing withheld or left in `release`.
    pub liveness: bool,
}

/// A pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pod {
    /// Not started yet.
    New,
    /// Its ADD found the pool empty; kubelet retries.
    Waiting,
    /// Running with this address.
    Running(Ipv4Addr),
    /// Deleted.
    Gone,
}

/// One state of the model.
#[derive(Clone, Debug)]
pub struct State {
    tick: u8,
    cloud: CloudState,
    /// The API server's NodeNetwork (its resourceVersion in metadata).
    api: NodeNetwork,
    /// The operator's watch cache and the versions it has not seen yet.
    op_view: NodeNetwork,
    op_queue: Vec<NodeNetwork>,
    /// A refused write: the next reconcile reads the API server; `true`
    /// when cloud steps went unrecorded.
    op_conflicted: Option<bool>,
    agent: Agent,
    pods: Vec<Pod>,
    agent_crashes: u8,
    op_crashes: u8,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The operator reconciles; `expired`: the `released` bound's TTL has
    /// passed for every waiting entry; `crash`: the operator dies after its
    /// cloud steps, before its (last) status write.
    Reconcile {
        /// TTL passed.
        expired: bool,
        /// Dies before writing.
        crash: bool,
    },
    /// The operator's full resync lists the cloud and patches the node.
    FullResync,
    /// The operator's cache takes the next version.
    OpCache,
    /// The operator restarts (a new leader: fresh cache, no memory).
    OpCrash,
    /// The agent's watch delivers the next version.
    AgentWatch,
    /// The agent's reporter ticks.
    AgentReport,
    /// The API server applies the agent's in-flight PATCH `i`.
    Land(usize),
    /// CNI ADD of pod `i`.
    Add(usize),
    /// CNI DEL of pod `i`.
    Del(usize),
    /// The agent is killed.
    AgentCrash,
    /// The agent starts again.
    AgentRestart,
    /// A cooldown passes.
    Tick,
}

/// The model.
pub struct Handshake {
    config: Config,
    cloud: Arc<MiniCloud>,
    ipam_keep: NodeIpam,
    ipam_expire: NodeIpam,
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

fn pod_name(i: usize) -> String {
    format!("pod-{}", (b'a' + u8::try_from(i).unwrap_or(0)) as char)
}

pub(crate) fn rv(nn: &NodeNetwork) -> u64 {
    nn.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn set_rv(nn: &mut NodeNetwork, v: u64) {
    nn.metadata.resource_version = Some(v.to_string());
}

pub(crate) fn timestamp(tick: u8) -> Timestamp {
    let ms = EPOCH_MS + u64::from(tick) * TICK_MS;
    Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(0)).unwrap_or(Timestamp::UNIX_EPOCH)
}

pub(crate) fn pool_of(nn: &NodeNetwork) -> BTreeSet<Ipv4Addr> {
    nn.status
        .as_ref()
        .map(|s| s.pool.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

impl Handshake {
    /// The model with `config`.
    pub fn new(config: Config) -> Self {
        let cloud = Arc::new(MiniCloud::new(CloudState::new(vec![], 2, 2)));
        let mk = |ttl: Duration| {
            NodeIpam::new(
                cloud.clone(),
                IpamConfig {
                    cluster: "model".into(),
                    vpc_cache_ttl: Duration::ZERO,
                    released_bound: ReleasedBound { ttl, max: 64 },
                    ..IpamConfig::default()
                },
                IpamMetrics::default(),
            )
        };
        Handshake {
            ipam_keep: mk(Duration::from_secs(3600 * 24 * 365)),
            ipam_expire: mk(Duration::ZERO),
            cloud,
            config,
        }
    }

    fn spec() -> NodeNetworkSpec {
        NodeNetworkSpec {
            provider: Provider::Aws,
            instance_id: Some(INSTANCE.into()),
            instance_type: Some(INSTANCE_TYPE.into()),
            zone: Some(ZONE.into()),
            vpc_id: Some(VPC.into()),
            ipam: IpamSpec {
                pre_allocate: Some(1),
                min_allocate: Some(0),
                max_above_watermark: Some(0),
                ..IpamSpec::default()
            },
            pod_cidrs: vec![],
        }
    }

    /// Writes `patch` (the operator's or an agent's) to the API server and
    /// hands the new version to the watches.
    fn write(&self, s: &mut State, patch: &serde_json::Value) -> Written {
        let mut v = rv(&s.api);
        let w = patch_status(&mut s.api.status, &mut v, patch);
        if w == Written::Changed {
            set_rv(&mut s.api, v);
            let lag = self.config.lag;
            s.op_queue.push(s.api.clone());
            while s.op_queue.len() > lag {
                s.op_view = s.op_queue.remove(0);
            }
            let api = s.api.clone();
            s.agent.observe(&api, lag);
        }
        w
    }

    fn ipam(&self, expired: bool) -> &NodeIpam {
        let ipam = if expired {
            &self.ipam_expire
        } else {
            &self.ipam_keep
        };
        // Every reconcile starts from what the operator keeps across
        // reconciles forgotten (as after a restart); `expired` stands for
        // the released bound's TTL having passed.
        ipam.forget(NODE);
        ipam
    }

    fn op_restart(s: &mut State) {
        s.op_conflicted = None;
        s.op_view = s.api.clone();
        s.op_queue.clear();
    }

    fn reconcile(&self, s: &mut State, expired: bool, crash: bool) -> bool {
        let (read, unrecorded) = match s.op_conflicted.take() {
            None => (s.op_view.clone(), false),
            Some(m) => (s.api.clone(), m),
        };
        let mut work = read.clone();
        if unrecorded && let Some(st) = work.status.as_mut() {
            st.last_resync = None;
        }
        let ipam = self.ipam(expired);
        let now = timestamp(s.tick);
        self.cloud.set(s.cloud.clone());
        match self.config.shell {
            Shell::Reconcile => {
                let Ok(rec) = futures::executor::block_on(ipam.reconcile(&work, now)) else {
                    s.cloud = self.cloud.get();
                    return !crash;
                };
                s.cloud = self.cloud.get();
                let mutated = unrecorded || !rec.done.is_empty() || rec.error.is_some();
                if crash {
                    if !mutated || s.op_crashes == 0 {
                        return false;
                    }
                    s.op_crashes -= 1;
                    Self::op_restart(s);
                    return true;
                }
                if let Some(p) = make_status_patch(&read, &rec.status)
                    && self.write(s, &p) == Written::Conflict
                {
                    s.op_conflicted = Some(mutated);
                }
            }
            Shell::TwoPhase => {
                let Ok(decision) = futures::executor::block_on(ipam.decide(&work, now)) else {
                    return !crash;
                };
                let mut written = read.clone();
                if decision.records_unassigns() {
                    let Some(p) = make_status_patch(&read, decision.status()) else {
                        return false;
                    };
                    match self.write(s, &p) {
                        Written::Conflict => {
                            s.op_conflicted = Some(unrecorded);
                            return !crash;
                        }
                        Written::Changed | Written::Unchanged => written = s.api.clone(),
                    }
                }
                let rec = futures::executor::block_on(ipam.carry_out(decision, now));
                s.cloud = self.cloud.get();
                let mutated = unrecorded || !rec.done.is_empty() || rec.error.is_some();
                if crash {
                    if !mutated || s.op_crashes == 0 {
                        return false;
                    }
                    s.op_crashes -= 1;
                    Self::op_restart(s);
                    return true;
                }
                if let Some(p) = make_status_patch(&written, &rec.status)
                    && self.write(s, &p) == Written::Conflict
                {
                    s.op_conflicted = Some(mutated);
                }
            }
        }
        true
    }

    /// The periodic full resync of `sextant-operator::node_network::full_resync`
    /// for this node: the listing's ENIs into the cached status, guarded by
    /// the cached version.
    fn full_resync(&self, s: &mut State) -> bool {
        self.cloud.set(s.cloud.clone());
        let Ok(net) = futures::executor::block_on(sextant_cloud::EniCloud::instance_network(
            self.cloud.as_ref(),
            INSTANCE,
        )) else {
            return false;
        };
        let nn = &s.op_view;
        let old = nn.status.clone().unwrap_or_default();
        let enis = eni_statuses(&net, &nn.spec.ipam.exclude_interface_tags);
        if enis == old.enis {
            return false;
        }
        let mut new = old.clone();
        apply_enis(&mut new, enis, nn.spec.ipam.first_interface_index());
        new.last_resync = Some(timestamp(s.tick).to_string());
        let Some(p) = make_status_patch(nn, &new) else {
            return false;
        };
        self.write(s, &p);
        true
    }

    /// Renumbers resourceVersions from 1 (only equality matters).
    fn normalize(s: &mut State) {
        let base = std::iter::once(&s.api)
            .chain(std::iter::once(&s.op_view))
            .chain(s.op_queue.iter())
            .map(rv)
            .min()
            .unwrap_or(0)
            .saturating_sub(1);
        for nn in std::iter::once(&mut s.api)
            .chain(std::iter::once(&mut s.op_view))
            .chain(s.op_queue.iter_mut())
        {
            let v = rv(nn) - base;
            set_rv(nn, v);
        }
    }

    fn step(&self, s: &State, a: &Action) -> Option<State> {
        let mut n = s.clone();
        let changed = match a {
            Action::Reconcile { expired, crash } => self.reconcile(&mut n, *expired, *crash),
            Action::FullResync => self.full_resync(&mut n),
            Action::OpCache => {
                if n.op_queue.is_empty() {
                    return None;
                }
                n.op_view = n.op_queue.remove(0);
                true
            }
            Action::OpCrash => {
                if n.op_crashes == 0 {
                    return None;
                }
                n.op_crashes -= 1;
                Self::op_restart(&mut n);
                true
            }
            Action::AgentWatch => {
                n.agent.watch(n.tick);
                true
            }
            Action::AgentReport => n.agent.report(n.tick),
            Action::Land(i) => {
                let p = n.agent.take(*i)?;
                self.write(&mut n, &p);
                true
            }
            Action::Add(i) => match n.agent.add(&pod_name(*i), n.tick) {
                Some(Some(ip)) => {
                    n.pods[*i] = Pod::Running(ip);
                    true
                }
                Some(None) => {
                    n.pods[*i] = Pod::Waiting;
                    true
                }
                None => false,
            },
            Action::Del(i) => {
                n.agent.del(&pod_name(*i), n.tick);
                n.pods[*i] = Pod::Gone;
                true
            }
            Action::AgentCrash => {
                n.agent_crashes -= 1;
                n.agent.crash();
                true
            }
            Action::AgentRestart => {
                let pods = n.pods.clone();
                let alive = |c: &str| {
                    pods.iter()
                        .enumerate()
                        .any(|(i, p)| matches!(p, Pod::Running(_)) && pod_name(i) == c)
                };
                let api = n.api.clone();
                if n.agent.restart(&api, n.tick, alive).is_err() {
                    return None;
                }
                true
            }
            Action::Tick => {
                n.tick += 1;
                true
            }
        };
        if !changed {
            return None;
        }
        Self::normalize(&mut n);
        Some(n)
    }

    /// A fault-free continuation from `s` until nothing changes: every
    /// PATCH lands, caches catch up, the agent answers and reports, waiting
    /// pods retry, the operator reconciles (the released bound passed) and
    /// resyncs, time passes.
    fn settle(&self, s: &State) -> State {
        let mut s = s.clone();
        let mut quiet = 0;
        for _ in 0..40 {
            let before = (s.api.status.clone(), s.cloud.clone());
            let mut sent = false;
            if s.agent.ipam.is_none()
                && let Some(n) = self.step(&s, &Action::AgentRestart)
            {
                s = n;
            }
            for _ in 0..8 {
                while !s.agent.inflight.is_empty() {
                    if let Some(n) = self.step(&s, &Action::Land(0)) {
                        s = n;
                    } else {
                        s.agent.inflight.remove(0);
                    }
                }
                if !s.agent.can_watch() {
                    break;
                }
                s.agent.watch(s.tick);
            }
            for i in 0..s.pods.len() {
                if matches!(s.pods[i], Pod::Waiting | Pod::New)
                    && let Some(n) = self.step(&s, &Action::Add(i))
                {
                    s = n;
                }
            }
            if s.agent.report(s.tick) {
                sent = true;
            }
            while !s.agent.inflight.is_empty() {
                if let Some(n) = self.step(&s, &Action::Land(0)) {
                    s = n;
                } else {
                    s.agent.inflight.remove(0);
                }
            }
            Self::op_restart(&mut s);
            self.reconcile(&mut s, true, false);
            Self::op_restart(&mut s);
            self.full_resync(&mut s);
            s.tick = s.tick.saturating_add(1);
            if (s.api.status.clone(), s.cloud.clone()) == before && !sent {
                quiet += 1;
                if quiet >= 3 {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
        s
    }

    fn settled_violation(&self, s: &State) -> Option<String> {
        let e = self.settle(s);
        let cloud = e.cloud.on_instance(INSTANCE);
        let pool = pool_of(&e.api);
        if pool != cloud {
            return Some(format!(
                "after settling, status.pool {pool:?} differs from the cloud's {cloud:?}"
            ));
        }
        let release = e
            .api
            .status
            .as_ref()
            .map(|st| st.release.clone())
            .unwrap_or_default();
        if !release.is_empty() {
            return Some(format!(
                "after settling, status.release still holds {release:?}"
            ));
        }
        let ipam = e.agent.ipam.as_ref()?;
        let now = crate::agent::now_ms(e.tick);
        for a in &cloud {
            if !ipam.pool().is_allocated(*a) && !ipam.pool().is_free(*a, now) {
                return Some(format!(
                    "after settling, {a} is on the node's ENI, unused, and withheld by the agent"
                ));
            }
        }
        None
    }
}

impl Model for Handshake {
    type State = State;
    type Action = Action;

    fn init(&self) -> Vec<State> {
        let c = &self.config;
        let universe: Vec<Ipv4Addr> = (1..=c.addresses).map(ip).collect();
        let mut cloud = CloudState::new(universe.clone(), 2, u32::from(c.addresses) + 1);
        cloud.add_eni("eni-0", Some((INSTANCE, 0)), BTreeMap::new());
        cloud.add_eni("eni-1", Some((INSTANCE, 1)), BTreeMap::new());
        if let Some(e) = cloud.enis.get_mut("eni-1") {
            e.ips = universe
                .iter()
                .copied()
                .take(usize::from(c.initial))
                .collect();
        }
        let mut api = NodeNetwork::new(NODE, Self::spec());
        set_rv(&mut api, 1);
        vec![State {
            tick: 0,
            cloud,
            agent: Agent::new(&api),
            op_view: api.clone(),
            op_queue: vec![],
            op_conflicted: None,
            api,
            pods: vec![Pod::New; usize::from(c.pods)],
            agent_crashes: c.agent_crashes,
            op_crashes: c.operator_crashes,
        }]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let read = if s.op_conflicted.is_some() {
            &s.api
        } else {
            &s.op_view
        };
        // The released bound matters only when there are entries it drops.
        let waiting = read.status.as_ref().is_some_and(|st| {
            st.release.iter().any(|(k, v)| {
                *v == sextant_crds::ReleaseState::Released && !st.pool.contains_key(k)
            })
        });
        for expired in [false, true] {
            if expired && !waiting {
                continue;
            }
            for crash in [false, true] {
                if crash && s.op_crashes == 0 {
                    continue;
                }
                out.push(Action::Reconcile { expired, crash });
            }
        }
        if self.config.full_resync {
            out.push(Action::FullResync);
        }
        if !s.op_queue.is_empty() {
            out.push(Action::OpCache);
        }
        if s.op_crashes > 0 {
            out.push(Action::OpCrash);
        }
        if s.agent.can_watch() {
            out.push(Action::AgentWatch);
        }
        if s.agent.can_report() {
            out.push(Action::AgentReport);
        }
        for i in s.agent.landable() {
            out.push(Action::Land(i));
        }
        let up = s.agent.ipam.is_some();
        for (i, p) in s.pods.iter().enumerate() {
            match p {
                Pod::New | Pod::Waiting if up => out.push(Action::Add(i)),
                Pod::Running(_) => out.push(Action::Del(i)),
                _ => {}
            }
        }
        if up && s.agent_crashes > 0 {
            out.push(Action::AgentCrash);
        }
        if !up {
            out.push(Action::AgentRestart);
        }
        if s.tick < self.config.ticks {
            out.push(Action::Tick);
        }
    }

    fn next(&self, s: &State, a: &Action) -> Option<State> {
        self.step(s, a)
    }

    fn canonical(&self, s: &State) -> String {
        let j = |n: &NodeNetwork| format!("{}@{}", crate::agent::status_key(n), rv(n));
        let q: Vec<String> = s.op_queue.iter().map(j).collect();
        format!(
            "t{} c{:?} api{} op{} q{q:?} x{:?} {} p{:?} b{}{}",
            s.tick,
            (&s.cloud.enis, s.cloud.next_eni),
            j(&s.api),
            j(&s.op_view),
            s.op_conflicted,
            s.agent.canonical(),
            s.pods,
            s.agent_crashes,
            s.op_crashes
        )
    }

    fn check(&self, s: &State) -> Option<(&'static str, String)> {
        let on_node = s.cloud.on_instance(INSTANCE);
        let mut owners: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for (i, p) in s.pods.iter().enumerate() {
            if let Pod::Running(a) = p {
                if !on_node.contains(a) {
                    return Some((
                        "never_releases_an_address_in_use",
                        format!(
                            "{} runs with {a}, which the cloud no longer has on the node",
                            pod_name(i)
                        ),
                    ));
                }
                if let Some(j) = owners.insert(*a, i) {
                    return Some((
                        "no_address_held_by_two_pods",
                        format!("{} and {} both run with {a}", pod_name(j), pod_name(i)),
                    ));
                }
            }
        }
        let release = s.api.status.as_ref().map_or(0, |st| st.release.len());
        if release > usize::from(self.config.addresses) {
            return Some((
                "release_stays_bounded",
                format!("status.release has {release} entries"),
            ));
        }
        if self.config.liveness
            && let Some(why) = self.settled_violation(s)
        {
            return Some(("no_address_lost_or_withheld", why));
        }
        None
    }

    fn describe(&self, s: &State) -> String {
        let st = s.api.status.clone().unwrap_or_default();
        let used: Vec<&String> = st
            .usage
            .as_ref()
            .map(|u| u.used.keys().collect())
            .unwrap_or_default();
        let view = s.op_view.status.clone().unwrap_or_default();
        format!(
            "t={} cloud={:?} api@{}: pool={:?} release={:?} used={:?} | op cache@{}: release={:?} used={:?}{} | agent={} alloc={:?} inflight={} | pods={:?}",
            s.tick,
            s.cloud.on_instance(INSTANCE),
            rv(&s.api),
            st.pool.keys().collect::<Vec<_>>(),
            st.release,
            used,
            rv(&s.op_view),
            view.release,
            view.usage
                .as_ref()
                .map(|u| u.used.keys().collect::<Vec<_>>())
                .unwrap_or_default(),
            match s.op_conflicted {
                None => String::new(),
                Some(m) => format!(" (409 pending, unrecorded={m})"),
            },
            if s.agent.ipam.is_some() { "up" } else { "down" },
            s.agent.allocations(),
            s.agent
                .inflight
                .iter()
                .map(|(l, p)| format!("{l:?}:{}", p["status"]))
                .collect::<Vec<_>>()
                .join(" "),
            s.pods,
        )
    }
}
