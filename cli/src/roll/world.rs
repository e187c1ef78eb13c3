//! The roll's cluster: the simulated cloud, NodeNetworks in memory (status
//! written with the merge patches the operator and the agents send), node
//! IPAM ([`NodeIpam`]) per node, the FixedIP controller's plan, execute and
//! record (all of sextant-ipam), one real-agent [`Agent`] per node, and the
//! audits.
//!
//! ```text
//!  FixedIP reconcile: plan ─▶ record::claims ─▶ NodeNetwork fixedIps (new node names the pod)
//!                          ─▶ execute (cloud move)
//!                          ─▶ [window: full resync of every node + the agents, as may happen]
//!                          ─▶ record: gives_up / moved_off_patch (old node), FixedIP status
//!  settle: node IPAM on changed NodeNetworks ◀──▶ agents (apply, ADD/DEL, report)
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use anyhow::Context;
use rand::{rngs::SmallRng, seq::IndexedRandom};
use sextant_agent_core::fixed_ip::Lookup;
use sextant_cloud::{Cloud, EniCloud, sim::SimCloud};
use sextant_crds::{FixedIP, FixedIPSpec, NodeNetwork, NodeNetworkSpec, Provider};
use sextant_ipam::{
    fixed_ip::{
        execute::{Holders, Outcome, Parking, execute, status_after, status_for},
        plan::{FixedIpInput, NodeView, PodView, StatefulSetView, Step, node_views, plan},
        record::{claims, fixed_ip_entry_patch, gives_up, moved_off_patch},
    },
    gc::{GcPolicy, plan_gc},
    node::NodeIpam,
    resync::{apply_enis, by_instance, eni_statuses, list_vpc},
    status_patch,
};

use super::{CLUSTER, INSTANCE_TYPE, RollReport, VPC, agent::Agent};

/// Ordinary pods each node runs besides the StatefulSet's.
const ORDINARY_PODS: u64 = 4;
/// Chance an ordinary pod ends at each agent step (and is replaced).
const CHURN: f64 = 0.02;
/// Rounds of node IPAM and agents after each reconcile before the audit.
const SETTLE_ROUNDS: usize = 6;

pub struct Node {
    pub instance: String,
}

pub struct World {
    pub sim: Arc<SimCloud>,
    pub cloud: Arc<Cloud>,
    pub ipam: NodeIpam,
    pub parking: Parking,
    pub rng: SmallRng,
    pub nodes: BTreeMap<String, Node>,
    /// NodeNetworks as the API server would hold them.
    pub store: BTreeMap<String, NodeNetwork>,
    /// NodeNetworks changed since node IPAM last reconciled them.
    pub dirty: BTreeSet<String>,
    pub agents: BTreeMap<String, Agent>,
    pub subnets: Vec<sextant_cloud::Subnet>,
    pub sts: StatefulSetView,
    pub fixed: BTreeMap<String, FixedIP>,
    pub pods: BTreeMap<String, PodView>,
    pub first_ip: BTreeMap<u32, Ipv4Addr>,
    pub next_uid: u64,
    pub epoch: jiff::Timestamp,
    pub now: jiff::Timestamp,
    pub seed: u64,
    pub report: RollReport,
}

impl World {
    fn now_ms(&self) -> u64 {
        let d = self.now.duration_since(self.epoch);
        u64::try_from(d.as_millis()).unwrap_or(0)
    }

    /// Adds node `name` on `instance` in `zone`: its NodeNetwork (as the
    /// operator's node watch creates it) and its agent.
    pub fn add_node(&mut self, name: &str, instance: String, zone: &str, index: u64) {
        let nn = NodeNetwork::new(
            name,
            NodeNetworkSpec {
                provider: Provider::Aws,
                instance_id: Some(instance.clone()),
                instance_type: Some(INSTANCE_TYPE.into()),
                zone: Some(zone.into()),
                vpc_id: Some(VPC.into()),
                ipam: Default::default(),
                pod_cidrs: vec![],
            },
        );
        self.store.insert(name.to_owned(), nn);
        self.dirty.insert(name.to_owned());
        self.agents.insert(
            name.to_owned(),
            Agent::new(
                name,
                &self.sts.namespace,
                self.seed.wrapping_mul(1_000_003).wrapping_add(index),
                ORDINARY_PODS,
            ),
        );
        self.nodes.insert(name.to_owned(), Node { instance });
    }

    /// `PATCH .../status` with `application/merge-patch+json`, as the API
    /// server applies it; a change is a watch event for node IPAM.
    fn merge(&mut self, name: &str, patch: &serde_json::Value) -> anyhow::Result<()> {
        let Some(nn) = self.store.get_mut(name) else {
            // Gone with its node: the API server's 404, nothing to write.
            return Ok(());
        };
        let mut doc = serde_json::to_value(&*nn)?;
        let before = doc.clone();
        json_patch::merge(&mut doc, patch);
        if doc != before {
            *nn = serde_json::from_value(doc)?;
            self.dirty.insert(name.to_owned());
        }
        Ok(())
    }

    /// NodeViews from the NodeNetworks, as the controller reads them.
    pub fn node_views(&self) -> BTreeMap<String, NodeView> {
        node_views(self.store.values())
    }

    /// Node IPAM's reconcile of every NodeNetwork changed since its last one.
    /// A failed reconcile is counted and retried at the next round, as the
    /// operator requeues it; the status it still has to write is written.
    async fn node_ipam(&mut self) -> anyhow::Result<()> {
        let mut failed = Vec::new();
        for name in std::mem::take(&mut self.dirty) {
            let Some(nn) = self.store.get(&name).cloned() else {
                continue;
            };
            self.report.node_ipam_reconciles += 1;
            let r = match self.ipam.reconcile(&nn, self.now).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(node = %name, error = %e, "node IPAM failed");
                    failed.push(name);
                    continue;
                }
            };
            let old = nn.status.clone().unwrap_or_default();
            if let Some(patch) = status_patch(&old, &r.status) {
                self.merge(&name, &patch)?;
            }
            if let Some(e) = r.error {
                tracing::debug!(node = %name, error = %e, "node IPAM step failed");
                failed.push(name);
            }
        }
        self.report.node_ipam_errors += failed.len() as u64;
        self.dirty.extend(failed);
        Ok(())
    }

    /// The operator's periodic full resync: one VPC listing, every
    /// NodeNetwork's ENIs and pool from it.
    async fn full_resync(&mut self) -> anyhow::Result<()> {
        let by_inst = by_instance(list_vpc(self.cloud.as_ref(), VPC).await?);
        let names: Vec<String> = self.store.keys().cloned().collect();
        for name in names {
            let Some(nn) = self.store.get(&name) else {
                continue;
            };
            let Some(net) = nn.spec.instance_id.as_deref().and_then(|i| by_inst.get(i)) else {
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
                self.merge(&name, &patch)?;
            }
        }
        Ok(())
    }

    /// One step of every agent: the NodeNetwork taken in, ADDs and DELs,
    /// the usage report written.
    fn agents_step(&mut self) -> anyhow::Result<()> {
        let now_ms = self.now_ms();
        let lookups: BTreeMap<String, Lookup> = self
            .fixed
            .iter()
            .filter_map(|(pod, f)| Some((pod.clone(), Lookup::Found(f.spec.ip.parse().ok()?))))
            .collect();
        let lookup = |pod: &str| lookups.get(pod).copied().unwrap_or(Lookup::NotFound);
        let mut patches = Vec::new();
        for (name, agent) in &mut self.agents {
            let Some(nn) = self.store.get(name) else {
                continue;
            };
            if let Some(p) = agent.step(nn, lookup, CHURN, now_ms) {
                patches.push((name.clone(), p));
            }
        }
        for (name, p) in patches {
            self.merge(&name, &p)?;
        }
        self.audit_pools();
        Ok(())
    }

    /// Node IPAM and the agents until nothing changes (bounded).
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        for _ in 0..SETTLE_ROUNDS {
            self.node_ipam().await?;
            self.agents_step()?;
            if self.dirty.is_empty() {
                break;
            }
        }
        Ok(())
    }

    /// One reconcile of the StatefulSet by the FixedIP controller: plan,
    /// the new nodes' `fixedIps` entries, the cloud steps, then, as the
    /// operator's concurrency allows at the worst moment, a full resync of
    /// every node and a step of every agent, then the record; GC after; the
    /// cluster settles.
    pub async fn reconcile(&mut self, sts_exists: bool) -> anyhow::Result<()> {
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
            for c in claims(&self.sts.namespace, &steps) {
                self.merge(&c.node, &fixed_ip_entry_patch(c.ip, Some(&c.owner)))?;
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
            if outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Moved { .. } | Outcome::Released { .. }))
            {
                // The window between the cloud step and its record.
                self.full_resync().await?;
                self.agents_step()?;
            }
            for o in outcomes {
                self.record(&o)?;
            }
            if let Some(e) = error {
                return Err(e).context("fixed-IP execute");
            }
            if cloud_steps == 0 {
                break;
            }
        }
        self.gc().await?;
        self.settle().await
    }

    /// The FixedIP controller's record of one outcome: the old node lets
    /// go ([`gives_up`], [`moved_off_patch`]), then the FixedIP.
    fn record(&mut self, o: &Outcome) -> anyhow::Result<()> {
        let old = match o {
            Outcome::Moved { pod, .. } | Outcome::Released { pod, .. } => self
                .fixed
                .get(pod)
                .and_then(|f| f.status.clone())
                .unwrap_or_default(),
            _ => Default::default(),
        };
        if let Some((from, ip)) = gives_up(o, &old)
            && let Some(patch) = self.store.get(from).and_then(|nn| moved_off_patch(nn, ip))
        {
            let from = from.to_owned();
            self.merge(&from, &patch)?;
        }
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
        Ok(())
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

    /// Schedules pod `pod` where the extender's rule allows and has the
    /// kubelet start it there.
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
            p.node.clone_from(&choice);
            if let Some(agent) = choice.and_then(|n| self.agents.get_mut(&n)) {
                agent.start(pod, &p.uid);
            }
        }
    }

    pub fn start_pod(&mut self, ordinal: u32) {
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

    /// Deletes pod `name`: its kubelet tears the sandbox down first (CNI DEL).
    pub fn remove_pod(&mut self, name: &str) {
        let now_ms = self.now_ms();
        if let Some(p) = self.pods.remove(name)
            && let Some(agent) = p.node.and_then(|n| self.agents.get_mut(&n))
        {
            agent.stop(name, now_ms);
        }
    }

    pub fn fail_nodes(&mut self, n: usize) {
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
            // Its agent and its NodeNetwork go with it.
            self.agents.remove(node);
            self.store.remove(node);
            self.dirty.remove(node);
            self.ipam.forget(node);
            // Its pods are evicted and come back elsewhere.
            let evicted: Vec<String> = self
                .pods
                .values()
                .filter(|p| p.node.as_deref() == Some(node))
                .map(|p| p.name.clone())
                .collect();
            for p in evicted {
                self.pods.remove(&p);
            }
        }
    }

    /// What can be checked at any moment: from the agents' own state, no
    /// address held by two pods or in two nodes' pools; from the
    /// NodeNetworks, no pool listing an address a FixedIP names without
    /// the `fixedIps` entry naming its pod.
    fn audit_pools(&mut self) {
        let mut holder: BTreeMap<Ipv4Addr, String> = BTreeMap::new();
        let mut pooled: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
        for (node, agent) in &self.agents {
            for (ip, pod) in agent.allocations() {
                if let Some(other) = holder.insert(ip, pod.clone())
                    && other != pod
                {
                    self.report.held_twice += 1;
                }
            }
            for ip in agent.pool() {
                if pooled.insert(ip, node).is_some() {
                    self.report.in_two_pools += 1;
                }
            }
        }
        let owner: BTreeMap<String, String> = self
            .fixed
            .iter()
            .map(|(pod, f)| (f.spec.ip.clone(), format!("{}/{pod}", self.sts.namespace)))
            .collect();
        for nn in self.store.values() {
            let Some(s) = nn.status.as_ref() else {
                continue;
            };
            for ip in s.pool.keys() {
                if let Some(o) = owner.get(ip)
                    && s.fixed_ips.get(ip) != Some(o)
                {
                    self.report.unguarded += 1;
                }
            }
        }
    }

    /// Settles, then checks every StatefulSet pod against its agent and the
    /// cloud, and every address against the cloud.
    pub async fn audit_running(&mut self) -> anyhow::Result<()> {
        self.settle().await?;
        let enis = self.sim.all_enis();
        let mut owner_eni: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
        let mut eni_of: BTreeMap<Ipv4Addr, Option<String>> = BTreeMap::new();
        for e in &enis {
            for ip in &e.secondary_ips {
                *owner_eni.entry(*ip).or_default() += 1;
                eni_of.insert(*ip, e.attachment.as_ref().map(|a| a.instance_id.clone()));
            }
        }
        self.report.owned_twice += owner_eni.values().filter(|n| **n > 1).count() as u64;
        self.report.lost += self
            .fixed
            .values()
            .filter_map(|f| f.spec.ip.parse::<Ipv4Addr>().ok())
            .filter(|ip| !owner_eni.contains_key(ip))
            .count() as u64;
        for p in self.pods.values() {
            let Some(node) = p.node.as_deref() else {
                continue;
            };
            self.report.sts_pods_checked += 1;
            let Some(ip) = self.agents.get(node).and_then(|a| a.sts_ip(&p.name)) else {
                self.report.without_address += 1;
                continue;
            };
            if self.first_ip.get(&p.ordinal) != Some(&ip) {
                self.report.address_changes += 1;
            }
            let instance = self.nodes.get(node).map(|n| n.instance.clone());
            if eni_of.get(&ip).cloned().flatten() != instance {
                self.report.not_on_node += 1;
            }
        }
        Ok(())
    }

    /// Addresses in the cloud that nothing accounts for after a last full
    /// resync: on a live node's pod ENI but not in its pool, or on an ENI
    /// of ours that is neither attached nor parking.
    pub async fn unaccounted(&mut self) -> anyhow::Result<u64> {
        self.full_resync().await?;
        let live: BTreeMap<&str, &NodeNetwork> = self
            .store
            .values()
            .filter_map(|nn| Some((nn.spec.instance_id.as_deref()?, nn)))
            .collect();
        let mut n = 0;
        for e in self.sim.all_enis() {
            if e.tags.contains_key(sextant_cloud::TAG_ROLE) {
                continue;
            }
            match e.attachment.as_ref() {
                Some(a) if a.device_index == 0 => {}
                Some(a) => {
                    let pool = live
                        .get(a.instance_id.as_str())
                        .and_then(|nn| nn.status.as_ref())
                        .map(|s| &s.pool);
                    n += e
                        .secondary_ips
                        .iter()
                        .filter(|ip| pool.is_none_or(|p| !p.contains_key(&ip.to_string())))
                        .count() as u64;
                }
                None => n += e.secondary_ips.len() as u64,
            }
        }
        Ok(n)
    }

    /// Addresses some NodeNetwork's `fixedIps` still names.
    pub fn named_on_nodes(&self) -> BTreeSet<Ipv4Addr> {
        self.store
            .values()
            .filter_map(|nn| nn.status.as_ref())
            .flat_map(|s| s.fixed_ips.keys())
            .filter_map(|ip| ip.parse().ok())
            .collect()
    }
}
