//! `sextantctl roll`: a fixed-IP StatefulSet rolled across simulated nodes
//! while nodes fail, driven by the real code end to end: the FixedIP
//! controller's `plan`, `execute` and record (the NodeNetwork writes of
//! `sextant_ipam::fixed_ip::record`, in the operator's order), node IPAM
//! (`NodeIpam`: plan, execute, resync) on every node, the operator's full
//! resync, and on every node the real agent's node IPAM (`LocalIpam`, the
//! fixed-IP decision of `sextant_agent_core::fixed_ip::decide`) serving the
//! StatefulSet's pods and a few ordinary pods that come and go, all on the
//! simulated cloud with NodeNetworks held in memory and written with the
//! same merge patches. A simulated scheduler places pods where the
//! extender's rule allows (the address's zone; an ENI in its subnet or a
//! free ENI slot). Garbage collection runs after every step with its grace
//! period already passed, so an address left on a dead node's ENI would be
//! lost and show in the audit.
//!
//! ```text
//!  scheduler ─▶ pod on node ─▶ agent (LocalIpam): ADD waits for fixedIps, DEL frees
//!  FixedIP controller: plan ─▶ claims ─▶ execute (SimCloud) ─▶ [full resync + agents] ─▶ record
//!  node IPAM ◀── NodeNetwork changes (agent reports, FixedIP writes) ──▶ SimCloud
//! ```
//!
//! The audit: every StatefulSet pod got its ordinal's first address from
//! its agent, on its node's ENI; from the agents' own state no address held
//! by two pods or in two nodes' pools at once; no NodeNetwork pooling an
//! address a FixedIP names without the `fixedIps` entry naming its pod; no
//! address on two ENIs; no fixed address lost or leaked.

mod agent;
mod world;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use comfy_table::{Cell, CellAlignment, Table, presets::UTF8_FULL_CONDENSED};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_cloud::{
    Backoff, Cloud, CloudConfig, CloudMetrics, EniCloud, Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_crds::ReclaimPolicy;
use sextant_ipam::{
    fixed_ip::{execute::Parking, plan::StatefulSetView},
    metrics::IpamMetrics,
    node::{IpamConfig, NodeIpam},
};

use world::World;

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
    /// Cloud API calls (the FixedIP controller's and node IPAM's).
    pub api_calls: u64,
    /// Node IPAM reconciles.
    pub node_ipam_reconciles: u64,
    /// Node IPAM reconciles that failed (retried, as the operator requeues).
    pub node_ipam_errors: u64,
    /// Usage-report PATCHes the agents sent.
    pub agent_patches: u64,
    /// Ordinary pods running at the end (besides the StatefulSet's).
    pub ordinary_pods: u64,
    /// StatefulSet pods checked against their agents (summed over audits).
    pub sts_pods_checked: u64,
    /// StatefulSet pods whose agent handed them an address other than
    /// their ordinal's.
    pub address_changes: u64,
    /// StatefulSet pods scheduled on a live node whose agent gave them no
    /// address by the audit.
    pub without_address: u64,
    /// Addresses on two ENIs in the cloud.
    pub owned_twice: u64,
    /// Times an address was held by two pods in the agents' allocations.
    pub held_twice: u64,
    /// Times an address was in two agents' pools at once.
    pub in_two_pools: u64,
    /// Times a NodeNetwork's pool listed an address a FixedIP names without
    /// the `fixedIps` entry naming its pod (its agent could hand it to any pod).
    pub unguarded: u64,
    /// StatefulSet pods whose address is not on their node's ENI.
    pub not_on_node: u64,
    /// Reserved addresses found on no ENI: dropped back to the subnet, where
    /// anyone could take them.
    pub lost: u64,
    /// Fixed addresses in the cloud that no FixedIP accounts for, released
    /// ones still parked or named on a node, and addresses in the cloud that
    /// no pool, parking ENI or FixedIP accounts for.
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
            && self.without_address == 0
            && self.owned_twice == 0
            && self.held_twice == 0
            && self.in_two_pools == 0
            && self.unguarded == 0
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
            "node IPAM reconciles",
            self.node_ipam_reconciles.to_string(),
        );
        row("  of which failed", self.node_ipam_errors.to_string());
        row("agent status PATCHes", self.agent_patches.to_string());
        row("ordinary pods running", self.ordinary_pods.to_string());
        row(
            "StatefulSet pods checked",
            self.sts_pods_checked.to_string(),
        );
        row(
            "reused after scale-down/up",
            self.reused_after_scale_up.to_string(),
        );
        row("released after TTL", self.released_after_ttl.to_string());
        row(
            "pods with a changed address",
            self.address_changes.to_string(),
        );
        row(
            "pods without their address",
            self.without_address.to_string(),
        );
        row("addresses on two ENIs", self.owned_twice.to_string());
        row("addresses held by two pods", self.held_twice.to_string());
        row(
            "addresses in two nodes' pools",
            self.in_two_pools.to_string(),
        );
        row(
            "fixed addresses pooled unguarded",
            self.unguarded.to_string(),
        );
        row("pod address not on its node", self.not_on_node.to_string());
        row("reserved addresses lost", self.lost.to_string());
        row("leaked addresses", self.leaked.to_string());
        t.to_string()
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
                &format!("10.{}.{}.0/20", 20 + z, s * 16),
                Tags::new(),
            )?;
            subnets_by_zone.entry(zone.clone()).or_default().push(id);
        }
    }
    sim.add_security_group(VPC, "pods", Tags::new());
    let epoch: jiff::Timestamp = "2026-01-01T00:00:00Z".parse()?;
    let calls_before = sim.stats().total_calls();
    let ipam = NodeIpam::new(
        cloud.clone(),
        IpamConfig {
            cluster: CLUSTER.into(),
            ..IpamConfig::default()
        },
        IpamMetrics::default(),
    );
    let mut w = World {
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
        ipam,
        parking: Parking::new(CLUSTER, VPC),
        rng: SmallRng::seed_from_u64(config.seed),
        nodes: BTreeMap::new(),
        store: BTreeMap::new(),
        dirty: BTreeSet::new(),
        agents: BTreeMap::new(),
        subnets: vec![],
        fixed: BTreeMap::new(),
        pods: BTreeMap::new(),
        first_ip: BTreeMap::new(),
        next_uid: 0,
        epoch,
        now: epoch,
        seed: config.seed,
        report: RollReport::default(),
    };
    // Nodes join: node IPAM gives each its pod ENI and fills its pool, the
    // agents start their ordinary pods.
    for i in 0..config.nodes {
        let zones: Vec<&String> = subnets_by_zone.keys().collect();
        let zone = zones[i % zones.len()].clone();
        let subnet = subnets_by_zone[&zone][w.rng.random_range(0..2)].clone();
        let instance = sim.add_instance(INSTANCE_TYPE, &subnet)?;
        w.add_node(&format!("node-{i:03}"), instance, &zone, i as u64);
    }
    w.settle().await.context("nodes joining")?;
    w.subnets = sim.subnets(VPC).await?;

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
    w.audit_running().await?;

    for r in 0..config.rolls {
        // Nodes fail in the middle of the roll.
        let fail_at = w.rng.random_range(0..config.replicas.max(1));
        for o in (0..config.replicas).rev() {
            if o == fail_at {
                w.fail_nodes(config.failures_per_roll);
                w.reconcile(true).await?;
                // Between eviction and rescheduling the addresses must still be held.
                w.audit_running().await?;
                for missing in 0..config.replicas {
                    if !w.pods.contains_key(&format!("web-{missing}")) {
                        w.start_pod(missing);
                    }
                }
                w.reconcile(true).await?;
                w.audit_running().await?;
            }
            w.remove_pod(&format!("web-{o}"));
            w.reconcile(true).await?;
            w.start_pod(o);
            w.now = w.now.checked_add(jiff::SignedDuration::from_secs(5))?;
            w.reconcile(true).await?;
            w.audit_running().await?;
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
        w.remove_pod(&format!("web-{o}"));
    }
    w.reconcile(true).await?;
    w.now = w.now.checked_add(jiff::SignedDuration::from_secs(300))?;
    w.sts.replicas = config.replicas;
    w.reconcile(true).await?;
    for o in keep..config.replicas {
        w.start_pod(o);
    }
    w.reconcile(true).await?;
    w.audit_running().await?;
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
        w.remove_pod(&format!("web-{o}"));
    }
    w.reconcile(true).await?;
    w.now = w.now.checked_add(jiff::SignedDuration::from_secs(601))?;
    w.reconcile(true).await?;
    w.audit_running().await?;

    // Leaks: every parked address has its FixedIP, every FixedIP's address
    // is in the cloud, released ones are neither parked nor named on a node
    // (node IPAM may have taken them back into a pool since, which is use),
    // and every address in the cloud is in a pool, parked or fixed.
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
    let parked: BTreeSet<Ipv4Addr> = sim
        .all_enis()
        .iter()
        .filter(|e| e.tags.contains_key(sextant_cloud::TAG_ROLE))
        .flat_map(|e| e.secondary_ips.clone())
        .collect();
    let named = w.named_on_nodes();
    w.report.leaked += parked.difference(&fixed_now).count() as u64;
    w.report.leaked += (keep..config.replicas)
        .filter_map(|o| before.get(&o))
        .filter(|ip| parked.contains(ip) || named.contains(ip))
        .count() as u64;
    w.report.leaked += fixed_now.difference(&assigned).count() as u64;
    w.report.leaked += named.difference(&fixed_now).count() as u64;
    w.report.leaked += w.unaccounted().await?;
    w.report.api_calls = sim.stats().total_calls() - calls_before;
    w.report.agent_patches = w.agents.values().map(|a| a.patches).sum();
    w.report.ordinary_pods = w.agents.values().map(|a| a.ordinary_running() as u64).sum();
    if let Some(p) = &progress {
        p.finish_and_clear();
    }
    Ok(w.report)
}
