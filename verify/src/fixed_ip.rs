//! The fixed-IP protocol, model-checked: one StatefulSet ordinal (`web-0`)
//! with a `FixedIP`, two nodes, the pod rescheduled between them, node
//! deletion, the operator crashing between its steps. The FixedIP
//! decisions and cloud steps are the real
//! [`sextant_ipam::fixed_ip::plan::plan`] and
//! [`sextant_ipam::fixed_ip::execute::execute`]; each node runs the real
//! node IPAM ([`NodeIpam`], preAllocate 0 so every unguarded free address
//! is excess and gets marked) and the real agent ([`crate::agent::Agent`]),
//! with an ordinary pod on each node that takes any free address.
//!
//! ```text
//!  FixedIP reconcile: plan ─▶ status-only writes ─▶ execute (MiniCloud) ─▶ record queue
//!  record queue, one write per step (the operator may die between any two):
//!     Reserved: create FixedIP, write its status
//!     Moved:    old node gives it up (pool, fixedIps, ENI addresses; guarded, re-read on 409),
//!               new node's fixedIps entry (unguarded), FixedIP status (guarded by its read)
//!     Parked:   FixedIP status            Released: delete FixedIP, old node gives it up
//!  node IPAM per node (reconcile + guarded write, full resync), agents as in the handshake model
//! ```
//!
//! The record order is that of `sextant-operator::fixed_ip::controller`
//! (`record`, `node_lost_fixed_ip`, `node_fixed_ip`); the operator's reads
//! are current (watch-cache staleness is the handshake model's subject).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use sextant_crds::{
    FixedIP, FixedIPSpec, FixedIPStatus, IpamSpec, NodeNetwork, NodeNetworkSpec, Provider,
    ReclaimPolicy,
};
use sextant_ipam::{
    fixed_ip::{
        execute::{Outcome, Parking, execute, status_after, status_for},
        plan::{FixedIpInput, PodView, StatefulSetView, Step, node_views, plan},
        record::{claims, fixed_ip_entry_patch, gives_up, moved_off_patch},
    },
    make_status_patch,
    metrics::IpamMetrics,
    node::{IpamConfig, NodeIpam},
    resync::{apply_enis, eni_statuses},
};

use crate::{
    agent::Agent,
    apiserver::{Written, patch_status},
    cloud::{CloudState, INSTANCE_TYPE, MiniCloud, VPC, ZONE},
    explore::Model,
    handshake::{pool_of, rv, set_rv, timestamp},
};

/// The nodes.
pub const NODES: [&str; 2] = ["node-a", "node-b"];
const STS: &str = "web";
const POD: &str = "web-0";
const OWNER: &str = "default/web-0";
const CLUSTER: &str = "model";

fn instance(node: &str) -> String {
    format!("i-{}", &node[5..])
}

fn pod_eni(node: &str) -> String {
    format!("eni-{}1", &node[5..])
}

fn other_pod(node: &str) -> String {
    format!("x-{}", &node[5..])
}

/// The bounds of one model.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses of the subnet.
    pub addresses: u8,
    /// Times the pod may be (re)scheduled.
    pub schedules: u8,
    /// Operator crashes allowed (between any two record writes).
    pub operator_crashes: u8,
    /// Agent crashes allowed.
    pub agent_crashes: u8,
    /// Whether node B may be deleted.
    pub delete_node: bool,
    /// Whether the StatefulSet may scale to 0 (reclaim `Delete`).
    pub scale_down: bool,
    /// Whether the ordinary pods run.
    pub other_pods: bool,
    /// Whether node IPAM and its full resync run on the nodes.
    pub node_ipam: bool,
    /// Check, from every state, that a fault-free continuation puts the
    /// address on its pod's node, listed there, with the pod running on it.
    pub liveness: bool,
}

/// One write of the FixedIP controller's record step.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Create the FixedIP.
    Create(FixedIPSpec),
    /// Write its status without a guard (the object was just created).
    StatusUnguarded(FixedIPStatus),
    /// Write its status guarded by the version read.
    Status(FixedIPStatus, u64),
    /// Delete it.
    Delete,
    /// Take `ip` off NodeNetwork `node` (read, guarded patch).
    LostFixedIp(String, Ipv4Addr),
    /// Set `ip`'s `fixedIps` entry on NodeNetwork `node` (unguarded).
    NodeFixedIp(String, Ipv4Addr),
    /// Run the plan's cloud steps, then queue what records their outcomes.
    Execute(Vec<Step>),
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRun {
    /// Node.
    pub node: String,
    /// UID.
    pub uid: u8,
    /// The address it runs with, once its ADD succeeded.
    pub ip: Option<Ipv4Addr>,
}

/// One state.
#[derive(Clone, Debug)]
pub struct State {
    cloud: CloudState,
    nns: BTreeMap<String, NodeNetwork>,
    fip: Option<(FixedIP, u64)>,
    replicas: u32,
    pod: Option<PodRun>,
    others: BTreeMap<String, Option<Ipv4Addr>>,
    agents: BTreeMap<String, Agent>,
    record: Vec<Record>,
    uid: u8,
    schedules: u8,
    op_crashes: u8,
    agent_crashes: u8,
}

/// One step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The FixedIP controller reconciles the StatefulSet (plan, status writes, cloud steps).
    FipReconcile,
    /// It makes its next record write.
    FipRecord,
    /// The operator dies (pending record writes lost).
    OpCrash,
    /// Node IPAM reconciles a node.
    NodeIpam(String),
    /// The full resync patches a node.
    FullResync(String),
    /// An agent's watch delivers the next version.
    AgentWatch(String),
    /// An agent's reporter ticks.
    AgentReport(String),
    /// The API server applies an agent's PATCH.
    Land(String, usize),
    /// An agent dies.
    AgentCrash(String),
    /// It starts again.
    AgentRestart(String),
    /// The scheduler puts `web-0` on a node.
    Schedule(String),
    /// CNI ADD of `web-0` (its fixed IP).
    FixedAdd,
    /// `web-0` is deleted (CNI DEL).
    PodDelete,
    /// The ordinary pod on a node starts.
    OtherAdd(String),
    /// The StatefulSet scales to 0.
    ScaleDown,
    /// Node B and its instance go away.
    DeleteNode(String),
}

/// The model.
pub struct FixedIpMoves {
    config: Config,
    cloud: Arc<MiniCloud>,
    ipam: NodeIpam,
}

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, i)
}

impl FixedIpMoves {
    /// The model with `config`.
    pub fn new(config: Config) -> Self {
        let cloud = Arc::new(MiniCloud::new(CloudState::new(vec![], 2, 2)));
        let ipam = NodeIpam::new(
            cloud.clone(),
            IpamConfig {
                cluster: CLUSTER.into(),
                vpc_cache_ttl: Duration::ZERO,
                ..IpamConfig::default()
            },
            IpamMetrics::default(),
        );
        FixedIpMoves {
            config,
            cloud,
            ipam,
        }
    }

    fn spec(node: &str) -> NodeNetworkSpec {
        NodeNetworkSpec {
            provider: Provider::Aws,
            instance_id: Some(instance(node)),
            instance_type: Some(INSTANCE_TYPE.into()),
            zone: Some(ZONE.into()),
            vpc_id: Some(VPC.into()),
            ipam: IpamSpec {
                pre_allocate: Some(0),
                min_allocate: Some(0),
                max_above_watermark: Some(0),
                ..IpamSpec::default()
            },
            pod_cidrs: vec![],
        }
    }

    /// Writes a status patch to node `node`; `None` when it is gone (404).
    /// Every write here is decided on the current object, so versions never
    /// refuse one: the NodeNetworks keep version 1 (fewer distinct states).
    fn write_nn(s: &mut State, node: &str, patch: &Value) -> Option<Written> {
        let nn = s.nns.get_mut(node)?;
        let mut v = rv(nn);
        let w = patch_status(&mut nn.status, &mut v, patch);
        if w == Written::Changed {
            let copy = nn.clone();
            if let Some(a) = s.agents.get_mut(node) {
                a.observe(&copy, 1);
            }
        }
        Some(w)
    }

    fn fip_reconcile(&self, s: &mut State) -> bool {
        if !s.record.is_empty() {
            return false;
        }
        let sts = StatefulSetView {
            namespace: "default".into(),
            name: STS.into(),
            replicas: s.replicas,
            reclaim: ReclaimPolicy::Delete,
            ttl_seconds: None,
            subnet_ids: vec![],
        };
        let fixed: Vec<FixedIP> = s.fip.iter().map(|(f, _)| f.clone()).collect();
        let pods: Vec<PodView> = s
            .pod
            .iter()
            .map(|p| PodView {
                name: POD.into(),
                ordinal: 0,
                node: Some(p.node.clone()),
                uid: format!("uid-{}", p.uid),
            })
            .collect();
        let nodes = node_views(s.nns.values());
        self.cloud.set(s.cloud.clone());
        let subnets =
            futures::executor::block_on(sextant_cloud::EniCloud::subnets(self.cloud.as_ref(), VPC))
                .unwrap_or_default();
        let now = timestamp(0);
        let steps = plan(&FixedIpInput {
            namespace: "default",
            name: STS,
            statefulset: Some(&sts),
            fixed: &fixed,
            pods: &pods,
            nodes: &nodes,
            subnets: &subnets,
            now,
        });
        let mut changed = false;
        // Status-only steps first, guarded by the FixedIP as read (current here).
        for step in &steps {
            if let Step::Status { .. } = step
                && let Some((f, v)) = s.fip.as_mut()
            {
                let new = status_for(&f.status.clone().unwrap_or_default(), step);
                let mut st = f.status.clone();
                let p = json!({ "status": new });
                if patch_status(&mut st, v, &p) == Written::Changed {
                    f.status = st;
                    changed = true;
                }
            }
        }
        // Each destination names its pod before the cloud moves the address
        // there (`record::claims`), then the cloud steps, then the records.
        for c in claims("default", &steps) {
            s.record.push(Record::NodeFixedIp(c.node, c.ip));
        }
        if steps
            .iter()
            .any(|st| !matches!(st, Step::Status { .. } | Step::Blocked { .. }))
        {
            s.record.push(Record::Execute(steps));
        }
        changed || !s.record.is_empty()
    }

    /// The cloud steps of `steps` and the record writes their outcomes
    /// need, in the operator's order (`record::gives_up`, FixedIP status last).
    fn execute(&self, s: &mut State, steps: &[Step]) {
        let nodes = node_views(s.nns.values());
        let read_rv = s.fip.as_ref().map_or(0, |(_, v)| *v);
        let old = s
            .fip
            .as_ref()
            .and_then(|(f, _)| f.status.clone())
            .unwrap_or_default();
        let holders = s
            .fip
            .iter()
            .map(|(f, _)| {
                (
                    POD.to_string(),
                    f.status.as_ref().and_then(|st| st.eni.clone()),
                )
            })
            .collect();
        let parking = Parking::new(CLUSTER, VPC);
        self.cloud.set(s.cloud.clone());
        let (outcomes, _err) = futures::executor::block_on(execute(
            self.cloud.as_ref(),
            &parking,
            CLUSTER,
            steps,
            &nodes,
            &holders,
            timestamp(0),
        ));
        s.cloud = self.cloud.get();
        let uid = s.pod.as_ref().map(|p| format!("uid-{}", p.uid));
        let mut records = Vec::new();
        for o in outcomes {
            match &o {
                Outcome::Reserved {
                    ordinal,
                    ip,
                    subnet_id,
                    zone,
                    ..
                } => {
                    records.push(Record::Create(FixedIPSpec {
                        ip: ip.to_string(),
                        stateful_set: STS.into(),
                        ordinal: *ordinal,
                        zone: Some(zone.clone()),
                        subnet_id: Some(subnet_id.clone()),
                        reclaim_policy: ReclaimPolicy::Delete,
                        ttl_seconds: None,
                    }));
                    records.push(Record::StatusUnguarded(status_after(
                        &FixedIPStatus::default(),
                        &o,
                        None,
                    )));
                }
                Outcome::Moved { .. } | Outcome::Parked { .. } => {
                    if let Some((from, ip)) = gives_up(&o, &old) {
                        records.push(Record::LostFixedIp(from.to_owned(), ip));
                    }
                    let pod_uid = matches!(o, Outcome::Moved { .. })
                        .then_some(uid.as_deref())
                        .flatten();
                    records.push(Record::Status(status_after(&old, &o, pod_uid), read_rv));
                }
                Outcome::Released { .. } => {
                    records.push(Record::Delete);
                    if let Some((from, ip)) = gives_up(&o, &old) {
                        records.push(Record::LostFixedIp(from.to_owned(), ip));
                    }
                }
            }
        }
        // They come next, before anything still queued.
        records.append(&mut s.record);
        s.record = records;
    }

    fn fip_record(&self, s: &mut State) -> bool {
        if s.record.is_empty() {
            return false;
        }
        let op = s.record.remove(0);
        let ok = match op {
            Record::Create(spec) => {
                if s.fip.is_some() {
                    false
                } else {
                    let mut f = FixedIP::new(POD, spec);
                    f.metadata.namespace = Some("default".into());
                    s.fip = Some((f, 1));
                    true
                }
            }
            Record::StatusUnguarded(st) => match s.fip.as_mut() {
                Some((f, v)) => {
                    let mut cur = f.status.clone();
                    patch_status(&mut cur, v, &json!({ "status": st }));
                    f.status = cur;
                    true
                }
                None => false,
            },
            Record::Status(st, guard) => match s.fip.as_mut() {
                Some((f, v)) => {
                    let mut cur = f.status.clone();
                    let p = json!({ "metadata": { "resourceVersion": guard.to_string() }, "status": st });
                    let w = patch_status(&mut cur, v, &p);
                    f.status = cur;
                    w != Written::Conflict
                }
                None => false,
            },
            Record::Delete => {
                s.fip = None;
                true
            }
            Record::LostFixedIp(node, ip) => {
                // GET, then the moved-off patch guarded by it: one step.
                match s.nns.get(&node).map(|nn| moved_off_patch(nn, ip)) {
                    None | Some(None) => true,
                    Some(Some(p)) => {
                        Self::write_nn(s, &node, &p);
                        true
                    }
                }
            }
            Record::NodeFixedIp(node, ip) => {
                let p = fixed_ip_entry_patch(ip, Some(OWNER));
                Self::write_nn(s, &node, &p).is_some()
            }
            Record::Execute(steps) => {
                self.execute(s, &steps);
                true
            }
        };
        if !ok {
            // The reconcile fails here; what is left is never written.
            s.record.clear();
        }
        true
    }

    fn node_ipam(&self, s: &mut State, node: &str) -> bool {
        let Some(read) = s.nns.get(node).cloned() else {
            return false;
        };
        self.ipam.forget(node);
        self.cloud.set(s.cloud.clone());
        let Ok(rec) = futures::executor::block_on(self.ipam.reconcile(&read, timestamp(0))) else {
            return false;
        };
        s.cloud = self.cloud.get();
        if let Some(p) = make_status_patch(&read, &rec.status) {
            Self::write_nn(s, node, &p);
        }
        true
    }

    fn full_resync(&self, s: &mut State, node: &str) -> bool {
        let Some(nn) = s.nns.get(node).cloned() else {
            return false;
        };
        self.cloud.set(s.cloud.clone());
        let Ok(net) = futures::executor::block_on(sextant_cloud::EniCloud::instance_network(
            self.cloud.as_ref(),
            &instance(node),
        )) else {
            return false;
        };
        let old = nn.status.clone().unwrap_or_default();
        let enis = eni_statuses(&net, &nn.spec.ipam.exclude_interface_tags);
        if enis == old.enis {
            return false;
        }
        let mut new = old.clone();
        apply_enis(&mut new, enis, 1);
        new.last_resync = Some(timestamp(0).to_string());
        match make_status_patch(&nn, &new) {
            Some(p) => {
                Self::write_nn(s, node, &p);
                true
            }
            None => false,
        }
    }

    /// Renumbers the FixedIP's versions from 1 (only equality matters).
    fn normalize(s: &mut State) {
        let Some((_, v)) = s.fip.as_mut() else { return };
        let base = s
            .record
            .iter()
            .filter_map(|r| match r {
                Record::Status(_, g) => Some(*g),
                _ => None,
            })
            .chain(std::iter::once(*v))
            .min()
            .unwrap_or(1)
            .saturating_sub(1);
        *v -= base;
        for r in &mut s.record {
            if let Record::Status(_, g) = r {
                *g -= base;
            }
        }
    }

    fn step(&self, s: &State, a: &Action) -> Option<State> {
        let n = self.step_raw(s, a)?;
        let mut n = n;
        Self::normalize(&mut n);
        Some(n)
    }

    fn step_raw(&self, s: &State, a: &Action) -> Option<State> {
        let mut n = s.clone();
        let changed = match a {
            Action::FipReconcile => self.fip_reconcile(&mut n),
            Action::FipRecord => self.fip_record(&mut n),
            Action::OpCrash => {
                n.op_crashes -= 1;
                n.record.clear();
                true
            }
            Action::NodeIpam(node) => self.node_ipam(&mut n, node),
            Action::FullResync(node) => self.full_resync(&mut n, node),
            Action::AgentWatch(node) => {
                let a = n.agents.get_mut(node)?;
                a.watch(0);
                true
            }
            Action::AgentReport(node) => n.agents.get_mut(node)?.report(0),
            Action::Land(node, i) => {
                let p = n.agents.get_mut(node)?.take(*i)?;
                Self::write_nn(&mut n, node, &p);
                true
            }
            Action::AgentCrash(node) => {
                n.agent_crashes -= 1;
                n.agents.get_mut(node)?.crash();
                true
            }
            Action::AgentRestart(node) => {
                let nn = n.nns.get(node)?.clone();
                let pod = n.pod.clone();
                let other = n.others.get(node).copied().flatten();
                let alive = |c: &str| {
                    (c == POD
                        && pod
                            .as_ref()
                            .is_some_and(|p| p.node == *node && p.ip.is_some()))
                        || (c == other_pod(node) && other.is_some())
                };
                n.agents.get_mut(node)?.restart(&nn, 0, alive).ok()?;
                true
            }
            Action::Schedule(node) => {
                n.schedules -= 1;
                n.uid += 1;
                n.pod = Some(PodRun {
                    node: node.clone(),
                    uid: n.uid,
                    ip: None,
                });
                true
            }
            Action::FixedAdd => {
                let p = n.pod.clone()?;
                let agent = n.agents.get_mut(&p.node)?;
                let fixed = agent
                    .ipam
                    .as_ref()?
                    .pool()
                    .fixed()
                    .iter()
                    .find(|(_, o)| o.as_str() == OWNER)
                    .map(|(ip, _)| *ip)?;
                let got = agent.add_fixed(POD, fixed, 0)??;
                if let Some(p) = n.pod.as_mut() {
                    p.ip = Some(got);
                }
                true
            }
            Action::PodDelete => {
                let p = n.pod.take()?;
                if let Some(a) = n.agents.get_mut(&p.node) {
                    a.del(POD, 0);
                }
                true
            }
            Action::OtherAdd(node) => {
                let got = n.agents.get_mut(node)?.add(&other_pod(node), 0)??;
                n.others.insert(node.clone(), Some(got));
                true
            }
            Action::ScaleDown => {
                // The StatefulSet controller deletes the pod of the ordinal.
                n.replicas = 0;
                if let Some(p) = n.pod.take()
                    && let Some(a) = n.agents.get_mut(&p.node)
                {
                    a.del(POD, 0);
                }
                true
            }
            Action::DeleteNode(node) => {
                n.nns.remove(node);
                n.agents.remove(node);
                n.others.remove(node);
                if n.pod.as_ref().is_some_and(|p| p.node == *node) {
                    n.pod = None;
                }
                // The instance is gone: its secondary ENI is left detached.
                if let Some(e) = n.cloud.enis.get_mut(&pod_eni(node)) {
                    e.attached = None;
                }
                n.cloud.enis.remove(&format!("eni-{}0", &node[5..]));
                true
            }
        };
        changed.then_some(n)
    }

    /// A fault-free continuation: everything pending done, every loop run
    /// until nothing changes.
    fn settle(&self, s: &State) -> State {
        let mut s = s.clone();
        let mut quiet = 0;
        for _ in 0..30 {
            let before = self.canonical(&s);
            let nodes: Vec<String> = s.nns.keys().cloned().collect();
            for node in &nodes {
                if s.agents.get(node).is_some_and(|a| a.ipam.is_none())
                    && let Some(n) = self.step(&s, &Action::AgentRestart(node.clone()))
                {
                    s = n;
                }
            }
            while !s.record.is_empty() {
                self.fip_record(&mut s);
            }
            self.fip_reconcile(&mut s);
            while !s.record.is_empty() {
                self.fip_record(&mut s);
            }
            for node in &nodes {
                self.full_resync(&mut s, node);
                self.node_ipam(&mut s, node);
                for _ in 0..6 {
                    let Some(a) = s.agents.get_mut(node) else {
                        break;
                    };
                    if let Some(p) = a.take(0) {
                        Self::write_nn(&mut s, node, &p);
                    } else if a.can_watch() {
                        a.watch(0);
                    } else {
                        a.report(0);
                    }
                }
            }
            if let Some(n) = self.step(&s, &Action::FixedAdd) {
                s = n;
            }
            if self.canonical(&s) == before {
                quiet += 1;
                if quiet >= 2 {
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
        let (f, _) = e.fip.as_ref()?;
        let x: Ipv4Addr = f.spec.ip.parse().ok()?;
        let holder = e.cloud.holder(x).map(str::to_owned);
        let st = f.status.clone().unwrap_or_default();
        match (&e.pod, holder) {
            (_, None) => Some(format!("after settling, FixedIP {x} is on no ENI")),
            (Some(p), Some(h)) => {
                if h != pod_eni(&p.node) {
                    return Some(format!(
                        "after settling, {x} is on {h}, its pod on {}",
                        p.node
                    ));
                }
                let listed = e.nns.get(&p.node).is_some_and(|nn| {
                    nn.status
                        .as_ref()
                        .is_some_and(|s| s.fixed_ips.contains_key(&x.to_string()))
                });
                if !listed {
                    return Some(format!(
                        "after settling, {x} is on {h} but not in {}'s fixedIps",
                        p.node
                    ));
                }
                if p.ip != Some(x) {
                    return Some(format!(
                        "after settling, web-0 on {} does not run with {x} (FixedIP status {:?})",
                        p.node, st
                    ));
                }
                None
            }
            (None, Some(_)) => None,
        }
    }
}

impl Model for FixedIpMoves {
    type State = State;
    type Action = Action;

    fn init(&self) -> Vec<State> {
        let c = &self.config;
        let universe: Vec<Ipv4Addr> = (1..=c.addresses).map(ip).collect();
        let mut cloud = CloudState::new(universe, 2, 3);
        let mut nns = BTreeMap::new();
        let mut agents = BTreeMap::new();
        let mut others = BTreeMap::new();
        for node in NODES {
            cloud.add_eni(
                &format!("eni-{}0", &node[5..]),
                Some((&instance(node), 0)),
                BTreeMap::new(),
            );
            cloud.add_eni(&pod_eni(node), Some((&instance(node), 1)), BTreeMap::new());
        }
        let mut s = State {
            cloud,
            nns: BTreeMap::new(),
            fip: None,
            replicas: 1,
            pod: None,
            others: BTreeMap::new(),
            agents: BTreeMap::new(),
            record: vec![],
            uid: 0,
            schedules: c.schedules,
            op_crashes: c.operator_crashes,
            agent_crashes: c.agent_crashes,
        };
        for node in NODES {
            let mut nn = NodeNetwork::new(node, Self::spec(node));
            set_rv(&mut nn, 1);
            nns.insert(node.to_string(), nn.clone());
            agents.insert(node.to_string(), Agent::new(&nn));
            if c.other_pods {
                others.insert(node.to_string(), None);
            }
        }
        s.nns = nns;
        s.agents = agents;
        s.others = others;
        // Node IPAM's first reconcile has resynced every node.
        for node in NODES {
            self.node_ipam(&mut s, node);
            if let Some(a) = s.agents.get_mut(node) {
                while a.can_watch() {
                    a.watch(0);
                }
            }
        }
        vec![s]
    }

    fn actions(&self, s: &State, out: &mut Vec<Action>) {
        let c = &self.config;
        if s.record.is_empty() {
            out.push(Action::FipReconcile);
        } else {
            out.push(Action::FipRecord);
            if s.op_crashes > 0 {
                out.push(Action::OpCrash);
            }
        }
        for node in s.nns.keys() {
            if c.node_ipam {
                out.push(Action::NodeIpam(node.clone()));
                out.push(Action::FullResync(node.clone()));
            }
            if let Some(a) = s.agents.get(node) {
                if a.can_watch() {
                    out.push(Action::AgentWatch(node.clone()));
                }
                // Usage reports only matter to node IPAM.
                if c.node_ipam && a.can_report() {
                    out.push(Action::AgentReport(node.clone()));
                }
                for i in a.landable() {
                    out.push(Action::Land(node.clone(), i));
                }
                if a.ipam.is_some() {
                    if s.agent_crashes > 0 {
                        out.push(Action::AgentCrash(node.clone()));
                    }
                } else {
                    out.push(Action::AgentRestart(node.clone()));
                }
            }
            if s.pod.is_none() && s.replicas > 0 && s.schedules > 0 {
                out.push(Action::Schedule(node.clone()));
            }
            if s.others.get(node) == Some(&None) {
                out.push(Action::OtherAdd(node.clone()));
            }
        }
        if let Some(p) = &s.pod {
            if p.ip.is_none() {
                out.push(Action::FixedAdd);
            }
            out.push(Action::PodDelete);
        }
        if c.scale_down && s.replicas > 0 {
            out.push(Action::ScaleDown);
        }
        if c.delete_node && s.nns.contains_key(NODES[1]) {
            out.push(Action::DeleteNode(NODES[1].to_string()));
        }
    }

    fn next(&self, s: &State, a: &Action) -> Option<State> {
        self.step(s, a)
    }

    fn canonical(&self, s: &State) -> String {
        let nns: Vec<String> = s.nns.values().map(crate::agent::status_key).collect();
        let agents: Vec<String> = s.agents.values().map(Agent::canonical).collect();
        format!(
            "{:?}{nns:?}{:?}{}{:?}{:?}{agents:?}{:?}{}{}{}{}",
            (&s.cloud.enis, s.cloud.next_eni),
            s.fip.as_ref().map(|(f, v)| (&f.spec.ip, &f.status, v)),
            s.replicas,
            s.pod,
            s.others,
            s.record,
            s.uid,
            s.schedules,
            s.op_crashes,
            s.agent_crashes
        )
    }

    fn check(&self, s: &State) -> Option<(&'static str, String)> {
        let mut running: Vec<(String, String, Ipv4Addr)> = Vec::new();
        if let Some(p) = &s.pod
            && let Some(a) = p.ip
        {
            running.push((POD.into(), p.node.clone(), a));
        }
        for (node, a) in &s.others {
            if let Some(a) = a {
                running.push((other_pod(node), node.clone(), *a));
            }
        }
        let mut seen: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for (pod, node, a) in &running {
            if let Some(first) = seen.insert(*a, pod) {
                return Some((
                    "no_address_held_by_two_pods",
                    format!("{first} and {pod} both run with {a}"),
                ));
            }
            // An ordinary pod's address is on its node; a fixed one may
            // still be in transit (its node named it before the cloud
            // move), but is never given back to the subnet.
            let holder = s.cloud.holder(*a);
            let own = s.cloud.on_instance(&instance(node)).contains(a);
            if holder.is_none() || (pod != POD && !own) {
                return Some((
                    "never_releases_an_address_in_use",
                    format!(
                        "{pod} on {node} runs with {a}, which the cloud has {}",
                        holder.map_or("on no ENI".to_string(), |h| format!("on {h}"))
                    ),
                ));
            }
        }
        if let Some((f, _)) = &s.fip
            && let Ok(x) = f.spec.ip.parse::<Ipv4Addr>()
        {
            // Released (unassigned) while the FixedIP still exists happens
            // between the Release's unassign and the FixedIP's delete, and
            // across an operator crash there: fine only while the ordinal is
            // unwanted and the release completes (the liveness check).
            let releasing = s.record.iter().any(|r| matches!(r, Record::Delete));
            if s.cloud.holder(x).is_none() && !releasing && s.replicas > 0 {
                return Some((
                    "fixed_ip_never_released_while_its_fixedip_exists",
                    format!(
                        "FixedIP web-0 names {x}, which is on no ENI, and no release is under way"
                    ),
                ));
            }
            // Two pools may list it at once during a move, by design: the
            // new node names it (fixedIps) before the cloud moves it, the old
            // node gives it up after; both entries keep it for its pod. What
            // must never happen is a pool listing it without that entry.
            for (node, nn) in &s.nns {
                let st = nn.status.clone().unwrap_or_default();
                if st.pool.contains_key(&f.spec.ip) && !st.fixed_ips.contains_key(&f.spec.ip) {
                    return Some((
                        "fixed_ip_never_in_a_pool_unguarded",
                        format!("{x} is in {node}'s pool without a fixedIps entry"),
                    ));
                }
            }
            for (node, a) in &s.agents {
                if let Some(ipam) = &a.ipam
                    && ipam.pool().is_free(x, crate::agent::now_ms(0))
                {
                    return Some((
                        "fixed_ip_never_free_for_another_pod",
                        format!("{node}'s agent would hand {x} to any pod"),
                    ));
                }
            }
        }
        if self.config.liveness
            && let Some(why) = self.settled_violation(s)
        {
            return Some(("fixed_ip_never_lost", why));
        }
        None
    }

    fn describe(&self, s: &State) -> String {
        let nns: Vec<String> = s
            .nns
            .iter()
            .map(|(n, nn)| {
                let st = nn.status.clone().unwrap_or_default();
                format!(
                    "{n}@{}: pool={:?} fixedIps={:?} release={:?} used={:?}",
                    rv(nn),
                    pool_of(nn),
                    st.fixed_ips.keys().collect::<Vec<_>>(),
                    st.release,
                    st.usage
                        .as_ref()
                        .map(|u| u.used.keys().collect::<Vec<_>>())
                        .unwrap_or_default()
                )
            })
            .collect();
        let cloud: BTreeMap<&String, &BTreeSet<Ipv4Addr>> = s
            .cloud
            .enis
            .iter()
            .filter(|(_, e)| !e.ips.is_empty())
            .map(|(id, e)| (id, &e.ips))
            .collect();
        let agents: Vec<String> = s
            .agents
            .iter()
            .map(|(n, a)| {
                format!(
                    "{n}:{} alloc={:?} inflight={}",
                    if a.ipam.is_some() { "up" } else { "down" },
                    a.allocations(),
                    a.inflight.len()
                )
            })
            .collect();
        format!(
            "cloud={cloud:?} | {} | fip={:?} | pod={:?} others={:?} | record={:?} | agents={agents:?}",
            nns.join(" ; "),
            s.fip.as_ref().map(|(f, v)| {
                let st = f.status.clone().unwrap_or_default();
                (f.spec.ip.clone(), st.phase, st.node, st.eni, *v)
            }),
            s.pod,
            s.others,
            s.record,
        )
    }
}
