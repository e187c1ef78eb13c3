//! The FixedIP controller's Kubernetes shell: reads StatefulSets, their pods,
//! FixedIPs and NodeNetworks from watch caches, runs [`plan`] and
//! [`execute`] per StatefulSet, and writes the results.
//!
//! ```text
//!  watches (StatefulSet, Pod with statefulset.kubernetes.io/pod-name, FixedIP, NodeNetwork)
//!       └─▶ dirty StatefulSet keys (+ every key each tick, for TTLs) ─▶ reconcile_statefulset
//!             plan ─▶ PATCH new node's status.fixedIps (each move's pod, first)
//!                  ─▶ execute (cloud) ─▶ PATCH old node's status (it lets go)
//!                                     ─▶ POST/PATCH status/DELETE FixedIP (last)
//!       └─▶ every PARKING_SWEEP_TICKS ticks: sweep_parking (cloud listing, LIST FixedIPs)
//!             ─▶ give back parked addresses no FixedIP named for the grace
//! ```
//!
//! FixedIPs carry the label `sextant.io/statefulset` and no owner reference:
//! deleting the StatefulSet must not garbage-collect addresses that `Retain`
//! keeps for a TTL.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex},
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Recorder, Reporter},
};
use serde_json::{Value, json};
use sextant_cloud::{EniCloud, Subnet};
use sextant_crds::{
    FixedIP, FixedIPSpec, FixedIPStatus, NodeNetwork, condition, set_condition,
    wellknown::{FIELD_MANAGER_FIXED_IP, LABEL_STATEFULSET},
};

use tracing::{debug, info, instrument, warn};

use sextant_ipam::resync::list_vpc;
use sextant_kit::sync::lock;

use super::{
    execute::{Holders, Outcome, Parking, execute, status_after, status_for},
    plan::{FixedIpInput, NodeView, PodView, StatefulSetView, Step, plan},
    record::{claims, fixed_ip_entry_patch, gives_up},
    sweep::{self, FirstSeen},
};
/// NodeNetworks as the fixed-IP plan sees them (sextant-ipam's, pure).
pub use sextant_ipam::fixed_ip::plan::node_views;
/// The patch taking a fixed IP off the node it left (sextant-ipam's, pure).
pub use sextant_ipam::fixed_ip::record::moved_off_patch as make_moved_off_patch;

/// Label kube's StatefulSet controller puts on its pods.
pub(crate) const LABEL_POD_NAME: &str = "statefulset.kubernetes.io/pod-name";

/// Why a StatefulSet's fixed IPs could not be reconciled.
#[derive(Debug, thiserror::Error)]
pub enum FixedIpError {
    /// A cloud call failed after its retries.
    #[error("{namespace}/{statefulset}: cloud call failed")]
    Cloud {
        /// Namespace.
        namespace: String,
        /// StatefulSet.
        statefulset: String,
        /// The error.
        #[source]
        source: sextant_cloud::Error,
    },
    /// A Kubernetes write failed.
    #[error("{namespace}/{statefulset}: writing {what}")]
    Kube {
        /// Namespace.
        namespace: String,
        /// StatefulSet.
        statefulset: String,
        /// Which write.
        what: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The orphan sweep could not read the parking ENIs or give an address back.
    #[error("sweeping orphaned parking addresses: cloud call failed")]
    SweepCloud {
        /// The error.
        #[source]
        source: sextant_cloud::Error,
    },
    /// The orphan sweep could not list the FixedIPs: nothing is given back
    /// without knowing every address they name.
    #[error("sweeping orphaned parking addresses: listing FixedIPs")]
    SweepList {
        /// The error.
        #[source]
        source: kube::Error,
    },
}

impl FixedIpError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            FixedIpError::Cloud { source, .. } => source.metric_label(),
            FixedIpError::Kube { source, .. } if crate::apiserver::is_conflict(source) => {
                "kube_conflict"
            }
            FixedIpError::Kube { .. } | FixedIpError::SweepList { .. } => "kube",
            FixedIpError::SweepCloud { source } => source.metric_label(),
        }
    }

    /// A write refused with 409 Conflict: the FixedIP changed since it was
    /// read. Nothing to back off from: the change's watch event marks the
    /// StatefulSet dirty again once the cache holds the new version.
    pub fn is_conflict(&self) -> bool {
        matches!(self, FixedIpError::Kube { source, .. } if crate::apiserver::is_conflict(source))
    }
}

/// The pods of StatefulSet `name` (owned by it, named `<name>-<ordinal>`).
pub fn pod_views<'a>(name: &str, pods: impl IntoIterator<Item = &'a Pod>) -> Vec<PodView> {
    pods.into_iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "StatefulSet" && o.name == name)
        })
        .filter_map(|p| {
            let pod_name = p.metadata.name.clone()?;
            let ordinal = pod_name
                .strip_prefix(name)?
                .strip_prefix('-')?
                .parse()
                .ok()?;
            Some(PodView {
                name: pod_name,
                ordinal,
                node: p.spec.as_ref().and_then(|s| s.node_name.clone()),
                uid: p.metadata.uid.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// The StatefulSet's fixed-IP view, or why its annotations are wrong.
pub(crate) fn statefulset_view(
    sts: &StatefulSet,
) -> Result<Option<StatefulSetView>, super::plan::AnnotationError> {
    let replicas = sts
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .and_then(|r| u32::try_from(r).ok())
        .unwrap_or(1);
    StatefulSetView::from_annotations(
        &sts.namespace().unwrap_or_default(),
        &sts.name_any(),
        replicas,
        sts.annotations(),
    )
}

/// What one StatefulSet's reconcile works on.
pub struct Observed<'a> {
    /// The StatefulSet view; `None` once deleted or turned off.
    pub statefulset: Option<&'a StatefulSetView>,
    /// Its FixedIPs.
    pub fixed: Vec<FixedIP>,
    /// Its pods.
    pub pods: Vec<PodView>,
    /// NodeNetworks as plan sees them.
    pub nodes: BTreeMap<String, NodeView>,
    /// Subnets of the VPC.
    pub subnets: &'a [Subnet],
}

/// Writes FixedIPs and NodeNetworks for one StatefulSet.
pub struct FixedIpController {
    metrics: crate::metrics::FixedIpMetrics,
    recorder: Recorder,
    client: Client,
    cloud: Arc<dyn EniCloud>,
    parking: Parking,
    cluster: String,
    /// Orphaned parking addresses and when the sweep first saw each.
    orphans: Mutex<FirstSeen>,
}

/// What one orphan sweep did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Addresses given back, with the parking ENI each was on.
    pub released: Vec<(String, std::net::Ipv4Addr)>,
    /// Orphans still waiting out their grace.
    pub waiting: usize,
}

/// The status merge patch writing `status` over FixedIP `read`, guarded by
/// the resourceVersion of that read: the new status is `read`'s status with
/// the decision applied (phase, node, ENI, TTL, conditions), so if the
/// FixedIP changed since, the API server refuses it with 409 Conflict and
/// the change's own watch event brings the StatefulSet back with the new
/// version.
pub fn make_fixed_ip_status_patch(read: &FixedIP, status: &FixedIPStatus) -> Value {
    crate::with_resource_version(
        json!({ "status": status }),
        read.metadata.resource_version.as_deref(),
    )
}

/// How often taking a fixed IP off its old node reads the NodeNetwork again
/// after a conflict before the reconcile gives up (and plans the move again).
const MOVED_OFF_ATTEMPTS: u32 = 5;

/// [`make_fixed_ip_status_patch`] over the FixedIP as read, when there was one.
fn status_patch_over(read: Option<&FixedIP>, status: &FixedIPStatus) -> Value {
    match read {
        Some(f) => make_fixed_ip_status_patch(f, status),
        None => json!({ "status": status }),
    }
}

fn pp() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER_FIXED_IP.to_owned()),
        ..PatchParams::default()
    }
}

impl FixedIpController {
    /// A controller writing through `client`, moving addresses in `vpc_id` through `cloud`.
    pub fn new(client: Client, cloud: Arc<dyn EniCloud>, cluster: &str, vpc_id: &str) -> Self {
        FixedIpController {
            metrics: crate::metrics::FixedIpMetrics::default(),
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: "sextant-operator".into(),
                    instance: std::env::var("HOSTNAME").ok(),
                },
            ),
            client,
            cloud,
            parking: Parking::new(cluster, vpc_id),
            cluster: cluster.to_owned(),
            orphans: Mutex::new(FirstSeen::new()),
        }
    }

    fn kube_err(
        ns: &str,
        sts: &str,
        what: &str,
    ) -> impl FnOnce(kube::Error) -> FixedIpError + use<> {
        let (namespace, statefulset, what) = (ns.to_owned(), sts.to_owned(), what.to_owned());
        move |source| FixedIpError::Kube {
            namespace,
            statefulset,
            what,
            source,
        }
    }

    /// Records into `metrics` (registered by the caller).
    pub(crate) fn with_metrics(mut self, metrics: crate::metrics::FixedIpMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Its metrics.
    #[cfg(test)]
    pub(crate) fn metrics(&self) -> &crate::metrics::FixedIpMetrics {
        &self.metrics
    }

    /// Plans, executes and writes for StatefulSet `namespace/name`; returns
    /// the steps planned.
    /// A failure other than a conflict (which is routine: the watch event
    /// brings the key back) is counted in `fixed_ip_errors` by its kind.
    #[instrument(skip(self, observed), fields(statefulset = %format!("{namespace}/{name}")))]
    pub async fn reconcile_statefulset(
        &self,
        namespace: &str,
        name: &str,
        observed: Observed<'_>,
        now: Timestamp,
    ) -> Result<Vec<Step>, FixedIpError> {
        let result = self.plan_and_write(namespace, name, observed, now).await;
        if let Err(e) = &result
            && !e.is_conflict()
        {
            self.metrics.error(e.metric_label());
        }
        result
    }

    /// Gives back the addresses on the cluster's parking ENIs that no
    /// FixedIP has named for `grace` ([`sweep`]): a Reserve parks its
    /// address before the FixedIP naming it is created, so a crash or a
    /// refused create in between would leave it there for good. Reads the
    /// cloud, then every FixedIP afresh from the API server (not a cache
    /// that may still be filling); an address a FixedIP names is never
    /// given back, and no list means no sweep.
    #[instrument(skip(self))]
    pub async fn sweep_parking(
        &self,
        now: Timestamp,
        grace: std::time::Duration,
    ) -> Result<SweepReport, FixedIpError> {
        let result = self.sweep_once(now, grace).await;
        match &result {
            Ok(r) => self.metrics.parking_orphans(r.waiting),
            Err(e) => self.metrics.error(e.metric_label()),
        }
        result
    }

    async fn sweep_once(
        &self,
        now: Timestamp,
        grace: std::time::Duration,
    ) -> Result<SweepReport, FixedIpError> {
        let cloud_err = |source| FixedIpError::SweepCloud { source };
        let enis = list_vpc(self.cloud.as_ref(), self.parking.vpc_id())
            .await
            .map_err(cloud_err)?;
        self.parking.refresh(&enis);
        let parked = sweep::parked_addresses(&enis, &self.cluster);
        if parked.is_empty() {
            lock(&self.orphans).clear();
            return Ok(SweepReport::default());
        }
        let named: BTreeSet<std::net::Ipv4Addr> = Api::<FixedIP>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| FixedIpError::SweepList { source })?
            .items
            .iter()
            .filter_map(|f| f.spec.ip.parse().ok())
            .collect();
        let plan = {
            let mut seen = lock(&self.orphans);
            let plan = sweep::plan_sweep(&parked, &named, &seen, now, grace);
            for (ip, first) in &plan.waiting {
                if !seen.contains_key(ip) {
                    info!(%ip, since = %first, "parked address no FixedIP names; given back after the grace unless one does");
                }
            }
            seen.clone_from(&plan.waiting);
            plan
        };
        let (released, failed) =
            sweep::release_orphans(self.cloud.as_ref(), &self.parking, &plan).await;
        for (eni, ip) in &released {
            warn!(%ip, %eni, "orphaned parking address given back: no FixedIP named it for the grace");
        }
        self.metrics.parking_released(released.len());
        if let Some(source) = failed {
            // Those not given back are orphans still: the next sweep tries again.
            let mut seen = lock(&self.orphans);
            for (eni, ips) in &plan.release {
                for ip in ips {
                    if !released.iter().any(|(e, i)| e == eni && i == ip) {
                        seen.insert(*ip, now);
                    }
                }
            }
            return Err(cloud_err(source));
        }
        Ok(SweepReport {
            released,
            waiting: plan.waiting.len(),
        })
    }

    async fn plan_and_write(
        &self,
        namespace: &str,
        name: &str,
        observed: Observed<'_>,
        now: Timestamp,
    ) -> Result<Vec<Step>, FixedIpError> {
        let steps = plan(&FixedIpInput {
            namespace,
            name,
            statefulset: observed.statefulset,
            fixed: &observed.fixed,
            pods: &observed.pods,
            nodes: &observed.nodes,
            subnets: observed.subnets,
            now,
        });
        self.metrics.reconciled(steps.iter().map(Step::kind));
        let fips: Api<FixedIP> = Api::namespaced(self.client.clone(), namespace);
        let by_name: BTreeMap<String, &FixedIP> =
            observed.fixed.iter().map(|f| (f.name_any(), f)).collect();
        let err = |what: &str| Self::kube_err(namespace, name, what);

        // Status-only steps and blocked pods first: they need no cloud.
        for step in &steps {
            let (pod, read, new) = match step {
                Step::Status { pod, message, .. } => {
                    let Some(f) = by_name.get(pod) else { continue };
                    let mut s = status_for(&f.status.clone().unwrap_or_default(), step);
                    set_condition(
                        &mut s.conditions,
                        condition("Placed", true, "Placed", message.clone(), None, now),
                    );
                    (pod, *f, s)
                }
                Step::Blocked { pod, message } => {
                    let Some(f) = by_name.get(pod) else {
                        warn!(%pod, %message, "cannot reserve a fixed IP");
                        continue;
                    };
                    let mut s = f.status.clone().unwrap_or_default();
                    set_condition(
                        &mut s.conditions,
                        condition("Placed", false, "Blocked", message.clone(), None, now),
                    );
                    (pod, *f, s)
                }
                _ => continue,
            };
            let patch = make_fixed_ip_status_patch(read, &new);
            fips.patch_status(pod, &pp(), &Patch::Merge(&patch))
                .await
                .map_err(err(&format!("FixedIP {pod} status")))?;
        }

        // Each destination names its pod before the cloud moves the address
        // there: from that moment any node IPAM resync puts it in the
        // node's pool, which must never list it unguarded (`record`).
        for c in claims(namespace, &steps) {
            self.node_fixed_ip(&c.node, c.ip, Some(&c.owner))
                .await
                .map_err(err(&format!("NodeNetwork {}", c.node)))?;
        }
        let holders: Holders = by_name
            .iter()
            .map(|(k, f)| (k.clone(), f.status.as_ref().and_then(|s| s.eni.clone())))
            .collect();
        let (outcomes, cloud_error) = execute(
            self.cloud.as_ref(),
            &self.parking,
            &self.cluster,
            &steps,
            &observed.nodes,
            &holders,
            now,
        )
        .await;
        let uid_of: BTreeMap<&str, &str> = observed
            .pods
            .iter()
            .map(|p| (p.name.as_str(), p.uid.as_str()))
            .collect();
        // Write what was done even when a later step failed.
        for o in &outcomes {
            self.record(
                &fips,
                namespace,
                name,
                observed.statefulset,
                &by_name,
                &uid_of,
                o,
                now,
            )
            .await?;
        }
        if let Some(source) = cloud_error {
            return Err(FixedIpError::Cloud {
                namespace: namespace.to_owned(),
                statefulset: name.to_owned(),
                source,
            });
        }
        Ok(steps)
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        fips: &Api<FixedIP>,
        namespace: &str,
        name: &str,
        sts: Option<&StatefulSetView>,
        by_name: &BTreeMap<String, &FixedIP>,
        uid_of: &BTreeMap<&str, &str>,
        o: &Outcome,
        now: Timestamp,
    ) -> Result<(), FixedIpError> {
        let err = |what: &str| Self::kube_err(namespace, name, what);
        match o {
            Outcome::Reserved {
                pod,
                ordinal,
                ip,
                subnet_id,
                zone,
                eni,
            } => {
                let mut f = FixedIP::new(
                    pod,
                    FixedIPSpec {
                        ip: ip.to_string(),
                        stateful_set: name.to_owned(),
                        ordinal: *ordinal,
                        zone: Some(zone.clone()),
                        subnet_id: Some(subnet_id.clone()),
                        reclaim_policy: sts.map(|s| s.reclaim).unwrap_or_default(),
                        ttl_seconds: sts.and_then(|s| s.ttl_seconds),
                    },
                );
                f.metadata.labels = Some(BTreeMap::from([(
                    LABEL_STATEFULSET.to_owned(),
                    name.to_owned(),
                )]));
                fips.create(
                    &PostParams {
                        field_manager: Some(FIELD_MANAGER_FIXED_IP.to_owned()),
                        ..PostParams::default()
                    },
                    &f,
                )
                .await
                .map_err(err(&format!("FixedIP {pod}")))?;
                let mut s = status_after(&FixedIPStatus::default(), o, None);
                set_condition(
                    &mut s.conditions,
                    condition(
                        "Placed",
                        true,
                        "Reserved",
                        format!("{ip} reserved in {subnet_id} ({zone}) on {eni}"),
                        None,
                        now,
                    ),
                );
                // Not guarded: nothing was read; the status records what
                // was just done to the object just created.
                fips.patch_status(pod, &pp(), &Patch::Merge(&json!({ "status": s })))
                    .await
                    .map_err(err(&format!("FixedIP {pod} status")))?;
                info!(%pod, %ip, subnet = %subnet_id, "fixed IP reserved");
                self.event(
                    namespace,
                    pod,
                    "Reserved",
                    format!("{ip} reserved in {subnet_id} ({zone})"),
                    false,
                )
                .await;
            }
            Outcome::Moved { pod, ip, node, eni } => {
                let old = by_name
                    .get(pod)
                    .and_then(|f| f.status.clone())
                    .unwrap_or_default();
                // The new node named the pod before the cloud step
                // (`claims`). The FixedIP's status is the commit and goes
                // last: until it says `node`, every reconcile plans this
                // move again (the cloud step is idempotent) and redoes the
                // node writes, so a failed or refused write here is retried,
                // never lost. The old node gives the address up now that
                // the cloud took it away, in one write, so no resync of it
                // puts the address back in its pool without its entry.
                if let Some((from, ip)) = gives_up(o, &old) {
                    self.node_lost_fixed_ip(from, ip)
                        .await
                        .map_err(err(&format!("NodeNetwork {from}")))?;
                }
                // The address is on the new node's ENI now. Its node IPAM
                // lists it in the pool (guarded by the fixedIps entry
                // `claims` wrote) only when it resyncs the instance: asked
                // for here, the reconcile this write triggers does it within
                // seconds, instead of the next full resync (5 minutes by
                // default) while the pod's CNI ADD waits for the address.
                self.node_resync(node)
                    .await
                    .map_err(err(&format!("NodeNetwork {node}")))?;
                let mut s = status_after(&old, o, uid_of.get(pod.as_str()).copied());
                set_condition(
                    &mut s.conditions,
                    condition(
                        "Placed",
                        true,
                        "Moved",
                        format!("{ip} moved to {eni} on node {node}"),
                        None,
                        now,
                    ),
                );
                let patch = status_patch_over(by_name.get(pod).copied(), &s);
                fips.patch_status(pod, &pp(), &Patch::Merge(&patch))
                    .await
                    .map_err(err(&format!("FixedIP {pod} status")))?;
                info!(%pod, %ip, %node, %eni, from = ?old.node, "fixed IP moved");
                let from = old
                    .node
                    .as_deref()
                    .map_or(String::new(), |n| format!(" from node {n}"));
                self.event(
                    namespace,
                    pod,
                    "Moved",
                    format!("{ip} moved{from} to {eni} on node {node}"),
                    false,
                )
                .await;
            }
            Outcome::Parked { pod, ip, eni } => {
                let old = by_name
                    .get(pod)
                    .and_then(|f| f.status.clone())
                    .unwrap_or_default();
                let mut s = status_after(&old, o, None);
                set_condition(
                    &mut s.conditions,
                    condition(
                        "Placed",
                        true,
                        "Parked",
                        format!(
                            "node {} is gone; {ip} parked on {eni}",
                            old.node.as_deref().unwrap_or("?")
                        ),
                        None,
                        now,
                    ),
                );
                let patch = status_patch_over(by_name.get(pod).copied(), &s);
                fips.patch_status(pod, &pp(), &Patch::Merge(&patch))
                    .await
                    .map_err(err(&format!("FixedIP {pod} status")))?;
                info!(%pod, %ip, %eni, "fixed IP parked");
                self.event(
                    namespace,
                    pod,
                    "Parked",
                    format!(
                        "node {} is gone; {ip} parked on {eni}",
                        old.node.as_deref().unwrap_or("?")
                    ),
                    true,
                )
                .await;
            }
            Outcome::Released { pod, ip } => {
                let old = by_name
                    .get(pod)
                    .and_then(|f| f.status.clone())
                    .unwrap_or_default();
                match fips.delete(pod, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    Err(e) => return Err(err(&format!("FixedIP {pod}"))(e)),
                }
                if let Some((from, ip)) = gives_up(o, &old) {
                    // Unassigned in the cloud: out of the node's pool with
                    // its fixedIps entry, or its agent would hand it out.
                    self.node_lost_fixed_ip(from, ip)
                        .await
                        .map_err(err(&format!("NodeNetwork {from}")))?;
                }
                info!(%pod, %ip, "fixed IP released");
                self.event(
                    namespace,
                    pod,
                    "Released",
                    format!("{ip} given back to its subnet"),
                    false,
                )
                .await;
            }
        }
        Ok(())
    }

    /// Publishes an Event on FixedIP `namespace/pod` explaining a decision;
    /// a failed publish is logged, never fatal.
    async fn event(&self, namespace: &str, pod: &str, reason: &str, note: String, warning: bool) {
        let reference = ObjectReference {
            api_version: Some("sextant.io/v1alpha1".into()),
            kind: Some("FixedIP".into()),
            name: Some(pod.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectReference::default()
        };
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: reason.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(%pod, error = %e, "publishing an event failed");
        }
    }

    /// Takes fixed IP `ip` off NodeNetwork `node` once it left the node's
    /// ENI ([`make_moved_off_patch`]): read, then a patch guarded by that
    /// read, read again on a conflict (the agent reports often). A node
    /// whose NodeNetwork is gone has nothing to give up.
    async fn node_lost_fixed_ip(
        &self,
        node: &str,
        ip: std::net::Ipv4Addr,
    ) -> Result<(), kube::Error> {
        let api: Api<NodeNetwork> = Api::all(self.client.clone());
        let mut attempt = 1;
        loop {
            let Some(read) = api.get_opt(node).await? else {
                debug!(%node, %ip, "NodeNetwork gone: nothing to take the fixed IP off");
                return Ok(());
            };
            let Some(patch) = make_moved_off_patch(&read, ip) else {
                return Ok(());
            };
            match api.patch_status(node, &pp(), &Patch::Merge(&patch)).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
                Err(e) if crate::apiserver::is_conflict(&e) && attempt < MOVED_OFF_ATTEMPTS => {
                    debug!(%node, %ip, attempt, "NodeNetwork changed since read; reading again");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Clears a NodeNetwork's `status.lastResync`, so node IPAM resyncs the
    /// instance from the cloud at its next reconcile. A node that is gone
    /// has nothing to resync.
    async fn node_resync(&self, node: &str) -> Result<(), kube::Error> {
        let api: Api<NodeNetwork> = Api::all(self.client.clone());
        let patch = serde_json::json!({ "status": { "lastResync": null } });
        match api.patch_status(node, &pp(), &Patch::Merge(&patch)).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets (`Some(owner)`) or removes (`None`) one entry of a NodeNetwork's
    /// `status.fixedIps` ([`fixed_ip_entry_patch`]). Not guarded by a
    /// resourceVersion: the entry is decided from the FixedIP and the step
    /// at hand, not from the NodeNetwork's status; a guard would be refused
    /// at every agent usage report.
    async fn node_fixed_ip(
        &self,
        node: &str,
        ip: std::net::Ipv4Addr,
        owner: Option<&str>,
    ) -> Result<(), kube::Error> {
        let api: Api<NodeNetwork> = Api::all(self.client.clone());
        api.patch_status(node, &pp(), &Patch::Merge(&fixed_ip_entry_patch(ip, owner)))
            .await?;
        Ok(())
    }
}

/// The watch caches the controller reads, and the loop that drives it.
pub mod watch {
    use std::{collections::BTreeSet, sync::Arc, time::Duration};

    use futures::StreamExt;
    use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
    use kube::{
        Api, Client, ResourceExt,
        runtime::{WatchStreamExt, reflector, watcher},
    };
    use sextant_cloud::EniCloud;
    use sextant_crds::{FixedIP, NodeNetwork, wellknown::LABEL_STATEFULSET};
    use tokio::sync::mpsc;
    use tracing::{debug, info, warn};

    use super::{
        FixedIpController, LABEL_POD_NAME, Observed, node_views, pod_views, statefulset_view,
    };
    use sextant_kit::ErrorChain;

    type Key = (String, String);

    /// Keeps `writer`'s store filled from a watch of `api` and sends the
    /// StatefulSet key of every object added, changed or deleted.
    async fn watch_keys<K>(
        api: Api<K>,
        config: watcher::Config,
        writer: reflector::store::Writer<K>,
        key_of: impl Fn(&K) -> Option<Key> + Send + 'static,
        tx: mpsc::UnboundedSender<Key>,
    ) where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        K::DynamicType: Eq + std::hash::Hash + Clone + Default,
    {
        reflector(writer, watcher(api, config))
            .touched_objects()
            .for_each(move |r| {
                if let Ok(o) = r
                    && let Some(k) = key_of(&o)
                {
                    let _ = tx.send(k);
                }
                futures::future::ready(())
            })
            .await;
    }

    /// How many ticks apart the orphan sweep runs, which is also its grace:
    /// 5 minutes at the operator's 30 s tick. A Reserve's FixedIP create
    /// follows its parking within the same pass; the grace covers a create
    /// still in flight in another replica, or shown late by the API server.
    pub const PARKING_SWEEP_TICKS: u32 = 10;

    /// Runs the FixedIP controller until the watches end: every change to a
    /// StatefulSet, one of its pods or FixedIPs marks it dirty; every `tick`
    /// all of them are looked at (retention TTLs expire without events).
    /// Every [`PARKING_SWEEP_TICKS`] ticks, after a pass, parked addresses no
    /// FixedIP has named for as long are given back
    /// ([`FixedIpController::sweep_parking`]).
    pub async fn run(
        ctl: Arc<FixedIpController>,
        cloud: Arc<dyn EniCloud>,
        vpc_id: String,
        tick: Duration,
    ) {
        let client: Client = ctl.client.clone();
        let (sts_r, sts_w) = reflector::store::<StatefulSet>();
        let (pod_r, pod_w) = reflector::store::<Pod>();
        let (fip_r, fip_w) = reflector::store::<FixedIP>();
        let (nn_r, nn_w) = reflector::store::<NodeNetwork>();
        let (dirty_tx, mut dirty_rx) = mpsc::unbounded_channel::<Key>();

        let key_of_sts = |s: &StatefulSet| Some((s.namespace()?, s.name_any()));
        let key_of_pod = |p: &Pod| {
            let owner = p
                .owner_references()
                .iter()
                .find(|o| o.kind == "StatefulSet")?;
            Some((p.namespace()?, owner.name.clone()))
        };
        let key_of_fip =
            |f: &FixedIP| Some((f.namespace()?, f.labels().get(LABEL_STATEFULSET)?.clone()));

        let sts_events = watch_keys(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
            sts_w,
            key_of_sts,
            dirty_tx.clone(),
        );
        let pod_events = watch_keys(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default().labels(LABEL_POD_NAME),
            pod_w,
            key_of_pod,
            dirty_tx.clone(),
        );
        let fip_events = watch_keys(
            Api::<FixedIP>::all(client.clone()),
            watcher::Config::default(),
            fip_w,
            key_of_fip,
            dirty_tx.clone(),
        );
        // NodeNetworks only feed the cache: a node's change matters to the
        // StatefulSets whose pods it runs, which their own events bring.
        let nn_events = watch_keys(
            Api::<NodeNetwork>::all(client.clone()),
            watcher::Config::default(),
            nn_w,
            |_: &NodeNetwork| None,
            dirty_tx,
        );

        let sweep_every = tick.saturating_mul(PARKING_SWEEP_TICKS);
        let worker = async move {
            let mut ticker = tokio::time::interval(tick);
            let mut last_sweep: Option<tokio::time::Instant> = None;
            loop {
                let mut keys = BTreeSet::new();
                tokio::select! {
                    Some(k) = dirty_rx.recv() => { keys.insert(k); }
                    _ = ticker.tick() => {
                        keys.extend(sts_r.state().iter().filter_map(|s| key_of_sts(s)));
                        keys.extend(fip_r.state().iter().filter_map(|f| key_of_fip(f)));
                    }
                }
                // Take whatever else piled up: one pass per StatefulSet.
                while let Ok(k) = dirty_rx.try_recv() {
                    keys.insert(k);
                }
                let subnets = match cloud.subnets(&vpc_id).await {
                    Ok(s) => s,
                    Err(e) => {
                        warn!(error = %ErrorChain(&e), "listing subnets failed; retrying next tick");
                        continue;
                    }
                };
                let nodes_state = nn_r.state();
                let nodes = node_views(nodes_state.iter().map(|n| n.as_ref()));
                for (ns, name) in keys {
                    let sts = sts_r.state().into_iter().find(|s| {
                        s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == name
                    });
                    let view = match sts.as_deref().map(statefulset_view).transpose() {
                        Ok(v) => v.flatten(),
                        Err(e) => {
                            warn!(statefulset = %format!("{ns}/{name}"), error = %e, "fixed-IP annotations ignored");
                            continue;
                        }
                    };
                    let fixed: Vec<FixedIP> = fip_r
                        .state()
                        .iter()
                        .filter(|f| {
                            f.namespace().as_deref() == Some(ns.as_str())
                                && key_of_fip(f).is_some_and(|k| k.1 == name)
                        })
                        .map(|f| f.as_ref().clone())
                        .collect();
                    if view.is_none() && fixed.is_empty() {
                        continue;
                    }
                    let pods_state = pod_r.state();
                    let pods = pod_views(
                        &name,
                        pods_state
                            .iter()
                            .filter(|p| p.namespace().as_deref() == Some(ns.as_str()))
                            .map(|p| p.as_ref()),
                    );
                    let observed = Observed {
                        statefulset: view.as_ref(),
                        fixed,
                        pods,
                        nodes: nodes.clone(),
                        subnets: &subnets,
                    };
                    match ctl
                        .reconcile_statefulset(&ns, &name, observed, jiff::Timestamp::now())
                        .await
                    {
                        Ok(steps) => {
                            debug!(statefulset = %format!("{ns}/{name}"), steps = steps.len(), "fixed IPs reconciled")
                        }
                        // Its watch event brings the key back, the cache then fresh.
                        Err(e) if e.is_conflict() => {
                            debug!(error = %ErrorChain(&e), "FixedIP changed since read; again on its event")
                        }
                        Err(e) => {
                            warn!(error = %ErrorChain(&e), kind = e.metric_label(), "fixed IPs reconcile failed")
                        }
                    }
                }
                // After the pass: what it parked, its FixedIP creates name.
                if last_sweep.is_none_or(|t| t.elapsed() >= sweep_every) {
                    last_sweep = Some(tokio::time::Instant::now());
                    match ctl.sweep_parking(jiff::Timestamp::now(), sweep_every).await {
                        Ok(r) if !r.released.is_empty() || r.waiting > 0 => {
                            info!(
                                released = r.released.len(),
                                waiting = r.waiting,
                                "parking swept"
                            )
                        }
                        Ok(_) => debug!("parking swept: no orphans"),
                        Err(e) => {
                            warn!(error = %ErrorChain(&e), kind = e.metric_label(), "parking sweep failed; again next sweep")
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = sts_events => warn!("StatefulSet watch ended"),
            () = pod_events => warn!("Pod watch ended"),
            () = fip_events => warn!("FixedIP watch ended"),
            () = nn_events => warn!("NodeNetwork watch ended"),
            () = worker => {},
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
    use sextant_cloud::{
        AssignIps, CreateEni, Tags,
        sim::{SimCloud, SimConfig, SimProvider},
    };
    use sextant_crds::{FixedIPPhase, ReclaimPolicy};

    use super::*;
    use sextant_kit::testing::{finish, mock_client};

    const NOW: &str = "2026-11-25T12:00:00Z";

    /// What the API server answers for a FixedIP write.
    fn fip_reply() -> Value {
        json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIP",
            "metadata": { "name": "web-0", "namespace": "db" },
            "spec": { "ip": "10.0.0.9", "statefulSet": "web", "ordinal": 0 },
        })
    }

    /// What the API server answers for a NodeNetwork status write.
    fn nn_reply(name: &str) -> Value {
        json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
            "metadata": { "name": name },
            "spec": { "provider": "aws" },
        })
    }

    fn sim() -> (Arc<SimCloud>, String) {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 3)));
        let subnet = sim
            .add_subnet("vpc-1", "a", "10.0.0.0/24", Tags::new())
            .unwrap();
        (sim, subnet)
    }

    fn sts_view() -> StatefulSetView {
        StatefulSetView {
            namespace: "db".into(),
            name: "web".into(),
            replicas: 1,
            reclaim: ReclaimPolicy::Retain,
            ttl_seconds: None,
            subnet_ids: vec![],
        }
    }

    #[tokio::test]
    async fn a_new_ordinal_gets_a_parked_address_and_a_fixed_ip_object() {
        let (sim, _) = sim();
        let subnets = sim.subnets("vpc-1").await.unwrap();
        let (client, mut server) = mock_client();
        let ctl = FixedIpController::new(client, sim.clone(), "test", "vpc-1");
        let view = sts_view();
        let script = tokio::spawn(async move {
            let created = server
                .expect(
                    Method::POST,
                    "/apis/sextant.io/v1alpha1/namespaces/db/fixedips?&fieldManager=sextant-fixed-ip",
                    201,
                    fip_reply(),
                )
                .await;
            let status = server
                .expect(
                    Method::PATCH,
                    "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/web-0/status?&fieldManager=sextant-fixed-ip",
                    200,
                    fip_reply(),
                )
                .await;
            let event = server.expect_event("db").await;
            server.expect_no_more().await;
            (created, status, event)
        });
        let steps = ctl
            .reconcile_statefulset(
                "db",
                "web",
                Observed {
                    statefulset: Some(&view),
                    fixed: vec![],
                    pods: vec![],
                    nodes: BTreeMap::new(),
                    subnets: &subnets,
                },
                NOW.parse().unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(ctl.metrics().steps("reserve"), 1);
        drop(ctl);
        let (created, status, event) = finish(script).await;
        assert_eq!(event.body["reason"], "Reserved");
        assert_eq!(event.body["regarding"]["kind"], "FixedIP");
        assert_eq!(event.body["regarding"]["name"], "web-0");
        assert_eq!(steps.len(), 1);
        let ip = created.body["spec"]["ip"].as_str().unwrap().to_owned();
        assert_eq!(created.body["metadata"]["name"], "web-0");
        assert_eq!(created.body["metadata"]["labels"][LABEL_STATEFULSET], "web");
        assert_eq!(created.body["spec"]["statefulSet"], "web");
        assert_eq!(created.body["spec"]["zone"], "a");
        assert_eq!(
            status.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        assert_eq!(status.body["status"]["phase"], "Reserved");
        assert!(
            status.body.get("metadata").is_none(),
            "nothing was read: no precondition"
        );
        // The address is held in the cloud, on a parking ENI nobody collects.
        let parking: Vec<_> = sim
            .all_enis()
            .into_iter()
            .filter(|e| {
                e.tags.get(sextant_cloud::TAG_ROLE).map(String::as_str)
                    == Some(sextant_cloud::ROLE_PARKING)
            })
            .collect();
        assert_eq!(parking.len(), 1);
        assert_eq!(
            parking[0]
                .secondary_ips
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![ip]
        );
        assert_eq!(status.body["status"]["eni"], parking[0].id.as_str());
    }

    fn nn(name: &str, instance: &str, enis: Vec<sextant_crds::EniStatus>) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            name,
            sextant_crds::NodeNetworkSpec {
                provider: sextant_crds::Provider::Aws,
                instance_id: Some(instance.into()),
                instance_type: Some("m5.large".into()),
                zone: Some("a".into()),
                vpc_id: Some("vpc-1".into()),
                ipam: Default::default(),
                pod_cidrs: vec![],
            },
        );
        nn.status = Some(sextant_crds::NodeNetworkStatus {
            enis,
            summary: Some(sextant_crds::PoolSummary {
                max_enis: 3,
                ipv4_per_eni: 10,
                ..Default::default()
            }),
            ..Default::default()
        });
        nn
    }

    #[tokio::test]
    async fn a_rescheduled_pod_moves_its_address_and_both_node_networks_learn_it() {
        let (sim, subnet) = sim();
        let subnets = sim.subnets("vpc-1").await.unwrap();
        let mut enis = BTreeMap::new();
        for node in ["n1", "n2"] {
            let instance = sim.add_instance("m5.large", &subnet).unwrap();
            let e = sim
                .create_eni(&CreateEni {
                    subnet_id: subnet.clone(),
                    security_groups: vec![],
                    tags: Tags::new(),
                    secondary_ips: 0,
                    description: String::new(),
                })
                .await
                .unwrap();
            sim.attach_eni(&e.id, &instance, 1).await.unwrap();
            enis.insert(node, (instance, e.id));
        }
        let ip = sim
            .assign_ips(&enis["n1"].1, &AssignIps::Count(1))
            .await
            .unwrap()[0];
        let eni_status = |node: &str| {
            vec![sextant_crds::EniStatus {
                id: enis[node].1.clone(),
                subnet_id: subnet.clone(),
                device_index: 1,
                mac: None,
                primary_ip: None,
                addresses: vec![],
                security_groups: vec![],
                excluded: false,
            }]
        };
        let nodes = node_views(&[
            nn("n1", &enis["n1"].0, eni_status("n1")),
            nn("n2", &enis["n2"].0, eni_status("n2")),
        ]);
        let mut f = FixedIP::new(
            "web-0",
            FixedIPSpec {
                ip: ip.to_string(),
                stateful_set: "web".into(),
                ordinal: 0,
                zone: Some("a".into()),
                subnet_id: Some(subnet.clone()),
                reclaim_policy: ReclaimPolicy::Retain,
                ttl_seconds: None,
            },
        );
        f.metadata.namespace = Some("db".into());
        f.metadata.resource_version = Some("12".into());
        f.status = Some(FixedIPStatus {
            phase: Some(FixedIPPhase::Bound),
            node: Some("n1".into()),
            eni: Some(enis["n1"].1.clone()),
            pod_uid: Some("old".into()),
            ..Default::default()
        });
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("db".into()),
                uid: Some("new".into()),
                owner_references: Some(vec![OwnerReference {
                    kind: "StatefulSet".into(),
                    name: "web".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some("n2".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let pods = pod_views("web", [&pod]);
        let (client, mut server) = mock_client();
        let ctl = FixedIpController::new(client, sim.clone(), "test", "vpc-1");
        let view = sts_view();
        let ip_s = ip.to_string();
        // n1 as the API server has it: the address on its ENI, in its pool,
        // guarded by fixedIps, beside an ordinary pool address.
        let mut n1 = nn("n1", &enis["n1"].0, eni_status("n1"));
        n1.metadata.resource_version = Some("40".into());
        if let Some(st) = n1.status.as_mut() {
            st.enis[0].addresses = vec![ip.to_string(), "10.0.0.200".into()];
            st.pool = [ip.to_string(), "10.0.0.200".into()]
                .into_iter()
                .map(|a| {
                    (
                        a,
                        sextant_crds::PoolEntry {
                            eni: enis["n1"].1.clone(),
                        },
                    )
                })
                .collect();
            st.fixed_ips = BTreeMap::from([(ip.to_string(), "db/web-0".into())]);
        }
        let n1_read = serde_json::to_value(&n1).unwrap();
        let cloud = sim.clone();
        let n2_eni = enis["n2"].1.clone();
        let script = tokio::spawn(async move {
            // n2 names the pod while the cloud still has the address on n1:
            // no resync of n2 can pool it unguarded.
            let to = server
                .expect(Method::PATCH, "/apis/sextant.io/v1alpha1/nodenetworks/n2/status?&fieldManager=sextant-fixed-ip", 200, nn_reply("n2"))
                .await;
            let on_n2_when_named = cloud
                .all_enis()
                .iter()
                .any(|e| e.id == n2_eni && e.secondary_ips.contains(&ip));
            server
                .expect(
                    Method::GET,
                    "/apis/sextant.io/v1alpha1/nodenetworks/n1",
                    200,
                    n1_read,
                )
                .await;
            let from = server
                .expect(Method::PATCH, "/apis/sextant.io/v1alpha1/nodenetworks/n1/status?&fieldManager=sextant-fixed-ip", 200, nn_reply("n1"))
                .await;
            // n2's IPAM is asked to resync: the moved address reaches its
            // pool now, not at the next full resync.
            let resync = server
                .expect(Method::PATCH, "/apis/sextant.io/v1alpha1/nodenetworks/n2/status?&fieldManager=sextant-fixed-ip", 200, nn_reply("n2"))
                .await;
            assert_eq!(resync.body, json!({ "status": { "lastResync": null } }));
            let fip = server
                .expect(
                    Method::PATCH,
                    "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/web-0/status?&fieldManager=sextant-fixed-ip",
                    200,
                    fip_reply(),
                )
                .await;
            let event = server.expect_event("db").await;
            server.expect_no_more().await;
            (fip, from, (to, on_n2_when_named), event)
        });
        ctl.reconcile_statefulset(
            "db",
            "web",
            Observed {
                statefulset: Some(&view),
                fixed: vec![f],
                pods,
                nodes,
                subnets: &subnets,
            },
            NOW.parse().unwrap(),
        )
        .await
        .unwrap();
        drop(ctl);
        let (fip, from, (to, on_n2_when_named), event) = finish(script).await;
        assert!(
            !on_n2_when_named,
            "n2's fixedIps names the pod before the cloud moves the address onto its ENI"
        );
        assert_eq!(event.body["reason"], "Moved");
        assert!(
            event.body["note"]
                .as_str()
                .is_some_and(|n| n.contains("from node n1") && n.contains("on node n2")),
            "{}",
            event.body["note"]
        );
        assert_eq!(
            fip.body["metadata"],
            json!({ "resourceVersion": "12" }),
            "the move was decided on version 12 of the FixedIP"
        );
        assert_eq!(fip.body["status"]["phase"], "Bound");
        assert_eq!(fip.body["status"]["node"], "n2");
        assert_eq!(
            fip.body["status"]["podUid"], "new",
            "the new pod's UID is recorded, the address kept"
        );
        assert_eq!(
            from.body,
            json!({
                "metadata": { "resourceVersion": "40" },
                "status": {
                    "fixedIps": { ip_s.clone(): null },
                    "pool": { ip_s.clone(): null },
                    "enis": [{
                        "id": enis["n1"].1.clone(),
                        "subnetId": subnet.clone(),
                        "deviceIndex": 1,
                        "addresses": ["10.0.0.200"],
                    }],
                },
            }),
            "the old node gives the address up whole, guarded by the version read"
        );
        assert_eq!(
            to.body,
            json!({ "status": { "fixedIps": { ip_s.clone(): "db/web-0" } } })
        );
        // In the cloud the address now sits on n2's ENI and nowhere else.
        let holders: Vec<_> = sim
            .all_enis()
            .into_iter()
            .filter(|e| e.secondary_ips.contains(&ip))
            .map(|e| e.id)
            .collect();
        assert_eq!(holders, vec![enis["n2"].1.clone()]);
    }

    #[test]
    fn a_node_gives_up_a_fixed_ip_from_fixed_ips_pool_and_its_eni_in_one_guarded_write() {
        let eni = |addresses: &[&str]| sextant_crds::EniStatus {
            id: "eni-1".into(),
            subnet_id: "s".into(),
            device_index: 1,
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        };
        let ip: std::net::Ipv4Addr = "10.0.0.9".parse().unwrap();
        let mut read = nn("n1", "i-1", vec![eni(&["10.0.0.9", "10.0.0.10"])]);
        read.metadata.resource_version = Some("7".into());
        if let Some(st) = read.status.as_mut() {
            st.pool = ["10.0.0.9", "10.0.0.10"]
                .into_iter()
                .map(|a| {
                    (
                        a.to_owned(),
                        sextant_crds::PoolEntry {
                            eni: "eni-1".into(),
                        },
                    )
                })
                .collect();
            st.fixed_ips = BTreeMap::from([("10.0.0.9".into(), "db/web-0".into())]);
        }
        assert_eq!(
            make_moved_off_patch(&read, ip),
            Some(json!({
                "metadata": { "resourceVersion": "7" },
                "status": {
                    "fixedIps": { "10.0.0.9": null },
                    "pool": { "10.0.0.9": null },
                    "enis": [{ "id": "eni-1", "subnetId": "s", "deviceIndex": 1, "addresses": ["10.0.0.10"] }],
                },
            }))
        );
        // Only what the status still has goes; nothing at all: no write.
        let mut pool_only = read.clone();
        if let Some(st) = pool_only.status.as_mut() {
            st.fixed_ips.clear();
            st.enis = vec![eni(&["10.0.0.10"])];
        }
        assert_eq!(
            make_moved_off_patch(&pool_only, ip),
            Some(json!({
                "metadata": { "resourceVersion": "7" },
                "status": { "pool": { "10.0.0.9": null } },
            }))
        );
        assert_eq!(
            make_moved_off_patch(&read, "10.0.0.77".parse().unwrap()),
            None
        );
        assert_eq!(make_moved_off_patch(&nn("n2", "i-2", vec![]), ip), None);
        let mut no_status = read.clone();
        no_status.status = None;
        assert_eq!(make_moved_off_patch(&no_status, ip), None);
    }

    #[tokio::test]
    async fn taking_a_fixed_ip_off_a_node_reads_again_after_a_conflict_and_a_gone_node_is_done() {
        let (sim, _) = sim();
        let (client, mut server) = mock_client();
        let ctl = FixedIpController::new(client, sim, "test", "vpc-1");
        let mut read = nn("n1", "i-1", vec![]);
        if let Some(st) = read.status.as_mut() {
            st.fixed_ips = BTreeMap::from([("10.0.0.9".into(), "db/web-0".into())]);
        }
        let versions = |rv: &str| {
            let mut r = read.clone();
            r.metadata.resource_version = Some(rv.into());
            serde_json::to_value(&r).unwrap()
        };
        let (first, second) = (versions("1"), versions("2"));
        let script = tokio::spawn(async move {
            let path =
                "/apis/sextant.io/v1alpha1/nodenetworks/n1/status?&fieldManager=sextant-fixed-ip";
            server
                .expect(
                    Method::GET,
                    "/apis/sextant.io/v1alpha1/nodenetworks/n1",
                    200,
                    first,
                )
                .await;
            let refused = server
                .expect(
                    Method::PATCH,
                    path,
                    409,
                    sextant_kit::testing::status_failure(409, "Conflict"),
                )
                .await;
            server
                .expect(
                    Method::GET,
                    "/apis/sextant.io/v1alpha1/nodenetworks/n1",
                    200,
                    second,
                )
                .await;
            let written = server
                .expect(Method::PATCH, path, 200, nn_reply("n1"))
                .await;
            // A node whose NodeNetwork went with it: nothing to write.
            server
                .expect(
                    Method::GET,
                    "/apis/sextant.io/v1alpha1/nodenetworks/gone",
                    404,
                    sextant_kit::testing::status_failure(404, "NotFound"),
                )
                .await;
            server.expect_no_more().await;
            (refused, written)
        });
        ctl.node_lost_fixed_ip("n1", "10.0.0.9".parse().unwrap())
            .await
            .unwrap();
        ctl.node_lost_fixed_ip("gone", "10.0.0.9".parse().unwrap())
            .await
            .unwrap();
        drop(ctl);
        let (refused, written) = finish(script).await;
        assert_eq!(refused.body["metadata"]["resourceVersion"], "1");
        assert_eq!(written.body["metadata"]["resourceVersion"], "2");
        assert_eq!(
            written.body["status"]["fixedIps"],
            json!({ "10.0.0.9": null })
        );
    }

    fn fip_list(ips: &[String]) -> Value {
        let items: Vec<Value> = ips
            .iter()
            .map(|ip| {
                json!({
                    "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIP",
                    "metadata": { "name": "web-1", "namespace": "db" },
                    "spec": { "ip": ip, "statefulSet": "web", "ordinal": 1 },
                })
            })
            .collect();
        json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIPList",
            "metadata": { "resourceVersion": "5" }, "items": items,
        })
    }

    const FIXED_IPS: &str = "/apis/sextant.io/v1alpha1/fixedips?";

    #[tokio::test]
    async fn a_parked_address_whose_fixed_ip_create_failed_is_given_back_after_the_grace() {
        let (sim, _) = sim();
        let subnets = sim.subnets("vpc-1").await.unwrap();
        let (client, mut server) = mock_client();
        let ctl = FixedIpController::new(client, sim.clone(), "test", "vpc-1");
        let view = sts_view();
        let grace = std::time::Duration::from_secs(300);
        let t0: Timestamp = NOW.parse().unwrap();
        let later = t0
            .checked_add(jiff::SignedDuration::from_secs(300))
            .unwrap();
        let script = tokio::spawn(async move {
            // web-0's create is refused after its address was parked.
            let refused = server
                .expect(
                    Method::POST,
                    "/apis/sextant.io/v1alpha1/namespaces/db/fixedips?&fieldManager=sextant-fixed-ip",
                    500,
                    sextant_kit::testing::status_failure(500, "InternalError"),
                )
                .await;
            let lost = refused.body["spec"]["ip"].as_str().unwrap().to_owned();
            // First sweep: web-0's address is seen orphaned, not given back.
            server
                .expect(Method::GET, FIXED_IPS, 200, fip_list(&[]))
                .await;
            // A failed list: no sweep at all.
            server
                .expect(
                    Method::GET,
                    FIXED_IPS,
                    503,
                    sextant_kit::testing::status_failure(503, "ServiceUnavailable"),
                )
                .await;
            // A grace later, a FixedIP names another parked address.
            server
                .expect(Method::GET, FIXED_IPS, 200, fip_list(&["10.0.0.99".into()]))
                .await;
            server.expect_no_more().await;
            lost
        });
        let err = ctl
            .reconcile_statefulset(
                "db",
                "web",
                Observed {
                    statefulset: Some(&view),
                    fixed: vec![],
                    pods: vec![],
                    nodes: BTreeMap::new(),
                    subnets: &subnets,
                },
                t0,
            )
            .await
            .unwrap_err();
        assert_eq!(err.metric_label(), "kube");
        let parked = |sim: &SimCloud| -> Vec<std::net::Ipv4Addr> {
            sim.all_enis()
                .into_iter()
                .filter(|e| {
                    e.tags.get(sextant_cloud::TAG_ROLE).map(String::as_str)
                        == Some(sextant_cloud::ROLE_PARKING)
                })
                .flat_map(|e| e.secondary_ips)
                .collect()
        };
        assert_eq!(
            parked(&sim).len(),
            1,
            "the refused create left its address parked"
        );
        // web-1's FixedIP names an address parked too (by an earlier pass).
        let eni = sim
            .all_enis()
            .into_iter()
            .find(|e| e.tags.contains_key(sextant_cloud::TAG_ROLE))
            .unwrap();
        sim.assign_ips(
            &eni.id,
            &AssignIps::Specific {
                ips: vec!["10.0.0.99".parse().unwrap()],
                allow_reassignment: false,
            },
        )
        .await
        .unwrap();

        let first = ctl.sweep_parking(t0, grace).await.unwrap();
        assert_eq!((first.released.len(), first.waiting), (0, 2));
        let failed = ctl.sweep_parking(later, grace).await.unwrap_err();
        assert!(
            matches!(failed, FixedIpError::SweepList { .. }),
            "{failed:?}"
        );
        assert_eq!(ctl.metrics().errors("kube"), 2, "the create, then the list");
        assert_eq!(parked(&sim).len(), 2, "nothing given back without the list");
        let due = ctl.sweep_parking(later, grace).await.unwrap();
        assert_eq!(ctl.metrics().parking_released_total(), 1);
        drop(ctl);
        let lost: std::net::Ipv4Addr = finish(script).await.parse().unwrap();
        assert_eq!(due.released, vec![(eni.id.clone(), lost)]);
        assert_eq!(due.waiting, 0);
        assert_eq!(
            parked(&sim),
            vec!["10.0.0.99".parse::<std::net::Ipv4Addr>().unwrap()],
            "the orphan went back to the subnet; the named address stays"
        );
    }

    #[test]
    fn a_fixed_ip_status_patch_is_guarded_by_the_version_it_was_decided_on() {
        let mut f = FixedIP::new(
            "web-0",
            FixedIPSpec {
                ip: "10.0.0.9".into(),
                stateful_set: "web".into(),
                ordinal: 0,
                zone: None,
                subnet_id: None,
                reclaim_policy: ReclaimPolicy::Retain,
                ttl_seconds: None,
            },
        );
        let status = FixedIPStatus {
            phase: Some(FixedIPPhase::Reserved),
            ..Default::default()
        };
        assert_eq!(
            make_fixed_ip_status_patch(&f, &status),
            json!({ "status": { "phase": "Reserved" } }),
            "no version, no guard"
        );
        f.metadata.resource_version = Some("31".into());
        assert_eq!(
            make_fixed_ip_status_patch(&f, &status),
            json!({
                "metadata": { "resourceVersion": "31" },
                "status": { "phase": "Reserved" },
            })
        );
        assert_eq!(
            status_patch_over(Some(&f), &status)["metadata"]["resourceVersion"],
            "31"
        );
        assert!(status_patch_over(None, &status).get("metadata").is_none());
    }

    /// Runs a retention whose status write the API server answers `code`.
    async fn retention_answered(code: u16, reason: &'static str) -> (FixedIpError, u64, u64) {
        let (sim, subnet) = sim();
        let subnets = sim.subnets("vpc-1").await.unwrap();
        let mut f = FixedIP::new(
            "web-0",
            FixedIPSpec {
                ip: "10.0.0.9".into(),
                stateful_set: "web".into(),
                ordinal: 0,
                zone: Some("a".into()),
                subnet_id: Some(subnet),
                reclaim_policy: ReclaimPolicy::Retain,
                ttl_seconds: Some(60),
            },
        );
        f.metadata.namespace = Some("db".into());
        f.metadata.resource_version = Some("20".into());
        f.status = Some(FixedIPStatus {
            phase: Some(FixedIPPhase::Bound),
            node: Some("n1".into()),
            eni: Some("eni-1".into()),
            ..Default::default()
        });
        let nodes = node_views(&[nn("n1", "i-1", vec![])]);
        // Scaled to zero: ordinal 0 is retained for its TTL, a status-only step.
        let view = StatefulSetView {
            replicas: 0,
            ..sts_view()
        };
        let (client, mut server) = mock_client();
        let ctl = FixedIpController::new(client, sim.clone(), "test", "vpc-1");
        let script = tokio::spawn(async move {
            let seen = server
                .expect(
                    Method::PATCH,
                    "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/web-0/status?&fieldManager=sextant-fixed-ip",
                    code,
                    sextant_kit::testing::status_failure(code, reason),
                )
                .await;
            server.expect_no_more().await;
            seen
        });
        let err = ctl
            .reconcile_statefulset(
                "db",
                "web",
                Observed {
                    statefulset: Some(&view),
                    fixed: vec![f],
                    pods: vec![],
                    nodes,
                    subnets: &subnets,
                },
                NOW.parse().unwrap(),
            )
            .await
            .unwrap_err();
        let counted = (
            ctl.metrics().errors("kube"),
            ctl.metrics().errors("kube_conflict"),
        );
        drop(ctl);
        let seen = finish(script).await;
        assert_eq!(seen.body["metadata"], json!({ "resourceVersion": "20" }));
        assert_eq!(seen.body["status"]["releaseAfter"], "2026-11-25T12:01:00Z");
        (err, counted.0, counted.1)
    }

    #[tokio::test]
    async fn a_retention_decided_on_an_old_version_is_refused_as_a_conflict() {
        let (err, kube, conflicts) = retention_answered(409, "Conflict").await;
        assert!(err.is_conflict(), "{err:?}");
        assert_eq!(err.metric_label(), "kube_conflict");
        assert_eq!(
            (kube, conflicts),
            (0, 0),
            "a conflict is routine, not an error"
        );
    }

    #[tokio::test]
    async fn a_failed_fixed_ip_reconcile_is_counted_by_its_kind() {
        let (err, kube, conflicts) = retention_answered(500, "InternalError").await;
        assert!(!err.is_conflict(), "{err:?}");
        assert_eq!(err.metric_label(), "kube");
        assert_eq!(
            (kube, conflicts),
            (1, 0),
            "fixed_ip_errors{{error=\"kube\"}}"
        );
    }

    #[test]
    fn a_refused_fixed_ip_write_is_a_conflict_not_a_failure() {
        let kube = |code: u16, reason: &str| FixedIpError::Kube {
            namespace: "db".into(),
            statefulset: "web".into(),
            what: "FixedIP web-0 status".into(),
            source: kube::Error::Api(
                kube::core::Status::failure("x", reason)
                    .with_code(code)
                    .boxed(),
            ),
        };
        assert!(kube(409, "Conflict").is_conflict());
        assert_eq!(kube(409, "Conflict").metric_label(), "kube_conflict");
        assert!(!kube(500, "InternalError").is_conflict());
        assert_eq!(kube(500, "InternalError").metric_label(), "kube");
    }

    #[test]
    fn pods_of_other_owners_or_without_an_ordinal_are_not_the_statefulsets() {
        let mk = |name: &str, owner: &str, kind: &str| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                owner_references: Some(vec![OwnerReference {
                    kind: kind.into(),
                    name: owner.into(),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            ..Default::default()
        };
        let pods = [
            mk("web-2", "web", "StatefulSet"),
            mk("web-x", "web", "StatefulSet"),
            mk("web-1", "web", "ReplicaSet"),
            mk("webby-1", "webby", "StatefulSet"),
        ];
        let views = pod_views("web", pods.iter());
        assert_eq!(
            views
                .iter()
                .map(|p| (p.name.as_str(), p.ordinal))
                .collect::<Vec<_>>(),
            vec![("web-2", 2)]
        );
    }
}
