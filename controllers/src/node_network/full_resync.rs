//! The periodic full resync: one paged listing per VPC (never per subnet)
//! brings every NodeNetwork's ENIs back in line with the cloud, and the same
//! listing feeds ENI garbage collection.
//!
//! ```text
//!  every interval:  VPCs of all NodeNetworks (+ --vpc-id)
//!                     └─▶ resync::list_vpc (paged) ─▶ by_instance ─┬─▶ resync_patch per node (pure) ─▶ PATCH status (resourceVersion-guarded)
//!                                                                  └─▶ gc::GcState::plan (pure; + FixedIP addresses) ─▶ DeleteNetworkInterface, a batch per round
//! ```
//!
//! Garbage collection times each unattached ENI from the round that first
//! saw it so (not from its creation tag), and never deletes one holding an
//! address a FixedIP names; when the FixedIPs cannot be listed it deletes
//! nothing that round.
//!
//! A node the reconciler resynced after the listing started is skipped (its
//! status is fresher than the listing), and every patch carries the
//! resourceVersion it was computed from, so a concurrent write makes it fail
//! with a conflict instead of overwriting newer ENIs with older ones.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::reflector::Store,
};
use prometheus_client::{
    metrics::{counter::Counter, histogram::Histogram},
    registry::Registry,
};
use serde_json::Value;
use sextant_cloud::{Eni, EniCloud, EniState, EniTags, InstanceNetwork};
use sextant_crds::{FixedIP, NodeNetwork, wellknown::FIELD_MANAGER_OPERATOR};
use sextant_kit::{ErrorChain, sync::lock};
use tracing::{debug, info, instrument, warn};

use crate::{
    apiserver::{Clock, is_conflict},
    ipam::{
        gc::{Attaching, GcPolicy, GcState},
        resync::{apply_enis, by_instance, eni_statuses, list_vpc},
    },
    make_status_patch,
};

/// Settings of the full resync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FullResyncConfig {
    /// Time between rounds.
    pub(crate) interval: Duration,
    /// Cluster name: only ENIs tagged with it are ever collected.
    pub(crate) cluster: String,
    /// Garbage collection grace and batch.
    pub(crate) gc: GcPolicy,
    /// VPCs listed even when no NodeNetwork names them (nodes whose VPC is
    /// learnt from their ENIs, garbage left after the last node went).
    pub(crate) vpcs: Vec<String>,
}

/// Full resync metrics (`sextant_operator_full_resync_*`, `sextant_operator_gc_*`).
#[derive(Clone)]
pub(crate) struct FullResyncMetrics {
    rounds: Counter,
    duration: Histogram,
    list_failures: Counter,
    patched: Counter,
    conflicts: Counter,
    gc_deleted: Counter,
    gc_failures: Counter,
    gc_held_fixed: Counter,
    gc_skipped_rounds: Counter,
}

impl Default for FullResyncMetrics {
    fn default() -> Self {
        FullResyncMetrics {
            rounds: Counter::default(),
            duration: Histogram::new([0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]),
            list_failures: Counter::default(),
            patched: Counter::default(),
            conflicts: Counter::default(),
            gc_deleted: Counter::default(),
            gc_failures: Counter::default(),
            gc_held_fixed: Counter::default(),
            gc_skipped_rounds: Counter::default(),
        }
    }
}

impl FullResyncMetrics {
    /// Registers under `registry` (the `sextant_operator` one).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "full_resync_rounds",
            "Full resync rounds run",
            self.rounds.clone(),
        );
        registry.register(
            "full_resync_duration_seconds",
            "Duration of one full resync round",
            self.duration.clone(),
        );
        registry.register(
            "full_resync_list_failures",
            "VPC listings that failed",
            self.list_failures.clone(),
        );
        registry.register(
            "full_resync_patched_nodes",
            "NodeNetworks whose ENIs the full resync corrected",
            self.patched.clone(),
        );
        registry.register(
            "full_resync_conflicts",
            "Full resync patches that lost to a concurrent write",
            self.conflicts.clone(),
        );
        registry.register(
            "gc_deleted_enis",
            "Leaked ENIs deleted",
            self.gc_deleted.clone(),
        );
        registry.register(
            "gc_delete_failures",
            "ENI deletions that failed",
            self.gc_failures.clone(),
        );
        registry.register(
            "gc_held_fixed_ip_enis",
            "Unattached ENIs past the grace kept because they hold an address a FixedIP names (per round)",
            self.gc_held_fixed.clone(),
        );
        registry.register(
            "gc_skipped_rounds",
            "Rounds that deleted nothing because the FixedIPs could not be listed",
            self.gc_skipped_rounds.clone(),
        );
    }
}

/// What one round did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RoundReport {
    /// VPCs listed successfully.
    pub(crate) vpcs: usize,
    /// VPCs whose listing failed.
    pub(crate) failed_vpcs: usize,
    /// ENIs seen.
    pub(crate) enis: usize,
    /// NodeNetworks patched.
    pub(crate) patched: Vec<String>,
    /// NodeNetworks whose patch lost to a concurrent write.
    pub(crate) conflicts: Vec<String>,
    /// ENIs deleted by garbage collection.
    pub(crate) deleted: Vec<String>,
    /// ENIs whose deletion failed.
    pub(crate) delete_failures: usize,
    /// Unattached ENIs past the grace kept for a FixedIP's address.
    pub(crate) held: Vec<String>,
}

/// The VPCs a round lists: those the NodeNetworks name, plus the configured ones.
pub(crate) fn vpcs_to_list<'a>(
    nns: impl IntoIterator<Item = &'a NodeNetwork>,
    configured: &[String],
) -> BTreeSet<String> {
    nns.into_iter()
        .filter_map(|nn| nn.spec.vpc_id.clone())
        .chain(configured.iter().cloned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The status merge patch bringing `nn` in line with the listing of its
/// instance, guarded by the resourceVersion it was computed from; `None`
/// when its ENIs already match, or when the reconciler resynced it after
/// `listed_at` (its status is fresher than the listing).
pub(crate) fn resync_patch(
    nn: &NodeNetwork,
    net: &InstanceNetwork,
    listed_at: Timestamp,
    now: Timestamp,
) -> Option<Value> {
    let old = nn.status.clone().unwrap_or_default();
    let fresher = old
        .last_resync
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|t| t >= listed_at);
    if fresher {
        return None;
    }
    let enis = eni_statuses(net, &nn.spec.ipam.exclude_interface_tags);
    if enis == old.enis {
        return None;
    }
    let mut new = old.clone();
    apply_enis(&mut new, enis, nn.spec.ipam.first_interface_index());
    new.last_resync = Some(now.to_string());
    make_status_patch(nn, &new)
}

/// Runs full resync rounds.
pub(crate) struct FullResync {
    client: Client,
    cloud: Arc<dyn EniCloud>,
    config: FullResyncConfig,
    clock: Clock,
    metrics: FullResyncMetrics,
    gc: Mutex<GcState>,
    attaching: Attaching,
}

/// Whether `eni` could be collected at all (ours, unattached): only then
/// are FixedIPs listed.
fn collectable(eni: &Eni, cluster: &str) -> bool {
    eni.state == EniState::Available
        && eni.attachment.is_none()
        && EniTags::parse(&eni.tags).is_some_and(|t| t.cluster == cluster)
}

impl FullResync {
    /// A full resync over `cloud` (give it the rate-limited [`sextant_cloud::Cloud`]).
    pub(crate) fn new(
        client: Client,
        cloud: Arc<dyn EniCloud>,
        config: FullResyncConfig,
        clock: Clock,
        metrics: FullResyncMetrics,
    ) -> Self {
        FullResync {
            client,
            cloud,
            config,
            clock,
            metrics,
            gc: Mutex::default(),
            attaching: Attaching::default(),
        }
    }

    /// The ENIs node IPAM is attaching ([`sextant_ipam::node::NodeIpam::attaching`]):
    /// the collector never takes them, however long their attach waits.
    pub(crate) fn with_attaching(mut self, attaching: Attaching) -> Self {
        self.attaching = attaching;
        self
    }

    /// Every address a FixedIP names, in any namespace.
    async fn fixed_ips(&self) -> Result<BTreeSet<Ipv4Addr>, kube::Error> {
        let api: Api<FixedIP> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await?;
        Ok(list
            .items
            .iter()
            .filter_map(|f| f.spec.ip.parse().ok())
            .collect())
    }

    /// One round over the NodeNetworks given.
    #[instrument(skip_all, fields(nodes = nns.len()))]
    pub(crate) async fn round(&self, nns: &[Arc<NodeNetwork>]) -> RoundReport {
        self.metrics.rounds.inc();
        let started = tokio::time::Instant::now();
        let listed_at = (self.clock)();
        let mut report = RoundReport::default();
        let mut all: Vec<Eni> = Vec::new();
        for vpc in vpcs_to_list(nns.iter().map(|nn| nn.as_ref()), &self.config.vpcs) {
            match list_vpc(self.cloud.as_ref(), &vpc).await {
                Ok(enis) => {
                    debug!(%vpc, enis = enis.len(), "listed");
                    report.vpcs += 1;
                    all.extend(enis);
                }
                Err(e) => {
                    warn!(%vpc, error = %ErrorChain(&e), "listing the VPC failed");
                    self.metrics.list_failures.inc();
                    report.failed_vpcs += 1;
                }
            }
        }
        report.enis = all.len();
        let now = (self.clock)();
        let fixed = if all.iter().any(|e| collectable(e, &self.config.cluster)) {
            match self.fixed_ips().await {
                Ok(ips) => Some(ips),
                Err(e) => {
                    warn!(error = %ErrorChain(&e), "listing FixedIPs failed; no ENI is deleted this round");
                    self.metrics.gc_skipped_rounds.inc();
                    None
                }
            }
        } else {
            Some(BTreeSet::new())
        };
        let doomed = {
            let mut gc = lock(&self.gc);
            let round = gc.plan(
                &all,
                &self.config.cluster,
                now,
                self.config.gc,
                fixed.as_ref().unwrap_or(&BTreeSet::new()),
                &self.attaching.ids(),
            );
            self.metrics.gc_held_fixed.inc_by(round.held.len() as u64);
            report.held = round.held;
            // Without the FixedIPs the grace still runs; nothing is deleted.
            if fixed.is_some() {
                round.delete
            } else {
                Vec::new()
            }
        };
        let instances: BTreeMap<String, InstanceNetwork> = by_instance(all);

        let api: Api<NodeNetwork> = Api::all(self.client.clone());
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
            ..PatchParams::default()
        };
        for nn in nns {
            let Some(net) = nn
                .spec
                .instance_id
                .as_deref()
                .and_then(|i| instances.get(i))
            else {
                continue;
            };
            let Some(patch) = resync_patch(nn, net, listed_at, now) else {
                continue;
            };
            let node = nn.name_any();
            match api.patch_status(&node, &pp, &Patch::Merge(&patch)).await {
                Ok(_) => {
                    info!(%node, "ENIs corrected by the full resync");
                    self.metrics.patched.inc();
                    report.patched.push(node);
                }
                Err(e) if is_conflict(&e) => {
                    debug!(%node, "written meanwhile; the next round looks again");
                    self.metrics.conflicts.inc();
                    report.conflicts.push(node);
                }
                Err(e) => warn!(%node, error = %ErrorChain(&e), "full resync patch failed"),
            }
        }

        for eni in doomed {
            match self.cloud.delete_eni(&eni).await {
                Ok(()) | Err(sextant_cloud::Error::NotFound { .. }) => {
                    info!(%eni, "deleted leaked ENI");
                    self.metrics.gc_deleted.inc();
                    report.deleted.push(eni);
                }
                Err(e) => {
                    warn!(%eni, error = %ErrorChain(&e), "deleting leaked ENI failed");
                    self.metrics.gc_failures.inc();
                    report.delete_failures += 1;
                }
            }
        }
        self.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        report
    }

    /// Runs a round every interval over the NodeNetworks in `store`, the
    /// first one an interval after the store is ready (new nodes resync on
    /// their first reconcile anyway).
    pub(crate) async fn run(&self, store: Store<NodeNetwork>) {
        if store.wait_until_ready().await.is_err() {
            warn!("NodeNetwork store gone; full resync stops");
            return;
        }
        let mut ticks = tokio::time::interval_at(
            tokio::time::Instant::now() + self.config.interval,
            self.config.interval,
        );
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let report = self.round(&store.state()).await;
            info!(
                vpcs = report.vpcs,
                failed_vpcs = report.failed_vpcs,
                enis = report.enis,
                patched = report.patched.len(),
                conflicts = report.conflicts.len(),
                deleted = report.deleted.len(),
                "full resync done"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use serde_json::json;
    use sextant_cloud::{Attachment, EniState, Tags};
    use sextant_crds::{EniStatus, NodeNetworkSpec, NodeNetworkStatus, Provider};
    use std::net::Ipv4Addr;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn mk_nn(name: &str, vpc: Option<&str>, status: NodeNetworkStatus) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            name,
            NodeNetworkSpec {
                provider: Provider::Aws,
                instance_id: Some(format!("i-{name}")),
                instance_type: Some("m5.large".into()),
                vpc_id: vpc.map(str::to_owned),
                ..NodeNetworkSpec::default()
            },
        );
        nn.metadata.resource_version = Some("41".into());
        nn.status = Some(status);
        nn
    }

    fn mk_eni(id: &str, device_index: u32, ips: &[[u8; 4]]) -> Eni {
        Eni {
            id: id.into(),
            subnet_id: "subnet-1".into(),
            vpc_id: "vpc-1".into(),
            zone: "us-east-1a".into(),
            mac: format!("02:00:00:00:00:0{device_index}"),
            primary_ip: Ipv4Addr::new(10, 0, 0, 10 + device_index as u8),
            secondary_ips: ips.iter().map(|o| Ipv4Addr::from(*o)).collect(),
            security_groups: vec!["sg-1".into()],
            tags: Tags::new(),
            state: EniState::InUse,
            attachment: Some(Attachment {
                id: format!("attach-{id}"),
                instance_id: "i-a".into(),
                device_index,
            }),
        }
    }

    fn net(enis: Vec<Eni>) -> InstanceNetwork {
        InstanceNetwork {
            instance_id: "i-a".into(),
            enis,
        }
    }

    #[test]
    fn every_vpc_is_listed_once() {
        let nns = [
            mk_nn("a", Some("vpc-1"), Default::default()),
            mk_nn("b", Some("vpc-1"), Default::default()),
            mk_nn("c", Some("vpc-2"), Default::default()),
            mk_nn("d", None, Default::default()),
        ];
        let vpcs = vpcs_to_list(&nns, &["vpc-3".into(), "vpc-1".into()]);
        assert_eq!(
            vpcs.into_iter().collect::<Vec<_>>(),
            ["vpc-1", "vpc-2", "vpc-3"]
        );
    }

    #[test]
    fn differing_enis_become_a_guarded_status_patch() {
        let nn = mk_nn("a", Some("vpc-1"), NodeNetworkStatus::default());
        let listing = net(vec![
            mk_eni("eni-0", 0, &[]),
            mk_eni("eni-1", 1, &[[10, 0, 1, 5], [10, 0, 1, 6]]),
        ]);
        let patch = resync_patch(
            &nn,
            &listing,
            ts("2026-11-25T12:00:00Z"),
            ts("2026-11-25T12:00:01Z"),
        )
        .unwrap();
        assert_eq!(patch["metadata"], json!({ "resourceVersion": "41" }));
        let s = &patch["status"];
        assert_eq!(s["enis"].as_array().unwrap().len(), 2);
        assert_eq!(
            s["pool"],
            json!({ "10.0.1.5": { "eni": "eni-1" }, "10.0.1.6": { "eni": "eni-1" } })
        );
        assert_eq!(s["lastResync"], json!("2026-11-25T12:00:01Z"));
        assert_eq!(
            s["summary"],
            json!({
                "enis": 2, "poolSize": 2, "used": 0,
                "capacity": 0, "maxEnis": 0, "ipv4PerEni": 0,
            })
        );
    }

    #[test]
    fn matching_enis_need_no_write() {
        let listing = net(vec![
            mk_eni("eni-0", 0, &[]),
            mk_eni("eni-1", 1, &[[10, 0, 1, 5]]),
        ]);
        let mut status = NodeNetworkStatus::default();
        apply_enis(&mut status, eni_statuses(&listing, &BTreeMap::new()), 1);
        let nn = mk_nn("a", Some("vpc-1"), status);
        assert_eq!(
            resync_patch(
                &nn,
                &listing,
                ts("2026-11-25T12:00:00Z"),
                ts("2026-11-25T12:00:01Z")
            ),
            None
        );
    }

    #[test]
    fn a_node_resynced_after_the_listing_started_is_left_alone() {
        let status = NodeNetworkStatus {
            enis: vec![EniStatus {
                id: "eni-new".into(),
                ..EniStatus::default()
            }],
            last_resync: Some("2026-11-25T12:00:00.5Z".into()),
            ..NodeNetworkStatus::default()
        };
        let nn = mk_nn("a", Some("vpc-1"), status);
        let listing = net(vec![mk_eni("eni-0", 0, &[])]);
        assert_eq!(
            resync_patch(
                &nn,
                &listing,
                ts("2026-11-25T12:00:00Z"),
                ts("2026-11-25T12:00:01Z")
            ),
            None
        );
        let older = ts("2026-11-25T12:00:01Z");
        assert!(resync_patch(&nn, &listing, older, older).is_some());
    }

    // One round's kube calls, against a mocked API server and the
    // simulated cloud.

    use http::Method;
    use sextant_cloud::{
        CreateEni, EniTags,
        sim::{Faults, SimCloud, SimConfig, SimProvider},
    };

    use sextant_kit::testing::{ApiServerVerifier, mock_client, status_failure};

    const NOW: &str = "2026-11-25T12:00:00Z";
    const STATUS_A: &str =
        "/apis/sextant.io/v1alpha1/nodenetworks/a/status?&fieldManager=sextant-operator";

    /// A simulated VPC with one instance that has a pod ENI of two
    /// addresses, and a leaked ENI of this cluster from an hour ago.
    struct Vpc {
        sim: Arc<SimCloud>,
        instance: String,
        pod_eni: Eni,
        leaked: String,
    }

    async fn vpc() -> Vpc {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 7)));
        let subnet = sim
            .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
            .unwrap();
        let instance = sim.add_instance("m5.large", &subnet).unwrap();
        let tags = |created_at: &str| {
            EniTags {
                cluster: "test".into(),
                node: "a".into(),
                created_at: ts(created_at),
            }
            .to_tags()
        };
        let request = |secondary_ips, created_at| CreateEni {
            subnet_id: subnet.clone(),
            security_groups: vec![],
            tags: tags(created_at),
            secondary_ips,
            description: String::new(),
        };
        let pod_eni = sim
            .create_eni(&request(2, "2026-11-25T11:00:00Z"))
            .await
            .unwrap();
        sim.attach_eni(&pod_eni.id, &instance, 1).await.unwrap();
        let leaked = sim
            .create_eni(&request(0, "2026-11-25T11:00:00Z"))
            .await
            .unwrap()
            .id;
        Vpc {
            sim,
            instance,
            pod_eni,
            leaked,
        }
    }

    fn full_resync(sim: &Arc<SimCloud>) -> (FullResync, ApiServerVerifier) {
        let (resync, server, _) = full_resync_with_clock(sim);
        (resync, server)
    }

    /// A full resync whose clock the test moves.
    fn full_resync_with_clock(
        sim: &Arc<SimCloud>,
    ) -> (FullResync, ApiServerVerifier, Arc<Mutex<Timestamp>>) {
        let (client, server) = mock_client();
        let now = Arc::new(Mutex::new(ts(NOW)));
        let clock = now.clone();
        let resync = FullResync::new(
            client,
            sim.clone(),
            FullResyncConfig {
                interval: Duration::from_secs(300),
                cluster: "test".into(),
                gc: GcPolicy::default(),
                // Listed with or without nodes (the dead node's is gone).
                vpcs: vec!["vpc-1".into()],
            },
            Arc::new(move || *lock(&clock)),
            FullResyncMetrics::default(),
        );
        (resync, server, now)
    }

    const FIXED_IPS: &str = "/apis/sextant.io/v1alpha1/fixedips?";

    /// A FixedIP list holding `ips`.
    fn fixed_ip_list(ips: &[Ipv4Addr]) -> Value {
        json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIPList", "metadata": {},
            "items": ips.iter().enumerate().map(|(i, ip)| json!({
                "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIP",
                "metadata": { "name": format!("web-{i}"), "namespace": "db" },
                "spec": { "ip": ip.to_string(), "statefulSet": "web", "ordinal": i },
            })).collect::<Vec<_>>(),
        })
    }

    /// A round answering the FixedIP list with `fixed` and nothing else.
    async fn gc_round(
        resync: &FullResync,
        server: &mut ApiServerVerifier,
        fixed: &[Ipv4Addr],
    ) -> RoundReport {
        let (report, _) = tokio::join!(
            resync.round(&[]),
            server.expect(Method::GET, FIXED_IPS, 200, fixed_ip_list(fixed)),
        );
        report
    }

    #[tokio::test]
    async fn a_dead_nodes_eni_is_deleted_only_a_grace_after_it_was_first_seen_detached() {
        let Vpc {
            sim,
            instance,
            pod_eni,
            leaked,
        } = vpc().await;
        let (resync, mut server, clock) = full_resync_with_clock(&sim);
        // The node dies an hour after its ENIs were made: its pod ENI, one
        // address of it a StatefulSet pod's fixed IP, is detached.
        sim.detach_eni(&pod_eni).await.unwrap();
        let fixed = pod_eni.secondary_ips[0];
        let first = gc_round(&resync, &mut server, &[fixed]).await;
        assert!(
            first.deleted.is_empty(),
            "deleted in the first round after the node died: {first:?}"
        );
        *lock(&clock) = ts("2026-11-25T12:05:00Z");
        let after_grace = gc_round(&resync, &mut server, &[fixed]).await;
        assert_eq!(after_grace.deleted, std::slice::from_ref(&leaked));
        assert_eq!(after_grace.held, std::slice::from_ref(&pod_eni.id));
        assert_eq!(resync.metrics.gc_held_fixed.get(), 1);
        // Parked elsewhere: the FixedIP no longer pins the old ENI.
        *lock(&clock) = ts("2026-11-25T12:10:00Z");
        let parked = gc_round(&resync, &mut server, &[]).await;
        assert_eq!(parked.deleted, std::slice::from_ref(&pod_eni.id));
        assert!(sim.all_enis().iter().all(|e| e.attachment.is_some()));
        let _ = instance;
        drop(resync);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_eni_node_ipam_is_attaching_is_never_collected() {
        let Vpc { sim, leaked, .. } = vpc().await;
        let attaching = Attaching::default();
        let (resync, mut server, clock) = full_resync_with_clock(&sim);
        let resync = resync.with_attaching(attaching.clone());
        // Created, its attach waiting in the rate limiter past the grace:
        // before, the second round deleted it and the attach got NotFound.
        let guard = attaching.begin(&leaked);
        gc_round(&resync, &mut server, &[]).await;
        *lock(&clock) = ts("2026-11-25T12:05:00Z");
        let r = gc_round(&resync, &mut server, &[]).await;
        assert!(r.deleted.is_empty(), "collected while attaching: {r:?}");
        *lock(&clock) = ts("2026-11-25T12:10:00Z");
        let r = gc_round(&resync, &mut server, &[]).await;
        assert!(r.deleted.is_empty(), "{r:?}");
        assert!(sim.all_enis().iter().any(|e| e.id == leaked));
        // Given up: a leftover now, collected a grace after.
        drop(guard);
        *lock(&clock) = ts("2026-11-25T12:15:00Z");
        let r = gc_round(&resync, &mut server, &[]).await;
        assert!(r.deleted.is_empty(), "{r:?}");
        *lock(&clock) = ts("2026-11-25T12:20:00Z");
        let r = gc_round(&resync, &mut server, &[]).await;
        assert_eq!(r.deleted, std::slice::from_ref(&leaked));
        drop(resync);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn no_eni_is_deleted_in_a_round_whose_fixed_ip_list_failed() {
        let Vpc { sim, leaked, .. } = vpc().await;
        let (resync, mut server, clock) = full_resync_with_clock(&sim);
        gc_round(&resync, &mut server, &[]).await;
        *lock(&clock) = ts("2026-11-25T12:05:00Z");
        let (report, _) = tokio::join!(
            resync.round(&[]),
            server.expect(
                Method::GET,
                FIXED_IPS,
                500,
                status_failure(500, "InternalError")
            ),
        );
        assert!(report.deleted.is_empty(), "{report:?}");
        assert_eq!(resync.metrics.gc_skipped_rounds.get(), 1);
        assert!(sim.all_enis().iter().any(|e| e.id == leaked));
        drop(resync);
        server.expect_no_more().await;
    }

    /// Node `name` on `instance`, with `status`.
    fn node_on(name: &str, instance: &str, status: NodeNetworkStatus) -> Arc<NodeNetwork> {
        let mut nn = mk_nn(name, Some("vpc-1"), status);
        nn.spec.instance_id = Some(instance.into());
        Arc::new(nn)
    }

    #[tokio::test]
    async fn a_drifted_node_gets_one_status_patch_guarded_by_its_resource_version() {
        let Vpc {
            sim,
            instance,
            pod_eni,
            leaked,
        } = vpc().await;
        let (resync, mut server) = full_resync(&sim);
        let nns = [
            // Knows nothing of its ENIs: patched.
            node_on("a", &instance, NodeNetworkStatus::default()),
            // Resynced by the reconciler after the listing began: left alone.
            node_on(
                "b",
                &instance,
                NodeNetworkStatus {
                    last_resync: Some("2026-11-25T12:00:00.5Z".into()),
                    ..NodeNetworkStatus::default()
                },
            ),
            // Its instance is gone from the listing: left alone.
            node_on("c", "i-gone", NodeNetworkStatus::default()),
        ];
        let reply = json!(*nns[0]);
        let (report, seen) = tokio::join!(resync.round(&nns), async {
            server
                .expect(Method::GET, FIXED_IPS, 200, fixed_ip_list(&[]))
                .await;
            server.expect(Method::PATCH, STATUS_A, 200, reply).await
        });
        drop(resync);
        server.expect_no_more().await;

        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(seen.body["metadata"], json!({ "resourceVersion": "41" }));
        let status = &seen.body["status"];
        let ids: Vec<&str> = status["enis"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(ids[1], pod_eni.id);
        let pool: BTreeMap<String, Value> = pod_eni
            .secondary_ips
            .iter()
            .map(|ip| (ip.to_string(), json!({ "eni": pod_eni.id })))
            .collect();
        assert_eq!(status["pool"], json!(pool));
        assert_eq!(status["lastResync"], NOW);
        assert_eq!(
            report,
            RoundReport {
                vpcs: 1,
                failed_vpcs: 0,
                enis: 3,
                patched: vec!["a".into()],
                conflicts: vec![],
                // Seen unattached for the first time: its grace starts now.
                deleted: vec![],
                delete_failures: 0,
                held: vec![],
            }
        );
        assert!(sim.all_enis().iter().any(|e| e.id == leaked));
    }

    #[tokio::test]
    async fn a_patch_that_loses_to_a_concurrent_write_is_counted_and_left_to_the_next_round() {
        let Vpc { sim, instance, .. } = vpc().await;
        let (resync, mut server) = full_resync(&sim);
        let nns = [node_on("a", &instance, NodeNetworkStatus::default())];
        let (report, _) = tokio::join!(resync.round(&nns), async {
            server
                .expect(Method::GET, FIXED_IPS, 200, fixed_ip_list(&[]))
                .await;
            server
                .expect(
                    Method::PATCH,
                    STATUS_A,
                    409,
                    status_failure(409, "Conflict"),
                )
                .await
        });
        assert_eq!(report.conflicts, ["a"]);
        assert!(report.patched.is_empty());
        assert_eq!(resync.metrics.conflicts.get(), 1);
        drop(resync);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_failed_patch_does_not_stop_the_round() {
        let Vpc {
            sim,
            instance,
            leaked,
            ..
        } = vpc().await;
        let (resync, mut server, clock) = full_resync_with_clock(&sim);
        gc_round(&resync, &mut server, &[]).await;
        *lock(&clock) = ts("2026-11-25T12:05:00Z");
        let nns = [node_on("a", &instance, NodeNetworkStatus::default())];
        let (report, _) = tokio::join!(resync.round(&nns), async {
            server
                .expect(Method::GET, FIXED_IPS, 200, fixed_ip_list(&[]))
                .await;
            server
                .expect(
                    Method::PATCH,
                    STATUS_A,
                    500,
                    status_failure(500, "InternalError"),
                )
                .await
        });
        assert!(report.patched.is_empty() && report.conflicts.is_empty());
        assert_eq!(report.deleted, [leaked], "garbage collection still runs");
        drop(resync);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_failed_vpc_listing_writes_and_deletes_nothing() {
        let Vpc { sim, instance, .. } = vpc().await;
        sim.set_faults(Faults {
            error_ratio: 1.0,
            ..Faults::default()
        });
        let (resync, server) = full_resync(&sim);
        let nns = [node_on("a", &instance, NodeNetworkStatus::default())];
        let report = resync.round(&nns).await;
        assert_eq!((report.vpcs, report.failed_vpcs), (0, 1));
        assert!(report.patched.is_empty() && report.deleted.is_empty());
        drop(resync);
        server.expect_no_more().await;
    }
}
