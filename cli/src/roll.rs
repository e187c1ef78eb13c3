//! `sextantctl roll`: a fixed-IP StatefulSet rolled across simulated nodes
//! while nodes fail, driven by the operator's real FixedIP `plan` and
//! `execute` against the simulated cloud. A simulated scheduler places pods
//! where the extender's rule allows (the address's zone; an ENI in its subnet
//! or a free ENI slot). Garbage collection runs after every step with its
//! grace period already passed, so an address left on a dead node's ENI would
//! be lost and show in the audit.
//!
//! The audit: every pod incarnation got its ordinal's first address, no
//! address held by two pods or two ENIs, every running pod's address on its
//! node's ENI, and no fixed address left in the cloud without a FixedIP.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use rand::{Rng, SeedableRng, rngs::SmallRng, seq::IndexedRandom};
use sextant_cloud::{
    Backoff, Cloud, CloudConfig, CloudMetrics, CreateEni, EniCloud, EniTags, Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_crds::{FixedIP, FixedIPSpec, Provider, ReclaimPolicy};
use sextant_ipam::{
    fixed_ip::{
        execute::{Holders, Outcome, Parking, execute, status_after, status_for},
        plan::{FixedIpInput, NodeView, PodView, StatefulSetView, Step, plan},
    },
    gc::{GcPolicy, plan_gc},
};

const CLUSTER: &str = "roll";
const VPC: &str = "vpc-roll";
const INSTANCE_TYPE: &str = "m5.4xlarge";

/// One roll.
#[derive(Clone, Debug)]
pub struct RollConfig {
    /// Nodes.
    pub nodes: usize,
    /// StatefulSet replicas.
    pub replicas: u32,
    /// Rolling updates.
    pub rolls: u32,
    /// Nodes failing during each roll.
    pub failures_per_roll: usize,
    /// Zones (two subnets each).
    pub zones: usize,
    /// Seed of every choice.
    pub seed: u64,
}

impl Default for RollConfig {
    fn default() -> Self {
        RollConfig {
            nodes: 200,
            replicas: 50,
            rolls: 3,
            failures_per_roll: 5,
            zones: 2,
            seed: 1,
        }
    }
}

/// What the roll measured.
#[derive(Clone, Debug, Default)]
pub struct RollReport {
    /// Pod incarnations started.
    pub incarnations: u64,
    /// Nodes failed.
    pub node_failures: u64,
    /// Steps by kind.
    pub steps: BTreeMap<&'static str, u64>,
    /// Cloud API calls.
    pub api_calls: u64,
    /// Pods that came up with an address other than their ordinal's.
    pub address_changes: u64,
    /// Addresses held by two running pods or two ENIs.
    pub owned_twice: u64,
    /// Running pods whose address is not on their node's ENI.
    pub not_on_node: u64,
    /// Reserved addresses found on no ENI: dropped back to the subnet, where
    /// anyone could take them.
    pub lost: u64,
    /// Fixed addresses in the cloud that no FixedIP accounts for, or
    /// released ones still assigned.
    pub leaked: u64,
    /// Addresses retained over a scale-down and given back on scale-up.
    pub reused_after_scale_up: u64,
    /// Addresses released after their TTL.
    pub released_after_ttl: u64,
}

impl RollReport {
    /// Whether every promise held.
    pub fn is_clean(&self) -> bool {
        self.address_changes == 0
            && self.owned_twice == 0
            && self.not_on_node == 0
            && self.lost == 0
            && self.leaked == 0
    }

    /// The report as a table.
    pub fn table(&self) -> String {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["", "value"]);
        let mut row = |k: &str, v: String| {
            t.add_row(vec![
                Cell::new(k),
                Cell::new(v).set_alignment(CellAlignment::Right),
            ]);
        };
        row("pod incarnations", self.incarnations.to_string());
        row("node failures", self.node_failures.to_string());
        for (k, v) in &self.steps {
            row(&format!("  {k} steps"), v.to_string());
        }
        row("cloud API calls", self.api_calls.to_string());
        row(
            "reused after scale-down/up",
            self.reused_after_scale_up.to_string(),
        );
        row("released after TTL", self.released_after_ttl.to_string());
        row(
            "pods with a changed address",
            self.address_changes.to_string(),
        );
        row("addresses owned twice", self.owned_twice.to_string());
        row("pod address not on its node", self.not_on_node.to_string());
        row("reserved addresses lost", self.lost.to_string());
        row("leaked addresses", self.leaked.to_string());
        t.to_string()
    }
}

struct Node {
    instance: String,
    zone: String,
}

struct World {
    /// Limits of every node's instance type.
    limits: sextant_cloud::InstanceLimits,
    sim: Arc<SimCloud>,
    cloud: Arc<Cloud>,
    parking: Parking,
    rng: SmallRng,
    nodes: BTreeMap<String, Node>,
    subnets: Vec<sextant_cloud::Subnet>,
    sts: StatefulSetView,
    fixed: BTreeMap<String, FixedIP>,
    pods: BTreeMap<String, PodView>,
    first_ip: BTreeMap<u32, Ipv4Addr>,
    next_uid: u64,
    now: jiff::Timestamp,
    report: RollReport,
}

impl World {
    /// NodeViews from the cloud's truth, as the controller reads them from NodeNetworks.
    fn node_views(&self) -> BTreeMap<String, NodeView> {
        let enis = self.sim.all_enis();
        let limits = &self.limits;
        self.nodes
            .iter()
            .map(|(name, n)| {
                let mine: Vec<_> = enis
                    .iter()
                    .filter(|e| {
                        e.attachment
                            .as_ref()
                            .is_some_and(|a| a.instance_id == n.instance)
                    })
                    .collect();
                let used: BTreeSet<u32> = mine
                    .iter()
                    .filter_map(|e| e.attachment.as_ref().map(|a| a.device_index))
                    .collect();
                let eni_by_subnet = mine
                    .iter()
                    .filter(|e| {
                        e.attachment.as_ref().is_some_and(|a| a.device_index >= 1)
                            && (e.secondary_ips.len() as u32) < limits.secondary_per_eni()
                    })
                    .map(|e| (e.subnet_id.clone(), e.id.clone()))
                    .collect();
                (
                    name.clone(),
                    NodeView {
                        zone: Some(n.zone.clone()),
                        provider: Provider::Aws,
                        instance_id: Some(n.instance.clone()),
                        eni_by_subnet,
                        free_device_index: (1..limits.max_enis).find(|i| !used.contains(i)),
                        pod_cidrs: vec![],
                    },
                )
            })
            .collect()
    }

    /// One reconcile of the StatefulSet: plan, execute, apply outcomes; then GC.
    async fn reconcile(&mut self, sts_exists: bool) -> anyhow::Result<()> {
        for _ in 0..4 {
            let views = self.node_views();
            let fixed: Vec<FixedIP> = self.fixed.values().cloned().collect();
            let pods: Vec<PodView> = self.pods.values().cloned().collect();
            let steps = plan(&FixedIpInput {
                namespace: &self.sts.namespace,
                name: &self.sts.name,
                statefulset: sts_exists.then_some(&self.sts),
                fixed: &fixed,
                pods: &pods,
                nodes: &views,
                subnets: &self.subnets,
                now: self.now,
            });
            let cloud_steps = steps
                .iter()
                .filter(|s| !matches!(s, Step::Status { .. } | Step::Blocked { .. }))
                .count();
            for s in &steps {
                *self.report.steps.entry(s.kind()).or_default() += 1;
                if let Step::Status { pod, .. } = s
                    && let Some(f) = self.fixed.get_mut(pod)
                {
                    f.status = Some(status_for(&f.status.clone().unwrap_or_default(), s));
                }
            }
            let holders: Holders = self
                .fixed
                .iter()
                .map(|(k, f)| (k.clone(), f.status.as_ref().and_then(|s| s.eni.clone())))
                .collect();
            let (outcomes, error) = execute(
                self.cloud.as_ref(),
                &self.parking,
                CLUSTER,
                &steps,
                &views,
                &holders,
                self.now,
            )
            .await;
            for o in outcomes {
                self.apply(&o);
            }
            if let Some(e) = error {
                return Err(e).context("fixed-IP execute");
            }
            if cloud_steps == 0 {
                break;
            }
        }
        self.gc().await
    }

    fn apply(&mut self, o: &Outcome) {
        match o {
            Outcome::Reserved {
                pod,
                ordinal,
                ip,
                subnet_id,
                zone,
                ..
            } => {
                let mut f = FixedIP::new(
                    pod,
                    FixedIPSpec {
                        ip: ip.to_string(),
                        stateful_set: self.sts.name.clone(),
                        ordinal: *ordinal,
                        zone: Some(zone.clone()),
                        subnet_id: Some(subnet_id.clone()),
                        reclaim_policy: self.sts.reclaim,
                        ttl_seconds: self.sts.ttl_seconds,
                    },
                );
                f.metadata.namespace = Some(self.sts.namespace.clone());
                f.status = Some(status_after(&Default::default(), o, None));
                self.first_ip.entry(*ordinal).or_insert(*ip);
                self.fixed.insert(pod.clone(), f);
            }
            Outcome::Released { pod, .. } => {
                self.fixed.remove(pod);
                self.report.released_after_ttl += 1;
            }
            Outcome::Moved { pod, .. } | Outcome::Parked { pod, .. } => {
                let uid = self.pods.get(pod).map(|p| p.uid.clone());
                if let Some(f) = self.fixed.get_mut(pod) {
                    f.status = Some(status_after(
                        &f.status.clone().unwrap_or_default(),
                        o,
                        uid.as_deref(),
                    ));
                }
            }
        }
    }

    /// Garbage collection with the grace period passed: anything left on an
    /// unattached ENI of ours (parking aside) goes.
    async fn gc(&mut self) -> anyhow::Result<()> {
        let later = self.now.checked_add(jiff::SignedDuration::from_hours(1))?;
        for id in plan_gc(
            &self.sim.all_enis(),
            CLUSTER,
            later,
            GcPolicy {
                per_round: 1000,
                ..GcPolicy::default()
            },
        ) {
            self.cloud.delete_eni(&id).await?;
        }
        Ok(())
    }

    /// Schedules an unscheduled pod where the extender's rule allows.
    fn schedule(&mut self, pod: &str) {
        let views = self.node_views();
        let f = self.fixed.get(pod);
        let (zone, subnet) = (
            f.and_then(|f| f.spec.zone.clone()),
            f.and_then(|f| f.spec.subnet_id.clone()),
        );
        let eligible: Vec<&String> = views
            .iter()
            .filter(|(_, v)| zone.is_none() || v.zone == zone)
            .filter(|(_, v)| {
                subnet
                    .as_ref()
                    .is_none_or(|s| v.eni_by_subnet.contains_key(s))
                    || v.free_device_index.is_some()
            })
            .map(|(n, _)| n)
            .collect();
        let choice = eligible.choose(&mut self.rng).map(|n| (*n).clone());
        if let Some(p) = self.pods.get_mut(pod) {
            p.node = choice;
        }
    }

    fn start_pod(&mut self, ordinal: u32) {
        self.next_uid += 1;
        let name = format!("{}-{ordinal}", self.sts.name);
        self.pods.insert(
            name.clone(),
            PodView {
                name: name.clone(),
                ordinal,
                node: None,
                uid: format!("uid-{}", self.next_uid),
            },
        );
        self.report.incarnations += 1;
        self.schedule(&name);
    }

    fn fail_nodes(&mut self, n: usize) {
        let hosting: Vec<String> = self
            .pods
            .values()
            .filter_map(|p| p.node.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for node in hosting.choose_multiple(&mut self.rng, n) {
            if let Some(gone) = self.nodes.remove(node) {
                self.sim.terminate_instance(&gone.instance);
                self.report.node_failures += 1;
            }
            // Its pods are evicted and come back elsewhere.
            let evicted: Vec<u32> = self
                .pods
                .values()
                .filter(|p| p.node.as_deref() == Some(node))
                .map(|p| p.ordinal)
                .collect();
            for o in evicted {
                self.pods.remove(&format!("{}-{o}", self.sts.name));
            }
        }
    }

    /// Checks every running pod against the cloud.
    fn audit_running(&mut self) {
        let enis = self.sim.all_enis();
        let mut owner_eni: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        let mut eni_of: BTreeMap<Ipv4Addr, (String, Option<String>)> = BTreeMap::new();
        for e in &enis {
            for ip in &e.secondary_ips {
                *owner_eni.entry(*ip).or_default() += 1;
                eni_of.insert(
                    *ip,
                    (
                        e.id.clone(),
                        e.attachment.as_ref().map(|a| a.instance_id.clone()),
                    ),
                );
            }
        }
        self.report.owned_twice += owner_eni.values().filter(|n| **n > 1).count() as u64;
        self.report.lost += self
            .fixed
            .values()
            .filter_map(|f| f.spec.ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !owner_eni.contains_key(ip))
            .count() as u64;
        let mut seen = BTreeSet::new();
        for p in self.pods.values() {
            let (Some(node), Some(f)) = (p.node.as_deref(), self.fixed.get(&p.name)) else {
                continue;
            };
            let Ok(ip) = f.spec.ip.parse::<Ipv4Addr>() else {
                continue;
            };
            if self.first_ip.get(&p.ordinal) != Some(&ip) {
                self.report.address_changes += 1;
            }
            if !seen.insert(ip) {
                self.report.owned_twice += 1;
            }
            let instance = self.nodes.get(node).map(|n| n.instance.clone());
            if eni_of.get(&ip).and_then(|(_, i)| i.clone()) != instance {
                self.report.not_on_node += 1;
            }
        }
    }
}

/// Runs the roll on a paused-clock runtime.
pub fn run(
    config: RollConfig,
    progress: Option<indicatif::ProgressBar>,
) -> anyhow::Result<RollReport> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(roll(config, progress))
}

async fn roll(
    config: RollConfig,
    progress: Option<indicatif::ProgressBar>,
) -> anyhow::Result<RollReport> {
    let sim = Arc::new(SimCloud::new(SimConfig::new(SimProvider::Aws, config.seed)));
    let cloud = Arc::new(Cloud::new(
        sim.clone(),
        CloudConfig {
            seed: Some(config.seed),
            total_deadline: Duration::from_secs(600),
            backoff: Backoff {
                max_attempts: 20,
                ..Backoff::default()
            },
            ..CloudConfig::default()
        },
        CloudMetrics::default(),
    ));
    let mut subnets_by_zone: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for z in 0..config.zones.max(1) {
        let zone = format!("us-east-1{}", (b'a' + z as u8) as char);
        for s in 0..2 {
            let id = sim.add_subnet(
                VPC,
                &zone,
                &format!("10.{}.{}.0/22", 20 + z, s * 4),
                Tags::new(),
            )?;
            subnets_by_zone.entry(zone.clone()).or_default().push(id);
        }
    }
    let mut rng = SmallRng::seed_from_u64(config.seed);
    let mut nodes = BTreeMap::new();
    let epoch: jiff::Timestamp = "2026-01-01T00:00:00Z".parse()?;
    for i in 0..config.nodes {
        let zones: Vec<&String> = subnets_by_zone.keys().collect();
        let zone = zones[i % zones.len()].clone();
        let subnet = subnets_by_zone[&zone][rng.random_range(0..2)].clone();
        let instance = sim.add_instance(INSTANCE_TYPE, &subnet)?;
        // Each node has one pod ENI in its subnet, as node IPAM would have made.
        let name = format!("node-{i:03}");
        let eni = sim
            .create_eni(&CreateEni {
                subnet_id: subnet.clone(),
                security_groups: vec![],
                tags: EniTags {
                    cluster: CLUSTER.into(),
                    node: name.clone(),
                    created_at: epoch,
                }
                .to_tags(),
                secondary_ips: 4,
                description: "pod ENI".into(),
            })
            .await?;
        sim.attach_eni(&eni.id, &instance, 1).await?;
        nodes.insert(name, Node { instance, zone });
    }
    let subnets = sim.subnets(VPC).await?;
    let calls_before = sim.stats().total_calls();
    let mut w = World {
        limits: sextant_cloud::sim::instance_type(INSTANCE_TYPE)
            .with_context(|| format!("{INSTANCE_TYPE} missing from the simulator's table"))?,
        sts: StatefulSetView {
            namespace: "db".into(),
            name: "web".into(),
            replicas: config.replicas,
            reclaim: ReclaimPolicy::Retain,
            ttl_seconds: Some(600),
            subnet_ids: vec![],
        },
        sim: sim.clone(),
        cloud,
        parking: Parking::new(CLUSTER, VPC),
        rng,
        nodes,
        subnets,
        fixed: BTreeMap::new(),
        pods: BTreeMap::new(),
        first_ip: BTreeMap::new(),
        next_uid: 0,
        now: epoch,
        report: RollReport::default(),
    };
    let total = u64::from(config.rolls + 2) * u64::from(config.replicas);
    if let Some(p) = &progress {
        p.set_length(total);
    }
    // The StatefulSet appears: addresses reserved, pods placed.
    w.reconcile(true).await?;
    for o in 0..config.replicas {
        w.start_pod(o);
    }
    w.reconcile(true).await?;
    w.audit_running();

    for r in 0..config.rolls {
        // Nodes fail in the middle of the roll.
        let fail_at = w.rng.random_range(0..config.replicas.max(1));
        for o in (0..config.replicas).rev() {
            if o == fail_at {
                w.fail_nodes(config.failures_per_roll);
                w.reconcile(true).await?;
                // Between eviction and rescheduling the addresses must still be held.
                w.audit_running();
                for missing in 0..config.replicas {
                    if !w.pods.contains_key(&format!("web-{missing}")) {
                        w.start_pod(missing);
                    }
                }
                w.reconcile(true).await?;
                w.audit_running();
            }
            w.pods.remove(&format!("web-{o}"));
            w.reconcile(true).await?;
            w.start_pod(o);
            w.now = w.now.checked_add(jiff::SignedDuration::from_secs(5))?;
            w.reconcile(true).await?;
            w.audit_running();
            if let Some(p) = &progress {
                p.set_position(u64::from(r + 1) * u64::from(config.replicas) - u64::from(o));
            }
        }
    }

    // Scale down by five and back within the TTL: the same addresses return.
    let keep = config.replicas.saturating_sub(5);
    let before: BTreeMap<u32, Ipv4Addr> = w.first_ip.clone();
    w.sts.replicas = keep;
    for o in keep..config.replicas {
        w.pods.remove(&format!("web-{o}"));
    }
    w.reconcile(true).await?;
    w.now = w.now.checked_add(jiff::SignedDuration::from_secs(300))?;
    w.sts.replicas = config.replicas;
    w.reconcile(true).await?;
    for o in keep..config.replicas {
        w.start_pod(o);
    }
    w.reconcile(true).await?;
    w.audit_running();
    w.report.reused_after_scale_up = (keep..config.replicas)
        .filter(|o| {
            w.fixed
                .get(&format!("web-{o}"))
                .and_then(|f| f.spec.ip.parse::<Ipv4Addr>().ok())
                .is_some_and(|ip| before.get(o) == Some(&ip))
        })
        .count() as u64;

    // Scale down by five and let the TTL pass: those addresses go back.
    w.sts.replicas = keep;
    for o in keep..config.replicas {
        w.pods.remove(&format!("web-{o}"));
    }
    w.reconcile(true).await?;
    w.now = w.now.checked_add(jiff::SignedDuration::from_secs(601))?;
    w.reconcile(true).await?;
    w.audit_running();

    // Leaks: every fixed address in the cloud has its FixedIP; released ones are gone.
    let assigned: BTreeSet<Ipv4Addr> = sim
        .all_enis()
        .iter()
        .flat_map(|e| e.secondary_ips.clone())
        .collect();
    let fixed_now: BTreeSet<Ipv4Addr> = w
        .fixed
        .values()
        .filter_map(|f| f.spec.ip.parse().ok())
        .collect();
    let parked_or_bound: BTreeSet<Ipv4Addr> = sim
        .all_enis()
        .iter()
        .filter(|e| e.tags.contains_key(sextant_cloud::TAG_ROLE))
        .flat_map(|e| e.secondary_ips.clone())
        .collect();
    w.report.leaked += parked_or_bound.difference(&fixed_now).count() as u64;
    w.report.leaked += (keep..config.replicas)
        .filter_map(|o| before.get(&o))
        .filter(|ip| assigned.contains(ip))
        .count() as u64;
    w.report.leaked += fixed_now.difference(&assigned).count() as u64;
    w.report.api_calls = sim.stats().total_calls() - calls_before;
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    Ok(w.report)
}
