//! The running agent: pool + checkpoint + pod plumbing + datapath behind one
//! handle, shared by the API server, the CNI endpoints and the NodeNetwork
//! loops. Locks are std mutexes never held across an `.await`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tracing::{info, warn};

use sextant_agent_api::{
    AgentState, CniReply, DatapathHealth, Health, IpamHealth, IpamList, ServiceList, ServiceSpec,
    fmt_mac,
};

use sextant_agent_core::{
    handshake,
    pool::{AllocKey, AllocRequest, Allocation, Pool},
};
use sextant_kit::sync::lock;

use crate::{
    checkpoint::{self, Checkpoint},
    cni::veth,
    datapath::{CtTimeouts, Datapath, Endpoint},
    error::{Error, Result},
    metrics::{CniLabels, Metrics, PoolLabels},
    paths::{CHECKPOINT_FILE, POD_GATEWAY},
    policy::{self, NodePolicy, PolicyReport, PolicySnapshot},
    request::{CniAdd, CniCall},
    watch::fixed_ip::{self, Decision},
};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 timestamp of now.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Where the agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading and checking the checkpoint; counts are not final.
    Restoring,
    /// Serving.
    Ready,
    /// Serving, but something is wrong (datapath failed to load).
    Degraded,
}

impl Phase {
    fn state(self) -> AgentState {
        match self {
            Phase::Restoring => AgentState::Restoring,
            Phase::Ready => AgentState::Ready,
            Phase::Degraded => AgentState::Degraded,
        }
    }
}

/// What the agent needs to know to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the checkpoint.
    pub state_dir: PathBuf,
    /// bpffs root of the datapath; `None` runs without one (kernel routing only).
    pub bpf_root: Option<PathBuf>,
    /// Reuse cooldown of freed IPs.
    pub cooldown: Duration,
    /// Pod IPs when there is no NodeNetwork (bare metal without the operator, labs, tests).
    pub static_pool: Vec<Ipv4Addr>,
}

struct State {
    pool: Pool,
    phase: Phase,
    capacity: usize,
    unavailable: usize,
    /// Addresses NodeNetwork `status.usage.used` may still list: what the
    /// watch last showed there and what the last merge patch sent.
    status_used: BTreeSet<String>,
    sent_used: BTreeSet<String>,
}

/// How the agent learns whether a pod has a `FixedIP` (set once the
/// Kubernetes client exists; without it every pod is an ordinary one).
struct FixedIpLookup {
    client: kube::Client,
    cache: Option<fixed_ip::FixedIpCache>,
    wait: Duration,
}

/// The last-resort fail-open mode's settings and decision (pure, in core).
pub use sextant_agent_core::fail_open::PolicyFailOpen;

struct PolicyState {
    node: NodePolicy,
    /// The last snapshot from the control plane, re-applied when local pods change.
    last: Option<PolicySnapshot>,
    control_plane_seen: std::time::Instant,
    fail_open: Option<PolicyFailOpen>,
    /// Whether the fail-open mode has lifted enforcement.
    engaged: bool,
    /// Kubernetes Events to post once the API server can be reached.
    events: Vec<PolicyEvent>,
}

/// An Event about this node's policy enforcement (fail-open engaged or lifted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    /// Warning (engaged) or Normal (restored).
    pub warning: bool,
    /// `PolicyFailOpen` or `PolicyRestored`.
    pub reason: &'static str,
    /// What happened, when.
    pub note: String,
}

/// The agent. Cheap to share behind an `Arc`.
pub struct Agent {
    cfg: Config,
    state: Mutex<State>,
    fixed_lookup: std::sync::OnceLock<FixedIpLookup>,
    /// Bumped on every NodeNetwork applied: ADDs waiting for a fixed IP look again.
    node_changed: watch::Sender<()>,
    datapath: Mutex<Option<Datapath>>,
    policy: Mutex<PolicyState>,
    netlink: rtnetlink::Handle,
    save_lock: tokio::sync::Mutex<()>,
    ready: watch::Sender<bool>,
    pub(crate) metrics: Metrics,
    registry: prometheus_client::registry::Registry,
}

impl Agent {
    /// Builds the agent in the restoring phase: reads the checkpoint (a
    /// corrupt one or a double assignment is an error: the agent refuses to
    /// guess) and opens the datapath. Call [`Agent::restore`] next.
    pub fn new(cfg: Config) -> Result<Arc<Self>> {
        let cp_path = cfg.state_dir.join(CHECKPOINT_FILE);
        let cp = checkpoint::read(&cp_path)?;
        let cooldown_ms = u64::try_from(cfg.cooldown.as_millis()).unwrap_or(u64::MAX);
        let mut pool = Pool::new(cooldown_ms);
        pool.set_pool(cfg.static_pool.iter().copied());
        if let Some(cp) = &cp {
            // Until every entry is checked, all of them count as in use.
            let all = checkpoint::restore(cp, |_| true)?;
            checkpoint::apply(&mut pool, cp, all, now_ms(), cooldown_ms);
        }
        let mut phase = Phase::Restoring;
        let datapath = match &cfg.bpf_root {
            Some(root) => match Datapath::open(root) {
                Ok(dp) => {
                    info!(root = %root.display(), adopted = dp.adopted(), "datapath ready");
                    Some(dp)
                }
                Err(e) => {
                    warn!(error = %sextant_kit::ErrorChain(&e), "datapath failed to load; kernel routing only");
                    phase = Phase::Degraded;
                    None
                }
            },
            None => None,
        };
        let netlink = veth::connect()?;
        let metrics = Metrics::default();
        let registry = metrics.registry();
        let capacity = cfg.static_pool.len();
        Ok(Arc::new(Agent {
            state: Mutex::new(State {
                pool,
                phase,
                capacity,
                unavailable: 0,
                status_used: BTreeSet::new(),
                sent_used: BTreeSet::new(),
            }),
            cfg,
            fixed_lookup: std::sync::OnceLock::new(),
            node_changed: watch::channel(()).0,
            datapath: Mutex::new(datapath),
            policy: Mutex::new(PolicyState {
                node: NodePolicy::default(),
                last: None,
                control_plane_seen: std::time::Instant::now(),
                fail_open: None,
                engaged: false,
                events: Vec::new(),
            }),
            netlink,
            save_lock: tokio::sync::Mutex::new(()),
            ready: watch::channel(false).0,
            metrics,
            registry,
        }))
    }

    /// Checks every checkpointed allocation against the kernel, drops those
    /// whose netns or interface is gone, and turns the agent ready.
    pub async fn restore(self: &Arc<Self>) -> Result<()> {
        let (kept, dropped) = self.sweep(None).await?;
        {
            let mut st = lock(&self.state);
            if st.phase == Phase::Restoring {
                st.phase = Phase::Ready;
            }
        }
        self.ready.send_replace(true);
        info!(kept, dropped, "restored");
        Ok(())
    }

    /// Frees allocations whose netns or interface is gone (a DEL that never
    /// reached the agent). With `grace`, allocations younger than it are left
    /// alone: their ADD may still be wiring the pod. Returns (kept, dropped).
    pub async fn sweep(&self, grace: Option<Duration>) -> Result<(usize, usize)> {
        let now = jiff::Timestamp::now();
        let allocations: Vec<_> = lock(&self.state)
            .pool
            .allocations()
            .filter(|a| match grace {
                None => true,
                Some(g) => a
                    .since
                    .parse::<jiff::Timestamp>()
                    .map(|t| now.duration_since(t).unsigned_abs() >= g)
                    .unwrap_or(true),
            })
            .cloned()
            .collect();
        let cp = Checkpoint {
            version: checkpoint::VERSION,
            allocations,
            cooling: Vec::new(),
            releasing: Vec::new(),
        };
        let restored = tokio::task::spawn_blocking(move || {
            checkpoint::restore(&cp, |a| {
                veth::interface_alive(Path::new(&a.netns), &a.ifname)
            })
        })
        .await
        .map_err(|e| Error::io("sweep worker", std::io::Error::other(e)))??;
        let dropped = restored.dropped;
        if dropped.is_empty() {
            return Ok((restored.kept.len(), 0));
        }
        {
            let mut st = lock(&self.state);
            let now = now_ms();
            for a in &dropped {
                st.pool.free(&a.key(), now);
            }
        }
        for a in &dropped {
            warn!(ip = %a.ip, container = %a.container_id, "pod interface gone; IP back to the pool after cooldown");
            let _ = veth::teardown(&self.netlink, &a.container_id, &a.ifname).await;
            if let Some(dp) = lock(&self.datapath).as_mut() {
                let _ = dp.remove_endpoint(a.ip);
                let _ = dp.detach(&veth::host_veth_name(&a.container_id, &a.ifname));
            }
        }
        self.save().await?;
        Ok((restored.kept.len(), dropped.len()))
    }

    /// Turns on fixed IPs: ADDs of pods not named in `status.fixedIps` ask
    /// `client` for a `FixedIP` named after the pod and, if there is one, wait
    /// up to `wait` for its address to reach this node. Only the first call counts.
    pub fn enable_fixed_ips(&self, client: kube::Client, wait: Duration) {
        let _ = self.fixed_lookup.set(FixedIpLookup {
            client,
            cache: None,
            wait,
        });
    }

    /// [`Agent::enable_fixed_ips`] answering from a FixedIP watch first.
    pub fn enable_fixed_ips_cached(
        &self,
        client: kube::Client,
        cache: fixed_ip::FixedIpCache,
        wait: Duration,
    ) {
        let _ = self.fixed_lookup.set(FixedIpLookup {
            client,
            cache: Some(cache),
            wait,
        });
    }

    /// The allocation step of CNI ADD: an ordinary pod takes any free IP; a
    /// pod with a fixed IP gets exactly that address, waiting (bounded) until
    /// this node's NodeNetwork lists it for the pod.
    pub async fn allocate(&self, req: &AllocRequest) -> Result<Allocation> {
        let pod = format!("{}/{}", req.pod_namespace, req.pod_name);
        let wait = self
            .fixed_lookup
            .get()
            .map_or(fixed_ip::DEFAULT_WAIT, |l| l.wait);
        let deadline = tokio::time::Instant::now() + wait;
        let mut changed = self.node_changed.subscribe();
        let mut lookup = None;
        let mut logged = false;
        loop {
            changed.borrow_and_update();
            let decision = {
                let mut st = lock(&self.state);
                if let Some(a) = st.pool.get(&req.key) {
                    return Ok(a.clone());
                }
                let d = fixed_ip::decide(
                    &pod,
                    st.pool.fixed(),
                    lookup,
                    tokio::time::Instant::now(),
                    deadline,
                );
                // Decided and taken under one lock: no NodeNetwork update in between.
                match d {
                    Decision::Any => {
                        return Ok(st.pool.allocate(req, now_ms(), &now_rfc3339())?);
                    }
                    Decision::Fixed(ip) => {
                        let a = st.pool.allocate_fixed(req, ip, &now_rfc3339())?;
                        info!(%ip, %pod, "fixed IP handed to its pod");
                        return Ok(a);
                    }
                    other => other,
                }
            };
            match decision {
                Decision::Lookup => {
                    lookup = Some(match self.fixed_lookup.get() {
                        Some(l) => {
                            fixed_ip::lookup_cached(
                                &l.client,
                                l.cache.as_ref(),
                                &req.pod_namespace,
                                &req.pod_name,
                            )
                            .await?
                        }
                        None => fixed_ip::Lookup::NotFound,
                    });
                }
                Decision::Wait(ip) => {
                    if !logged {
                        info!(%ip, %pod, wait_s = wait.as_secs(), "waiting for the pod's fixed IP to reach this node");
                        logged = true;
                    }
                    // Ok: the NodeNetwork changed, look again; Err: the deadline passed.
                    if let Ok(Err(_)) = tokio::time::timeout_at(deadline, changed.changed()).await {
                        // The sender lives as long as the agent; sleep out the wait rather than spin.
                        tokio::time::sleep_until(deadline).await;
                    }
                }
                Decision::TimedOut(ip) => {
                    return Err(Error::FixedIpNotHere {
                        pod,
                        ip,
                        waited: wait,
                    });
                }
                Decision::Any | Decision::Fixed(_) => {}
            }
        }
    }

    async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Writes the checkpoint of the current pool.
    pub async fn save(&self) -> Result<()> {
        let _guard = self.save_lock.lock().await;
        let cp = Checkpoint::of(&lock(&self.state).pool, now_ms());
        let path = self.cfg.state_dir.join(CHECKPOINT_FILE);
        tokio::task::spawn_blocking(move || checkpoint::write(&path, &cp))
            .await
            .map_err(|e| Error::io("checkpoint worker", std::io::Error::other(e)))?
    }

    /// Counts a CNI request the server refused before it reached the agent
    /// (op `add`, `del` or `check`, result `error`) and hands the error back.
    pub fn rejected(&self, op: &'static str, e: Error) -> Error {
        let r: Result<()> = Err(e);
        self.observe(op, std::time::Instant::now(), &r);
        match r {
            Err(e) => e,
            Ok(()) => unreachable!("built as an error above"),
        }
    }

    fn observe<T>(&self, op: &'static str, start: std::time::Instant, r: &Result<T>) {
        self.metrics
            .cni_duration
            .observe(start.elapsed().as_secs_f64());
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics
            .cni
            .get_or_create(&CniLabels { op, result })
            .inc();
        if let Err(e) = r {
            self.metrics.error(e);
        }
    }

    /// CNI ADD: allocate (idempotently), checkpoint, wire the pod, program the datapath.
    pub async fn cni_add(&self, req: &CniAdd) -> Result<CniReply> {
        let start = std::time::Instant::now();
        let r = self.cni_add_inner(req).await;
        self.observe("add", start, &r);
        r
    }

    async fn cni_add_inner(&self, req: &CniAdd) -> Result<CniReply> {
        let t_start = std::time::Instant::now();
        self.wait_ready().await;
        let areq = AllocRequest {
            key: AllocKey {
                container_id: req.container_id.clone(),
                ifname: req.ifname.clone(),
            },
            netns: req.netns.clone(),
            pod_namespace: req.pod_namespace.clone(),
            pod_name: req.pod_name.clone(),
        };
        let alloc = self.allocate(&areq).await?;
        let t_alloc = std::time::Instant::now();
        // Known once a policy snapshot named the pod; 0 (no policy) until then.
        let identity = lock(&self.policy)
            .node
            .identity_of_pod(&req.pod_namespace, &req.pod_name)
            .unwrap_or(0);
        let program = |link: &veth::PodLink| -> Result<()> {
            let mut guard = lock(&self.datapath);
            let Some(dp) = guard.as_mut() else {
                return Ok(());
            };
            // Idempotent: a complete pair found again keeps its filter.
            dp.attach(&link.host_ifname)?;
            dp.upsert_endpoint(
                alloc.ip,
                &Endpoint {
                    ifindex: link.host_ifindex,
                    identity,
                    mac: link.pod_mac,
                    host_mac: link.host_mac,
                },
            )
        };
        // The checkpoint is made durable while the pod is wired; ADD answers
        // (hands the IP to the runtime) only after both ended.
        let (saved, wired) = tokio::join!(
            async {
                let r = self.save().await;
                (r, t_alloc.elapsed())
            },
            veth::setup(
                &self.netlink,
                Path::new(&req.netns),
                &req.container_id,
                &req.ifname,
                alloc.ip,
                program,
            )
        );
        let (saved, t_saved) = saved;
        let link = match saved.and(wired) {
            Ok(l) => l,
            Err(e) => {
                lock(&self.state).pool.free(&areq.key, now_ms());
                let _ = veth::teardown(&self.netlink, &req.container_id, &req.ifname).await;
                if let Some(dp) = lock(&self.datapath).as_mut() {
                    let _ = dp.remove_endpoint(alloc.ip);
                    let _ = dp.detach(&veth::host_veth_name(&req.container_id, &req.ifname));
                }
                self.save().await?;
                return Err(e);
            }
        };
        let t_wired = t_alloc.elapsed();
        tracing::debug!(
            checkpoint_us = t_saved.as_micros() as u64,
            wired_and_programmed_us = t_wired.as_micros() as u64,
            allocated_after_us = t_alloc.duration_since(t_start).as_micros() as u64,
            "ADD phases"
        );
        info!(ip = %alloc.ip, container = %req.container_id, veth = %link.host_ifname, "pod added");
        self.resync_policy();
        Ok(CniReply {
            ip: alloc.ip,
            gateway: POD_GATEWAY,
            host_ifname: link.host_ifname,
            host_mac: fmt_mac(&link.host_mac),
            pod_mac: fmt_mac(&link.pod_mac),
        })
    }

    /// CNI DEL: unwire, free into cooldown, checkpoint. Already gone is fine.
    pub async fn cni_del(&self, req: &CniCall) -> Result<()> {
        let start = std::time::Instant::now();
        let r = self.cni_del_inner(req).await;
        self.observe("del", start, &r);
        r
    }

    async fn cni_del_inner(&self, req: &CniCall) -> Result<()> {
        self.wait_ready().await;
        let host = veth::host_veth_name(&req.container_id, &req.ifname);
        veth::teardown(&self.netlink, &req.container_id, &req.ifname).await?;
        let key = AllocKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let freed = lock(&self.state).pool.free(&key, now_ms());
        if let Some(dp) = lock(&self.datapath).as_mut() {
            if let Some(a) = &freed {
                dp.remove_endpoint(a.ip)?;
            }
            dp.detach(&host)?;
        }
        if let Some(a) = &freed {
            info!(ip = %a.ip, container = %req.container_id, "pod deleted");
            self.save().await?;
            self.resync_policy();
        }
        Ok(())
    }

    /// CNI CHECK: the allocation exists and the pod interface carries it.
    pub async fn cni_check(&self, req: &CniCall) -> Result<CniReply> {
        let start = std::time::Instant::now();
        let r = self.cni_check_inner(req).await;
        self.observe("check", start, &r);
        r
    }

    async fn cni_check_inner(&self, req: &CniCall) -> Result<CniReply> {
        self.wait_ready().await;
        let key = AllocKey {
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
        };
        let Some(a) = lock(&self.state).pool.get(&key).cloned() else {
            return Err(Error::NotAllocated { key });
        };
        let netns = if req.netns.is_empty() {
            a.netns.clone()
        } else {
            req.netns.clone()
        };
        if !veth::check(Path::new(&netns), &req.ifname, a.ip).await? {
            return Err(Error::PodAddressMissing {
                ifname: req.ifname.clone(),
                netns,
                ip: a.ip,
            });
        }
        let host = veth::host_veth_name(&req.container_id, &req.ifname);
        let link = veth::link_by_name(&self.netlink, &host)
            .await?
            .ok_or_else(|| Error::HostVethMissing { host: host.clone() })?;
        let datapath_on = lock(&self.datapath).is_some();
        if datapath_on && !veth::has_bpf_ingress_filter(&self.netlink, link.header.index).await? {
            return Err(Error::DatapathNotAttached { host });
        }
        Ok(CniReply {
            ip: a.ip,
            gateway: POD_GATEWAY,
            host_ifname: host,
            host_mac: String::new(),
            pod_mac: String::new(),
        })
    }

    /// Sets (or, with no backends, removes) one ClusterIP frontend.
    pub fn set_service(&self, spec: &ServiceSpec) -> Result<()> {
        let mut dp = lock(&self.datapath);
        let dp = dp.as_mut().ok_or(Error::NoDatapath)?;
        if spec.backends.is_empty() {
            dp.remove_service(&spec.frontend)
        } else {
            dp.set_service(&spec.frontend, &spec.backends)
        }
    }

    /// `GET /v1/services`: what the datapath's service map holds.
    pub fn services(&self) -> ServiceList {
        let services = lock(&self.datapath)
            .as_ref()
            .map(|dp| {
                dp.services()
                    .into_iter()
                    .map(|(frontend, backends)| ServiceSpec { frontend, backends })
                    .collect()
            })
            .unwrap_or_default();
        ServiceList { services }
    }

    /// `GET /v1/healthz`.
    pub fn health(&self) -> Health {
        let st = lock(&self.state);
        let c = st.pool.counts(now_ms());
        let dp = lock(&self.datapath);
        Health {
            state: st.phase.state(),
            ipam: IpamHealth {
                status: format!("IPv4: {}/{} allocated", c.allocated, c.pool),
                allocated: c.allocated,
                pool: c.pool,
                free: c.free,
                cooldown: c.cooldown,
                capacity: st.capacity.max(c.pool),
                unavailable: st.unavailable,
            },
            datapath: match dp.as_ref() {
                Some(d) => DatapathHealth {
                    loaded: true,
                    pinned: d.root().display().to_string(),
                    endpoints: d.endpoint_count(),
                    services: d.service_count(),
                },
                None => DatapathHealth {
                    loaded: false,
                    pinned: self
                        .cfg
                        .bpf_root
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    endpoints: 0,
                    services: 0,
                },
            },
        }
    }

    /// `GET /v1/ipam`.
    pub fn ipam(&self) -> IpamList {
        IpamList {
            allocations: lock(&self.state).pool.allocations().cloned().collect(),
        }
    }

    /// Prometheus text of every agent series, refreshed from pool and datapath.
    pub fn metrics_text(&self) -> String {
        {
            let st = lock(&self.state);
            let c = st.pool.counts(now_ms());
            for (state, n) in [
                ("allocated", c.allocated),
                ("free", c.free),
                ("cooldown", c.cooldown),
                ("releasing", c.releasing),
            ] {
                self.metrics
                    .pool
                    .get_or_create(&PoolLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        // Lock order: policy before datapath.
        let names = lock(&self.policy)
            .node
            .engine()
            .contents()
            .policy_names
            .clone();
        if let Some(dp) = lock(&self.datapath).as_ref() {
            self.metrics.sync_packets(&dp.counters());
            self.metrics
                .sync_verdicts(&dp.policy_verdicts(names.keys().copied()), &names);
        }
        sextant_kit::admin::metrics_text(&self.registry).unwrap_or_default()
    }

    /// Brings network policy to `snap`, the control plane's whole desired
    /// state (the kube watches or `PUT /v1/policy` send it), and writes the
    /// map changes into the datapath.
    pub fn sync_policy(&self, snap: PolicySnapshot) -> Result<PolicyReport> {
        let mut ps = lock(&self.policy);
        ps.control_plane_seen = std::time::Instant::now();
        ps.last = Some(snap);
        let report = self.apply_policy(&mut ps)?;
        self.restore_enforcement(&mut ps)?;
        Ok(report)
    }

    /// Puts back the enforcement the fail-open mode lifted (nothing when it
    /// is not engaged); stays engaged, to be tried again, if the maps refuse.
    fn restore_enforcement(&self, ps: &mut PolicyState) -> Result<()> {
        if !ps.engaged {
            return Ok(());
        }
        if let Some(dp) = lock(&self.datapath).as_mut() {
            policy::write_all(dp, ps.node.engine())?;
        }
        ps.engaged = false;
        self.metrics.policy_fail_open.set(0);
        warn!("control plane back: policy enforcement restored");
        ps.events.push(PolicyEvent {
            warning: false,
            reason: "PolicyRestored",
            note: format!("policy enforcement restored at {}", now_rfc3339()),
        });
        Ok(())
    }

    /// Takes the policy Events waiting to be posted.
    pub fn take_policy_events(&self) -> Vec<PolicyEvent> {
        std::mem::take(&mut lock(&self.policy).events)
    }

    /// Puts back Events that could not be posted (oldest first, at most 16 kept).
    pub fn requeue_policy_events(&self, mut events: Vec<PolicyEvent>) {
        let mut ps = lock(&self.policy);
        events.append(&mut ps.events);
        let skip = events.len().saturating_sub(16);
        ps.events = events.into_iter().skip(skip).collect();
    }

    /// Identities local pods use that `given` does not bind yet.
    pub fn unpublished_identities(
        &self,
        given: &BTreeMap<u32, BTreeMap<String, String>>,
    ) -> Vec<(u32, BTreeMap<String, String>)> {
        lock(&self.policy).node.unpublished(given)
    }

    /// The last sync's outcome, with current counts.
    pub fn policy_report(&self) -> PolicyReport {
        let ps = lock(&self.policy);
        let c = ps.node.engine().contents();
        PolicyReport {
            enforced: c.policy_names.values().cloned().collect(),
            rejected: ps.node.rejected().to_vec(),
            identities: BTreeMap::new(),
            changes: 0,
            policy_entries: c.policy.len(),
        }
    }

    /// Re-applies the last snapshot after local pods changed.
    fn resync_policy(&self) {
        let mut ps = lock(&self.policy);
        if ps.last.is_none() {
            return;
        }
        if let Err(e) = self.apply_policy(&mut ps) {
            self.metrics.error(&e);
            warn!(error = %sextant_kit::ErrorChain(&e), "policy resync failed");
        }
    }

    fn apply_policy(&self, ps: &mut PolicyState) -> Result<PolicyReport> {
        let Some(mut snap) = ps.last.clone() else {
            return Ok(PolicyReport::default());
        };
        // Local pods carry the IPs this node handed them, whatever the snapshot says.
        let local: BTreeMap<(String, String), Ipv4Addr> = lock(&self.state)
            .pool
            .allocations()
            .map(|a| ((a.pod_namespace.clone(), a.pod_name.clone()), a.ip))
            .collect();
        for p in &mut snap.pods {
            if let Some(ip) = local.get(&(p.namespace.clone(), p.name.clone())) {
                p.ip = Some(*ip);
            }
        }
        let local_ips: BTreeSet<Ipv4Addr> = local.values().copied().collect();
        let (diffs, report) = ps.node.sync(&snap, &local_ips);
        let mut dp = lock(&self.datapath);
        if let Some(dp) = dp.as_mut() {
            for d in &diffs {
                policy::write_diff(dp, d)?;
            }
            for ((ns, name), ip) in &local {
                if let Some(id) = ps.node.identity_of_pod(ns, name) {
                    dp.set_endpoint_identity(*ip, id)?;
                }
            }
        }
        self.metrics
            .policy_sync(&report, ps.node.engine().contents());
        Ok(report)
    }

    /// Turns on the last-resort fail-open mode.
    pub fn enable_policy_fail_open(&self, cfg: PolicyFailOpen) {
        lock(&self.policy).fail_open = Some(cfg);
    }

    /// Records contact with the control plane (a usage report written, a
    /// read answered, a policy sync): the fail-open clock starts over, and
    /// enforcement the fail-open mode lifted comes back (a quiet cluster may
    /// send no watch event for a long time after it returns).
    pub fn control_plane_seen(&self) {
        let mut ps = lock(&self.policy);
        ps.control_plane_seen = std::time::Instant::now();
        if let Err(e) = self.restore_enforcement(&mut ps) {
            self.metrics.error(&e);
            warn!(error = %sextant_kit::ErrorChain(&e), "restoring policy enforcement failed");
        }
    }

    /// Checks every `every` whether the control plane has been away longer
    /// than the fail-open delay. Quiet is not away: before lifting anything
    /// it asks `probe` (one read from the API server; `true` when it was
    /// answered), and an answer counts as contact. Only when the probe fails
    /// too are the selected local pods opened (their allow entries stay, so
    /// the next contact restores them).
    pub async fn watch_policy_fail_open<P, F>(self: Arc<Self>, every: Duration, probe: P)
    where
        P: Fn() -> F,
        F: std::future::Future<Output = bool>,
    {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.fail_open_tick(&probe).await {
                self.metrics.error(&e);
                warn!(error = %sextant_kit::ErrorChain(&e), "fail-open check failed");
            }
        }
    }

    /// One check of [`Agent::watch_policy_fail_open`].
    async fn fail_open_tick<P, F>(&self, probe: &P) -> Result<()>
    where
        P: Fn() -> F,
        F: std::future::Future<Output = bool>,
    {
        if !self.fail_open_due() {
            return Ok(());
        }
        if probe().await {
            self.control_plane_seen();
            return Ok(());
        }
        self.check_fail_open()
    }

    /// Armed, not engaged, a snapshot to open, and no contact for the delay.
    fn fail_open_due(&self) -> bool {
        let ps = lock(&self.policy);
        ps.fail_open.as_ref().is_some_and(|cfg| {
            cfg.due(
                ps.engaged,
                ps.last.is_some(),
                ps.control_plane_seen.elapsed(),
            )
        })
    }

    fn check_fail_open(&self) -> Result<()> {
        let mut ps = lock(&self.policy);
        let Some(cfg) = ps.fail_open.clone() else {
            return Ok(());
        };
        if !cfg.due(
            ps.engaged,
            ps.last.is_some(),
            ps.control_plane_seen.elapsed(),
        ) {
            return Ok(());
        }
        let Some(snap) = ps.last.clone() else {
            return Ok(());
        };
        let selected: BTreeSet<u32> = snap
            .pods
            .iter()
            .filter(|p| cfg.selects(&p.labels))
            .filter_map(|p| ps.node.identity_of_pod(&p.namespace, &p.name))
            .collect();
        let mut opened = 0usize;
        if let Some(dp) = lock(&self.datapath).as_mut() {
            for (id, _) in dp.enforced() {
                if selected.contains(&id) {
                    dp.set_enforced(id, 0)?;
                    opened += 1;
                }
            }
        }
        ps.engaged = true;
        self.metrics.policy_fail_open.set(1);
        self.metrics.policy_fail_open_engaged.inc();
        let away = ps.control_plane_seen.elapsed().as_secs();
        ps.events.push(PolicyEvent {
            warning: true,
            reason: "PolicyFailOpen",
            note: format!(
                "no control plane for {away} s (fail-open after {} s): enforcement lifted for {opened} identities at {}",
                cfg.after.as_secs(),
                now_rfc3339()
            ),
        });
        warn!(
            away_s = ps.control_plane_seen.elapsed().as_secs(),
            identities = opened,
            "control plane unreachable past the fail-open delay: policy opened for selected pods"
        );
        Ok(())
    }

    /// Removes idle conntrack entries every `every` until the process ends.
    pub async fn sweep_conntrack(self: Arc<Self>, every: Duration, timeouts: CtTimeouts) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sweep = lock(&self.datapath)
                .as_mut()
                .map(|dp| dp.sweep_conntrack(timeouts));
            if let Some(s) = sweep {
                self.metrics
                    .conntrack_entries
                    .set(i64::try_from(s.live).unwrap_or(i64::MAX));
                self.metrics.conntrack_expired.inc_by(s.expired as u64);
                if s.expired > 0 {
                    tracing::debug!(expired = s.expired, live = s.live, "conntrack swept");
                }
            }
        }
    }

    /// Applies a NodeNetwork: pool IPs, fixed IPs (waking ADDs that wait for
    /// one), capacity, and the handshake answers to write back (empty when
    /// nothing changed).
    pub fn apply_node(
        &self,
        nn: &sextant_crds::NodeNetwork,
    ) -> std::collections::BTreeMap<String, sextant_crds::ReleaseState> {
        let mut st = lock(&self.state);
        let ips = sextant_agent_core::usage::pool_ips(nn);
        let n = ips.len();
        st.pool.set_pool(ips);
        st.status_used = nn
            .status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .map(|u| u.used.keys().cloned().collect())
            .unwrap_or_default();
        let fixed = nn
            .status
            .as_ref()
            .map(|s| fixed_ip::parse_fixed_ips(&s.fixed_ips))
            .unwrap_or_default();
        st.pool.set_fixed(fixed);
        let (cap, unavailable) = sextant_agent_core::usage::capacity(nn, n);
        st.capacity = cap;
        st.unavailable = unavailable;
        let release = nn
            .status
            .as_ref()
            .map(|s| s.release.clone())
            .unwrap_or_default();
        let answers = handshake::plan(&st.pool, &release, now_ms());
        st.pool.set_releasing(answers.releasing);
        drop(st);
        self.node_changed.send_replace(());
        answers.patch
    }

    /// The usage report with `answers`, `used` whole (a file consumer
    /// replaces it); `None` while restoring.
    pub fn usage_patch(
        &self,
        answers: &std::collections::BTreeMap<String, sextant_crds::ReleaseState>,
    ) -> Option<serde_json::Value> {
        let st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        Some(sextant_agent_core::usage::status_patch(
            &st.pool,
            answers,
            now_ms(),
            &now_rfc3339(),
            &BTreeSet::new(),
        ))
    }

    /// The usage report with `answers` as a JSON merge patch of NodeNetwork
    /// status. A merge patch only adds and changes map keys, so addresses
    /// the status may still list as used (the watch showed them, or the
    /// last patch sent them) and that are no longer in use go as `null`:
    /// otherwise an address once used would stay used there for good.
    /// `None` while restoring.
    pub fn usage_merge_patch(
        &self,
        answers: &std::collections::BTreeMap<String, sextant_crds::ReleaseState>,
    ) -> Option<serde_json::Value> {
        let mut st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        let in_use: BTreeSet<String> = st.pool.allocations().map(|a| a.ip.to_string()).collect();
        let gone: BTreeSet<String> = st
            .status_used
            .union(&st.sent_used)
            .filter(|ip| !in_use.contains(*ip))
            .cloned()
            .collect();
        let patch = sextant_agent_core::usage::status_patch(
            &st.pool,
            answers,
            now_ms(),
            &now_rfc3339(),
            &gone,
        );
        st.sent_used = in_use;
        Some(patch)
    }
}

#[cfg(test)]
mod tests {
    use sextant_crds::{NodeNetwork, NodeNetworkStatus, PoolEntry, ReleaseState};

    use super::*;
    use sextant_agent_core::testing::mk_req;

    fn cfg(dir: &Path) -> Config {
        Config {
            state_dir: dir.to_path_buf(),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        }
    }

    fn mk_node(ips: &[&str], marked: &[&str]) -> NodeNetwork {
        let mut nn = NodeNetwork::new("node-a", Default::default());
        nn.status = Some(NodeNetworkStatus {
            pool: ips
                .iter()
                .map(|ip| (ip.to_string(), PoolEntry::default()))
                .collect(),
            release: marked
                .iter()
                .map(|ip| (ip.to_string(), ReleaseState::Marked))
                .collect(),
            ..Default::default()
        });
        nn
    }

    fn mk_node_with_fixed(ips: &[&str], fixed: &[(&str, &str)]) -> NodeNetwork {
        let mut nn = mk_node(ips, &[]);
        if let Some(st) = nn.status.as_mut() {
            st.fixed_ips = fixed
                .iter()
                .map(|(ip, pod)| (ip.to_string(), pod.to_string()))
                .collect();
        }
        nn
    }

    fn mk_pod_req(id: &str, ns: &str, name: &str) -> AllocRequest {
        let mut r = mk_req(id);
        r.pod_namespace = ns.to_string();
        r.pod_name = name.to_string();
        r
    }

    /// A mock API server that knows the FixedIPs `known` (`ns`, `name`, `ip`),
    /// answers 404 for any other, and returns the paths it was asked for.
    fn fixed_ip_api(
        known: &[(&str, &str, &str)],
    ) -> (kube::Client, tokio::task::JoinHandle<Vec<String>>) {
        use http::{Request, Response};
        use kube::client::Body;
        use sextant_crds::{FixedIP, FixedIPSpec};

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let known: Vec<(String, String)> = known
            .iter()
            .map(|(ns, name, ip)| {
                let mut fip = FixedIP::new(
                    name,
                    FixedIPSpec {
                        ip: ip.to_string(),
                        stateful_set: "web".into(),
                        ordinal: 0,
                        zone: None,
                        subnet_id: None,
                        reclaim_policy: Default::default(),
                        ttl_seconds: None,
                    },
                );
                fip.metadata.namespace = Some(ns.to_string());
                (
                    format!("/apis/sextant.io/v1alpha1/namespaces/{ns}/fixedips/{name}"),
                    serde_json::to_string(&fip).expect("json"),
                )
            })
            .collect();
        let server = tokio::spawn(async move {
            let mut asked = Vec::new();
            while let Some((req, send)) = handle.next_request().await {
                assert_eq!(req.method(), http::Method::GET);
                let path = req.uri().path().to_string();
                let resp = match known.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => Response::builder().body(Body::from(body.clone().into_bytes())),
                    None => Response::builder().status(404).body(Body::from(
                        serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})
                        .to_string()
                        .into_bytes(),
                    )),
                };
                send.send_response(resp.expect("response"));
                asked.push(path);
            }
            asked
        });
        (kube::Client::new(svc, "default"), server)
    }

    async fn ready_agent(dir: &Path) -> Arc<Agent> {
        let agent = Agent::new(cfg(dir)).expect("agent");
        agent.restore().await.expect("restore");
        agent
    }

    #[tokio::test]
    async fn fail_open_engages_only_past_its_delay_and_queues_node_events() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        agent.sync_policy(PolicySnapshot::default()).expect("sync");
        agent.check_fail_open().expect("check");
        assert!(
            agent.take_policy_events().is_empty(),
            "not armed: nothing happens"
        );

        agent.enable_policy_fail_open(PolicyFailOpen {
            after: Duration::from_secs(3600),
            selector: BTreeMap::new(),
        });
        agent.check_fail_open().expect("check");
        assert!(
            agent.take_policy_events().is_empty(),
            "control plane seen just now"
        );

        agent.enable_policy_fail_open(PolicyFailOpen {
            after: Duration::ZERO,
            selector: BTreeMap::new(),
        });
        agent.check_fail_open().expect("check");
        agent.check_fail_open().expect("engages once");
        let evs = agent.take_policy_events();
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert!(evs[0].warning && evs[0].reason == "PolicyFailOpen");
        assert!(
            agent
                .metrics_text()
                .contains("sextant_agent_policy_fail_open 1")
        );

        // Not posted (API server away): kept, oldest first, bounded.
        agent.requeue_policy_events(evs.clone());
        agent.sync_policy(PolicySnapshot::default()).expect("sync");
        let evs = agent.take_policy_events();
        assert_eq!(
            evs.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["PolicyFailOpen", "PolicyRestored"]
        );
        assert!(
            agent
                .metrics_text()
                .contains("sextant_agent_policy_fail_open 0")
        );
        agent.requeue_policy_events(vec![evs[0].clone(); 40]);
        assert_eq!(agent.take_policy_events().len(), 16);
    }

    #[tokio::test]
    async fn quiet_control_plane_that_answers_the_probe_never_opens_policy() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        agent.sync_policy(PolicySnapshot::default()).expect("sync");
        agent.enable_policy_fail_open(PolicyFailOpen {
            after: Duration::ZERO,
            selector: BTreeMap::new(),
        });
        // Past the delay with no watch event or report: the API server still answers.
        let asked = std::sync::atomic::AtomicUsize::new(0);
        let answers = || {
            asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async { true }
        };
        agent.fail_open_tick(&answers).await.expect("tick");
        assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert!(agent.take_policy_events().is_empty(), "quiet is not away");
        assert!(
            agent
                .metrics_text()
                .contains("sextant_agent_policy_fail_open 0")
        );
        // No answer: now it engages.
        agent
            .fail_open_tick(&|| async { false })
            .await
            .expect("tick");
        let evs = agent.take_policy_events();
        assert_eq!(
            evs.iter().map(|e| e.reason).collect::<Vec<_>>(),
            ["PolicyFailOpen"]
        );
    }

    #[tokio::test]
    async fn contact_restores_enforcement_without_a_watch_event() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        agent.sync_policy(PolicySnapshot::default()).expect("sync");
        agent.enable_policy_fail_open(PolicyFailOpen {
            after: Duration::ZERO,
            selector: BTreeMap::new(),
        });
        agent
            .fail_open_tick(&|| async { false })
            .await
            .expect("tick");
        assert!(
            agent
                .metrics_text()
                .contains("sextant_agent_policy_fail_open 1")
        );
        // A usage report (or a probe) gets through; no policy object changed.
        agent.control_plane_seen();
        assert!(
            agent
                .metrics_text()
                .contains("sextant_agent_policy_fail_open 0")
        );
        assert_eq!(
            agent
                .take_policy_events()
                .iter()
                .map(|e| e.reason)
                .collect::<Vec<_>>(),
            ["PolicyFailOpen", "PolicyRestored"]
        );
        agent.control_plane_seen();
        assert!(agent.take_policy_events().is_empty(), "restored once");
    }

    #[tokio::test]
    async fn add_of_a_fixed_ip_pod_waits_until_its_address_reaches_the_node() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        let (client, api) = fixed_ip_api(&[("db", "web-0", "10.0.0.9")]);
        agent.enable_fixed_ips(client, Duration::from_secs(20));
        agent.apply_node(&mk_node(&["10.0.0.1", "10.0.0.2"], &[]));

        let add = tokio::spawn({
            let agent = agent.clone();
            async move { agent.allocate(&mk_pod_req("c1", "db", "web-0")).await }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !add.is_finished(),
            "must not take a pool IP while its own is elsewhere"
        );
        // The FixedIP controller moved the address to this node's ENI.
        agent.apply_node(&mk_node_with_fixed(
            &["10.0.0.1", "10.0.0.2", "10.0.0.9"],
            &[("10.0.0.9", "db/web-0")],
        ));
        let a = tokio::time::timeout(Duration::from_secs(5), add)
            .await
            .expect("ADD ends once the address is here")
            .expect("task")
            .expect("allocated");
        assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 9));

        // An ordinary pod (its FixedIP lookup is a 404) never gets a fixed address.
        let other = agent
            .allocate(&mk_pod_req("c2", "db", "cache-0"))
            .await
            .expect("allocated");
        assert_eq!(other.ip, Ipv4Addr::new(10, 0, 0, 1));
        // Idempotent: the same key gets the same address without asking again.
        let again = agent
            .allocate(&mk_pod_req("c1", "db", "web-0"))
            .await
            .expect("again");
        assert_eq!(again, a);
        drop(agent);
        assert_eq!(
            api.await.expect("api"),
            vec![
                "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/web-0".to_string(),
                "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/cache-0".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn add_fails_clearly_when_the_fixed_ip_never_arrives() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        let (client, _api) = fixed_ip_api(&[("db", "web-0", "10.0.0.9")]);
        agent.enable_fixed_ips(client, Duration::from_millis(300));
        // Listed here for another pod: still not this pod's.
        agent.apply_node(&mk_node_with_fixed(
            &["10.0.0.1"],
            &[("10.0.0.8", "db/web-1")],
        ));
        let err = agent
            .allocate(&mk_pod_req("c1", "db", "web-0"))
            .await
            .expect_err("timed out");
        assert!(matches!(err, Error::FixedIpNotHere { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "fixed IP 10.0.0.9 for db/web-0 not on this node after 300ms"
        );
        assert_eq!(agent.health().ipam.allocated, 0);
    }

    #[tokio::test]
    async fn restarted_fixed_ip_pod_gets_its_address_back_inside_the_cooldown() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        // No API client: a pod named in fixedIps needs no lookup.
        let answers = agent.apply_node(&mk_node_with_fixed(
            &["10.0.0.1", "10.0.0.9"],
            &[("10.0.0.9", "db/web-0")],
        ));
        assert!(answers.is_empty());
        let first = agent
            .allocate(&mk_pod_req("c1", "db", "web-0"))
            .await
            .expect("allocated");
        assert_eq!(first.ip, Ipv4Addr::new(10, 0, 0, 9));
        lock(&agent.state).pool.free(&first.key(), now_ms());
        let second = agent
            .allocate(&mk_pod_req("c2", "db", "web-0"))
            .await
            .expect("allocated again inside the cooldown");
        assert_eq!(second.ip, first.ip);
        agent.save().await.expect("checkpoint");
        let cp = checkpoint::read(&dir.path().join(CHECKPOINT_FILE))
            .expect("read")
            .expect("checkpoint");
        assert!(
            cp.allocations
                .iter()
                .any(|a| a.ip == second.ip && a.container_id == "c2"),
            "checkpointed like any allocation"
        );
        // A release mark on it is refused; the pool IP is free to go.
        let mut nn = mk_node_with_fixed(&["10.0.0.1", "10.0.0.9"], &[("10.0.0.9", "db/web-0")]);
        if let Some(st) = nn.status.as_mut() {
            st.release = [
                ("10.0.0.1".to_string(), ReleaseState::Marked),
                ("10.0.0.9".to_string(), ReleaseState::Marked),
            ]
            .into();
        }
        let answers = agent.apply_node(&nn);
        assert_eq!(answers["10.0.0.9"], ReleaseState::DoNotRelease);
        assert_eq!(answers["10.0.0.1"], ReleaseState::ReadyForRelease);
    }

    #[tokio::test]
    async fn restoring_agent_reports_checkpointed_allocations_never_an_empty_set() {
        let dir = tempfile::tempdir().expect("dir");
        let mut pool = Pool::new(30_000);
        pool.set_pool([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
        pool.allocate(&mk_req("a"), now_ms(), "2026-01-01T00:00:00Z")
            .expect("ip");
        checkpoint::write(
            &dir.path().join(CHECKPOINT_FILE),
            &Checkpoint::of(&pool, now_ms()),
        )
        .expect("checkpoint");
        let agent = Agent::new(cfg(dir.path())).expect("agent");
        let h = agent.health();
        assert_eq!(h.state, AgentState::Restoring);
        assert_eq!(
            h.ipam.allocated, 1,
            "checkpointed allocation counts as in use"
        );
        assert!(
            agent.usage_patch(&Default::default()).is_none(),
            "no report while restoring"
        );
        agent.restore().await.expect("restore");
        // The pod's netns does not exist here: its IP goes to cooldown.
        let h = agent.health();
        assert_eq!(h.state, AgentState::Ready);
        assert_eq!((h.ipam.allocated, h.ipam.cooldown), (0, 1));
        assert!(agent.usage_patch(&Default::default()).is_some());
    }

    #[tokio::test]
    async fn merge_patch_removes_addresses_no_longer_in_use() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        // An earlier agent left 10.0.0.3 in status; this one uses 10.0.0.1.
        let mut nn = mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]);
        if let Some(st) = nn.status.as_mut() {
            st.usage = Some(sextant_crds::AgentUsage {
                used: [("10.0.0.3".to_string(), "default/old".to_string())].into(),
                ..Default::default()
            });
        }
        agent.apply_node(&nn);
        let a = lock(&agent.state)
            .pool
            .allocate(&mk_req("a"), now_ms(), "t")
            .expect("ip");
        let patch = agent.usage_merge_patch(&BTreeMap::new()).expect("ready");
        let used = &patch["status"]["usage"]["used"];
        assert_eq!(used[a.ip.to_string()], "default/pod-a");
        assert_eq!(
            used.as_object().and_then(|m| m.get("10.0.0.3")),
            Some(&serde_json::Value::Null)
        );
        // Freed before the watch showed it in status: the last patch sent it.
        lock(&agent.state).pool.free(&a.key(), now_ms());
        agent.apply_node(&mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]));
        let patch = agent.usage_merge_patch(&BTreeMap::new()).expect("ready");
        assert_eq!(
            patch["status"]["usage"]["used"]
                .as_object()
                .and_then(|m| m.get(&a.ip.to_string())),
            Some(&serde_json::Value::Null)
        );
        // The file report keeps `used` whole, without deletions.
        let file = agent.usage_patch(&BTreeMap::new()).expect("ready");
        assert_eq!(file["status"]["usage"]["used"], serde_json::json!({}));
    }

    #[tokio::test]
    async fn node_network_sets_the_pool_and_answers_release_marks() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(cfg(dir.path())).expect("agent");
        agent.restore().await.expect("restore");
        let nn = mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]);
        assert!(agent.apply_node(&nn).is_empty());
        lock(&agent.state)
            .pool
            .allocate(&mk_req("a"), now_ms(), "t")
            .expect("ip");
        let nn = mk_node(
            &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            &["10.0.0.1", "10.0.0.3"],
        );
        let answers = agent.apply_node(&nn);
        assert_eq!(answers["10.0.0.1"], ReleaseState::DoNotRelease);
        assert_eq!(answers["10.0.0.3"], ReleaseState::ReadyForRelease);
        let h = agent.health();
        assert_eq!(
            (h.ipam.allocated, h.ipam.free),
            (1, 1),
            "10.0.0.3 is held back for release"
        );
        let patch = agent.usage_patch(&answers).expect("ready");
        assert_eq!(patch["status"]["release"]["10.0.0.3"], "ready-for-release");
        assert_eq!(
            patch["status"]["usage"]["used"]["10.0.0.1"],
            "default/pod-a"
        );
    }
}
