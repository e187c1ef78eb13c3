//! Wiring of one simulation: cloud, store, queue, workers, agents, waves,
//! full resyncs, and the audit at the end.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_cloud::{
    Action, Backoff, Cloud, CloudConfig, CloudMetrics, EniTags, RateLimits, Tags,
    sim::{Faults, SimCloud, SimConfig, SimProvider},
};
use sextant_crds::{IpamSpec, NodeNetwork, NodeNetworkSpec, Provider};
use sextant_ipam::{
    Error as IpamError,
    gc::{GcPolicy, GcRound, GcState},
    metrics::IpamMetrics,
    node::{IpamConfig, NodeIpam},
    resync::{InstanceResync, InstanceScoped, apply_enis, by_instance, eni_statuses, list_vpc},
    status_patch,
    watermark::IpamDefaults,
};
use sextant_kit::sync::lock;
use tokio::time::Instant;

use super::{
    SimulateConfig, Strategy,
    agent::{Agent, Ledger},
    baselines::{PerSubnet, VpcWide},
    report::Report,
    store::{Queue, Store},
};

const CLUSTER: &str = "sim";
const VPC: &str = "vpc-sim";
const ZONE: &str = "us-east-1a";
/// Step of the simulated agents.
const AGENT_TICK: Duration = Duration::from_secs(1);

/// Per-node bookkeeping for the report.
#[derive(Default, Clone, Copy)]
struct NodeClock {
    created: Option<Instant>,
    ready: Option<Instant>,
}

struct World {
    config: SimulateConfig,
    sim: Arc<SimCloud>,
    ipam: NodeIpam,
    store: Store,
    queue: Queue,
    ledger: Ledger,
    clocks: Mutex<HashMap<String, NodeClock>>,
    agents: Mutex<BTreeMap<String, Agent>>,
    surfaced: Mutex<BTreeMap<&'static str, u64>>,
    reconciles: AtomicU64,
    /// Set at the end: workers take no new reconcile.
    stopping: AtomicBool,
    /// Reconciles running now.
    in_progress: AtomicUsize,
    gc: Mutex<GcState>,
    start: Instant,
    epoch: jiff::Timestamp,
}

impl World {
    fn now(&self) -> jiff::Timestamp {
        let since = jiff::SignedDuration::try_from(self.start.elapsed()).unwrap_or_default();
        self.epoch.checked_add(since).unwrap_or(self.epoch)
    }

    async fn reconcile_one(self: &Arc<Self>, name: &str, attempts: &mut HashMap<String, u32>) {
        let Some(nn) = self.store.get(name) else {
            return;
        };
        self.reconciles.fetch_add(1, Ordering::Relaxed);
        let old = nn.status.clone().unwrap_or_default();
        let requeue = match self.ipam.reconcile(&nn, self.now()).await {
            Ok(r) => {
                if let Some(patch) = status_patch(&old, &r.status) {
                    let _ = self.store.merge_patch(name, &patch);
                }
                match r.error {
                    Some(e) => Some(self.backoff(name, &e, attempts)),
                    None => {
                        attempts.remove(name);
                        Some(r.requeue_after)
                    }
                }
            }
            Err(IpamError::InvalidSpec { status, .. }) => {
                if let Some(patch) = status_patch(&old, &status) {
                    let _ = self.store.merge_patch(name, &patch);
                }
                None
            }
            Err(e) => Some(self.backoff(name, &e, attempts)),
        };
        if let Some(after) = requeue {
            let world = self.clone();
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                world.queue.push(&name);
            });
        }
    }

    /// Counts the error and picks a jittered, growing requeue delay.
    fn backoff(&self, name: &str, e: &IpamError, attempts: &mut HashMap<String, u32>) -> Duration {
        *lock(&self.surfaced).entry(e.metric_label()).or_default() += 1;
        let n = attempts.entry(name.to_owned()).or_default();
        *n += 1;
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            ..Backoff::default()
        };
        let mut rng = SmallRng::seed_from_u64(self.config.seed ^ u64::from(*n) ^ name.len() as u64);
        Duration::from_secs(1) + backoff.delay(*n - 1, None, &mut rng)
    }

    async fn worker(self: Arc<Self>) {
        let mut attempts = HashMap::new();
        loop {
            let name = self.queue.pop().await;
            if self.stopping.load(Ordering::Relaxed) {
                return;
            }
            self.in_progress.fetch_add(1, Ordering::Relaxed);
            self.reconcile_one(&name, &mut attempts).await;
            self.in_progress.fetch_sub(1, Ordering::Relaxed);
            self.queue.done(&name);
        }
    }

    fn add_node(self: &Arc<Self>, index: usize, subnet: &str) -> anyhow::Result<()> {
        let instance = self.sim.add_instance(&self.config.instance_type, subnet)?;
        let name = format!("node-{index:05}");
        let provider = match self.config.provider {
            SimProvider::Aws => Provider::Aws,
            SimProvider::Alibaba => Provider::Alibaba,
        };
        let nn = NodeNetwork::new(
            &name,
            NodeNetworkSpec {
                provider,
                instance_id: Some(instance),
                instance_type: Some(self.config.instance_type.clone()),
                zone: Some(ZONE.into()),
                vpc_id: Some(VPC.into()),
                ipam: IpamSpec {
                    first_interface_index: self.config.first_interface_index,
                    ..IpamSpec::default()
                },
                pod_cidrs: vec![],
            },
        );
        self.store.insert(nn);
        lock(&self.clocks).insert(
            name.clone(),
            NodeClock {
                created: Some(Instant::now()),
                ready: None,
            },
        );
        lock(&self.agents).insert(
            name.clone(),
            Agent::new(
                name.clone(),
                self.config
                    .seed
                    .wrapping_mul(1_000_003)
                    .wrapping_add(index as u64),
                self.config.pods_per_node,
                self.config.churn_per_minute,
                self.config.agent_report_interval,
            ),
        );
        self.queue.push(&name);
        Ok(())
    }

    /// One step of every agent.
    fn agents_step(&self) {
        let now = Instant::now();
        let now_ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut agents = lock(&self.agents);
        let mut clocks = lock(&self.clocks);
        for (name, agent) in agents.iter_mut() {
            let tick = agent.step(&self.store, &self.ledger, AGENT_TICK, now_ms);
            if tick.wrote {
                self.queue.push(name);
            }
            if let Some(c) = clocks.get_mut(name)
                && c.ready.is_none()
                && tick.pending == 0
                && tick.available >= self.config.pre_allocate as usize
            {
                c.ready = Some(now);
            }
        }
    }

    /// The periodic full resync: one paged VPC listing for every node, then
    /// garbage collection of leaked ENIs from the same listing; the round's
    /// decision and how many of its deletions succeeded (a NotFound is one).
    async fn full_resync(&self, gc_now: jiff::Timestamp) -> anyhow::Result<(GcRound, usize)> {
        let enis = list_vpc(self.ipam.cloud().as_ref(), VPC).await?;
        let by_inst = by_instance(enis.clone());
        for nn in self.store.all() {
            let (Some(name), Some(instance)) =
                (nn.metadata.name.as_deref(), nn.spec.instance_id.as_deref())
            else {
                continue;
            };
            let Some(net) = by_inst.get(instance) else {
                continue;
            };
            let old = nn.status.clone().unwrap_or_default();
            let mut new = old.clone();
            apply_enis(
                &mut new,
                eni_statuses(net, &nn.spec.ipam.exclude_interface_tags),
                nn.spec.ipam.first_interface_index(),
            );
            if let Some(patch) = status_patch(&old, &new) {
                self.store.merge_patch(name, &patch)?;
            }
        }
        // The operator's GC: grace from when an ENI was first seen unattached.
        // No FixedIPs in this simulation, so none holds an ENI back.
        let round = lock(&self.gc).plan(
            &enis,
            CLUSTER,
            gc_now,
            GcPolicy::default(),
            &Default::default(),
            &self.ipam.attaching().ids(),
        );
        let mut deleted = 0;
        for id in &round.delete {
            match self.ipam.cloud().delete_eni(id).await {
                Ok(()) | Err(sextant_cloud::Error::NotFound { .. }) => deleted += 1,
                Err(_) => {}
            }
        }
        Ok((round, deleted))
    }
}

/// Runs one simulation on its own paused-clock runtime and reports.
pub fn run(
    config: SimulateConfig,
    progress: Option<indicatif::ProgressBar>,
) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(simulate(config, progress))
}

async fn simulate(
    config: SimulateConfig,
    progress: Option<indicatif::ProgressBar>,
) -> anyhow::Result<Report> {
    let sim = Arc::new(SimCloud::new(SimConfig {
        faults: Faults {
            throttle_ratio: config.throttle_ratio,
            error_ratio: config.error_ratio,
            ..Faults::default()
        },
        ..SimConfig::new(config.provider, config.seed)
    }));
    let mut subnets = Vec::new();
    for i in 0..config.subnets.max(1) {
        let cidr = format!("10.{}.0.0/16", 10 + i);
        subnets.push(sim.add_subnet(VPC, ZONE, &cidr, Tags::new())?);
    }
    sim.add_security_group(VPC, "pods", Tags::new());
    let limits = config.client_limits.unwrap_or(match config.provider {
        SimProvider::Aws => RateLimits::aws(),
        SimProvider::Alibaba => RateLimits::alibaba(),
    });
    let cloud_metrics = CloudMetrics::default();
    let cloud = Arc::new(Cloud::new(
        sim.clone(),
        CloudConfig {
            limits,
            seed: Some(config.seed),
            total_deadline: Duration::from_secs(300),
            backoff: Backoff {
                max_attempts: 12,
                ..Backoff::default()
            },
            ..CloudConfig::default()
        },
        cloud_metrics.clone(),
    ));
    let resync: Arc<dyn InstanceResync> = match config.strategy {
        Strategy::InstanceScoped => Arc::new(InstanceScoped),
        Strategy::PerSubnet => Arc::new(PerSubnet {
            sim: sim.clone(),
            cloud: cloud.clone(),
            subnets: subnets.clone(),
        }),
        Strategy::VpcWide => Arc::new(VpcWide),
    };
    let ipam = NodeIpam::with_resync(
        cloud.clone(),
        resync,
        IpamConfig {
            cluster: CLUSTER.into(),
            defaults: IpamDefaults {
                pre_allocate: config.pre_allocate,
                max_above_watermark: config.max_above_watermark,
                ..IpamDefaults::default()
            },
            ..IpamConfig::default()
        },
        IpamMetrics::default(),
    );
    let world = Arc::new(World {
        config: config.clone(),
        sim: sim.clone(),
        ipam,
        store: Store::default(),
        queue: Queue::default(),
        ledger: Ledger::default(),
        clocks: Mutex::default(),
        agents: Mutex::default(),
        surfaced: Mutex::default(),
        reconciles: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
        in_progress: AtomicUsize::new(0),
        gc: Mutex::default(),
        start: Instant::now(),
        epoch: "2026-01-01T00:00:00Z".parse()?,
    });
    let mut workers = Vec::new();
    for _ in 0..config.workers.max(1) {
        workers.push(tokio::spawn(world.clone().worker()));
    }

    let waves = config.nodes.div_ceil(config.burst.max(1));
    let last_wave_at = config.wave_interval * u32::try_from(waves.saturating_sub(1)).unwrap_or(0);
    let end = last_wave_at + config.run_for;
    if let Some(p) = &progress {
        p.set_length(end.as_secs());
    }
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut next_node = 0;
    let mut next_wave = Duration::ZERO;
    let mut next_full = config.full_resync_interval;
    let mut gc_deleted = 0;
    let mut all_ready_at: Option<Duration> = None;
    while world.start.elapsed() < end {
        let t = world.start.elapsed();
        if next_node < config.nodes && t >= next_wave {
            for _ in 0..config.burst.max(1) {
                if next_node == config.nodes {
                    break;
                }
                let subnet = &subnets[rng.random_range(0..subnets.len())];
                world.add_node(next_node, subnet)?;
                next_node += 1;
            }
            next_wave += config.wave_interval;
        }
        if t >= next_full {
            gc_deleted += world
                .full_resync(world.now())
                .await
                .map_or(0, |(_, deleted)| deleted);
            next_full += config.full_resync_interval;
        }
        world.agents_step();
        if all_ready_at.is_none() && next_node == config.nodes {
            let clocks = lock(&world.clocks);
            if clocks.values().all(|c| c.ready.is_some()) {
                all_ready_at = Some(world.start.elapsed());
            }
        }
        if let Some(p) = &progress {
            p.set_position(t.as_secs());
        }
        tokio::time::sleep(AGENT_TICK).await;
    }
    gc_deleted += quiesce(&world, workers).await;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    Ok(report(&world, &cloud_metrics, all_ready_at, gc_deleted))
}

/// Stops the operator as a rollout would, without cutting a reconcile in
/// half: workers take nothing new and the running reconciles finish (an
/// aborted one would strand the ENI it had created and not yet attached).
/// Then the collector runs as the operator's does, a round every full-resync
/// interval, until nothing is waiting out its grace or due: a leftover of a
/// failed rollback is collected, not counted as leaked; whatever stays
/// unattached after that is a leak the collector cannot see. Returns the
/// ENIs collected.
async fn quiesce(world: &Arc<World>, workers: Vec<tokio::task::JoinHandle<()>>) -> usize {
    /// Most rounds: with `per_round` deletions each, a leak of a thousand
    /// ENIs drains; a larger one is reported.
    const MAX_ROUNDS: usize = 64;
    world.stopping.store(true, Ordering::Relaxed);
    let give_up = Instant::now() + Duration::from_secs(3600);
    while world.in_progress.load(Ordering::Relaxed) > 0 && Instant::now() < give_up {
        tokio::time::sleep(AGENT_TICK).await;
    }
    for w in workers {
        w.abort();
    }
    let mut deleted = 0;
    for _ in 0..MAX_ROUNDS {
        let Ok((round, n)) = world.full_resync(world.now()).await else {
            break;
        };
        deleted += n;
        if round.waiting == 0 && round.delete.is_empty() {
            break;
        }
        tokio::time::sleep(world.config.full_resync_interval).await;
    }
    deleted
}

fn report(
    world: &World,
    metrics: &CloudMetrics,
    all_ready_at: Option<Duration>,
    gc_deleted: usize,
) -> Report {
    let stats = world.sim.stats();
    let enis = world.sim.all_enis();
    let mut pool_size = 0;
    let mut leaked_ips = 0;
    let by_inst = by_instance(enis.clone());
    for nn in world.store.all() {
        let status = nn.status.unwrap_or_default();
        pool_size += status.pool.len();
        // Addresses on the node's pod ENIs in the cloud that its pool does not list.
        if let Some(net) = nn.spec.instance_id.as_deref().and_then(|i| by_inst.get(i)) {
            for e in &net.enis {
                let Some(a) = &e.attachment else { continue };
                if a.device_index < nn.spec.ipam.first_interface_index() {
                    continue;
                }
                leaked_ips += e
                    .secondary_ips
                    .iter()
                    .filter(|ip| !status.pool.contains_key(&ip.to_string()))
                    .count();
            }
        }
    }
    let leaked_enis = enis
        .iter()
        .filter(|e| e.attachment.is_none() && EniTags::parse(&e.tags).is_some())
        .count();
    // Every running pod's IP must still be on its own node's ENI.
    let mut ip_home: HashMap<std::net::Ipv4Addr, &str> = HashMap::new();
    for e in &enis {
        if let Some(a) = &e.attachment {
            for ip in &e.secondary_ips {
                ip_home.insert(*ip, a.instance_id.as_str());
            }
        }
    }
    let instance_of: HashMap<String, String> = world
        .store
        .all()
        .into_iter()
        .filter_map(|nn| Some((nn.metadata.name?, nn.spec.instance_id?)))
        .collect();
    let mut used_ips = 0;
    let mut used_ips_lost = 0;
    let mut pods = 0;
    let mut agent_patches = 0;
    for (name, agent) in lock(&world.agents).iter() {
        pods += agent.running();
        agent_patches += agent.patches;
        for ip in agent.pod_ips() {
            used_ips += 1;
            if ip_home.get(&ip).copied() != instance_of.get(name).map(String::as_str) {
                used_ips_lost += 1;
            }
        }
    }
    let clocks = lock(&world.clocks);
    let mut ready: Vec<f64> = clocks
        .values()
        .filter_map(|c| Some(c.ready?.saturating_duration_since(c.created?).as_secs_f64()))
        .collect();
    ready.sort_by(f64::total_cmp);
    let pct = |p: f64| -> Option<f64> {
        (!ready.is_empty()).then(|| ready[((ready.len() - 1) as f64 * p).round() as usize])
    };
    let mut by_action = BTreeMap::new();
    let mut retries = 0;
    for a in Action::ALL {
        let t = metrics.totals("sim", a);
        retries += t.retries;
        if let Some(s) = stats.by_action.get(&a) {
            by_action.insert(a, s.calls);
        }
    }
    Report {
        strategy: world.config.strategy,
        nodes: world.config.nodes,
        all_ready_after: all_ready_at,
        ready_p50: pct(0.5),
        ready_p99: pct(0.99),
        nodes_ready: ready.len(),
        api_calls: stats.total_calls(),
        by_action,
        throttled: stats.total_throttled(),
        retries,
        surfaced: lock(&world.surfaced).clone(),
        pods,
        used_ips,
        pool_size,
        double_allocations: world.ledger.double_allocations.load(Ordering::Relaxed),
        used_ips_lost,
        leaked_ips,
        leaked_enis,
        gc_deleted,
        reconciles: world.reconciles.load(Ordering::Relaxed),
        agent_patches,
        simulated: world.start.elapsed(),
    }
}
