//! The NodeNetwork controller: kube-runtime's `Controller` around
//! [`NodeIpam::reconcile`], writing the status as a JSON merge patch and
//! letting the error decide the requeue.
//!
//! ```text
//!  watch NodeNetwork ─▶ reconcile ─▶ NodeIpam::decide (observe, plan)
//!                        ▲  │
//!                        │  ├─▶ unassigns planned? record_decision: PATCH …/status (released, out of
//!                        │  │     the pool; resourceVersion of the read: 409 → nothing unassigned)
//!                        │  ├─▶ NodeIpam::carry_out (cloud steps, resync)
//!                        │  ├─▶ make_status_patch(read, new) ─▶ PATCH …/nodenetworks/<node>/status
//!                        │  │     (merge, metadata.resourceVersion of the read: 409 if it changed)
//!                        │  └─▶ Ok(requeue_after) | Err ─▶ error_policy ─▶ requeue_for (pure)
//!                        └── 409: requeued at once; that reconcile GETs the node (the cache
//!                            may still hold the old version) and, if cloud steps were done,
//!                            resyncs the instance before planning
//! ```
//!
//! Every status field the operator writes is decided from the status it read
//! (marks from the agent's usage, unassigns from its `ready-for-release`
//! answers, ENIs and pool from a resync on top of the read), so the write is
//! guarded by that read's resourceVersion: a decision made on a status that
//! changed meanwhile is refused, never written over the newer report.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{controller::Action, reflector::Store},
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_cloud::Backoff;
use sextant_crds::{NodeNetwork, NodeNetworkStatus, wellknown::FIELD_MANAGER_OPERATOR};
use sextant_kit::{ErrorChain, sync::lock};
use tracing::{debug, instrument, warn};

pub(crate) use crate::apiserver::Clock;
pub use crate::apiserver::is_conflict;
use crate::{Error, ipam::node::NodeIpam, make_status_patch};

/// Why a NodeNetwork reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Node IPAM failed (invalid spec, cloud error, missing facts).
    #[error("NodeNetwork {node}: reconcile failed")]
    Ipam {
        /// Node name.
        node: String,
        /// What failed.
        #[source]
        source: Error,
    },
    /// Writing the status failed; a 409 Conflict means the NodeNetwork
    /// changed since it was read (requeued at once, read again).
    #[error("NodeNetwork {node}: writing status")]
    WriteStatus {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// Reading the NodeNetwork again after a conflict failed.
    #[error("NodeNetwork {node}: reading it again after a conflict")]
    ReadAgain {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl ControllerError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Ipam { source, .. } => source.metric_label(),
            ControllerError::WriteStatus { source, .. } if is_conflict(source) => "kube_conflict",
            ControllerError::WriteStatus { .. } | ControllerError::ReadAgain { .. } => "kube",
        }
    }
}

/// How failed reconciles are requeued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequeuePolicy {
    /// Backoff of transient failures, by consecutive failures of the node.
    pub(crate) backoff: Backoff,
    /// Least wait after the cloud throttled us, jitter added on top, so
    /// nodes throttled together do not come back together.
    pub(crate) throttled_floor: Duration,
    /// Wait after a failure that needs someone to act (missing VPC, an ENI
    /// limit); an edit of the NodeNetwork triggers a reconcile sooner.
    pub(crate) permanent: Duration,
}

impl Default for RequeuePolicy {
    fn default() -> Self {
        RequeuePolicy {
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
                ..Backoff::default()
            },
            throttled_floor: Duration::from_secs(5),
            permanent: Duration::from_secs(300),
        }
    }
}

/// When to look at the node again after a failure (`None`: only on a change);
/// `attempt` counts the node's consecutive failures before this one.
///
/// - invalid spec: on a change only (the condition says why);
/// - cloud throttled: `throttled_floor` (or the provider's `retry_after`)
///   plus full jitter of the backoff, so nodes throttled together spread out;
/// - status write conflict: at once (someone else wrote; read and go again);
/// - other transient failures: the backoff's base plus full jitter;
/// - anything else: `permanent`.
pub(crate) fn requeue_for(
    err: &ControllerError,
    attempt: u32,
    policy: &RequeuePolicy,
    rng: &mut impl Rng,
) -> Option<Duration> {
    let backoff = |floor: Duration, rng: &mut _| policy.backoff.delay(attempt, Some(floor), rng);
    match err {
        ControllerError::Ipam {
            source: Error::InvalidSpec { .. },
            ..
        } => None,
        ControllerError::Ipam {
            source:
                Error::Cloud {
                    source: sextant_cloud::Error::Throttled { retry_after, .. },
                },
            ..
        } => Some(backoff(
            policy.throttled_floor.max(retry_after.unwrap_or_default()),
            rng,
        )),
        ControllerError::WriteStatus { source, .. } if is_conflict(source) => Some(Duration::ZERO),
        ControllerError::WriteStatus { .. } | ControllerError::ReadAgain { .. } => {
            Some(backoff(policy.backoff.base, rng))
        }
        ControllerError::Ipam { source, .. } if source.is_transient() => {
            Some(backoff(policy.backoff.base, rng))
        }
        ControllerError::Ipam { .. } => Some(policy.permanent),
    }
}

/// The controller's [`Action`] for a requeue decision.
pub(crate) fn action(requeue: Option<Duration>) -> Action {
    match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

/// What the NodeNetwork controller works with.
pub struct Context {
    client: Client,
    ipam: Arc<NodeIpam>,
    policy: RequeuePolicy,
    clock: Clock,
    failures: Mutex<HashMap<String, u32>>,
    conflicted: Mutex<HashMap<String, Conflicted>>,
    rng: Mutex<SmallRng>,
}

/// A node whose last status write was refused with 409 Conflict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Conflicted {
    /// Cloud steps were done before the refused write: the status read
    /// again does not show them, so the instance is resynced before planning
    /// (else an assign would be planned twice).
    mutated: bool,
}

impl Context {
    /// A context on the system clock.
    pub fn new(client: Client, ipam: Arc<NodeIpam>, policy: RequeuePolicy) -> Self {
        Self::with_clock(client, ipam, policy, Arc::new(Timestamp::now))
    }

    /// A context reading time from `clock`.
    pub(crate) fn with_clock(
        client: Client,
        ipam: Arc<NodeIpam>,
        policy: RequeuePolicy,
        clock: Clock,
    ) -> Self {
        Context {
            client,
            ipam,
            policy,
            clock,
            failures: Mutex::default(),
            conflicted: Mutex::default(),
            rng: Mutex::new(SmallRng::from_os_rng()),
        }
    }

    fn failed(&self, node: &str) -> u32 {
        let mut f = lock(&self.failures);
        let n = f.entry(node.to_owned()).or_insert(0);
        let before = *n;
        *n = n.saturating_add(1);
        before
    }

    fn succeeded(&self, node: &str) {
        lock(&self.failures).remove(node);
    }

    /// Forgets per-node state of NodeNetworks no longer in `store`: the
    /// controller is never called for a deleted object, so without this the
    /// failure counts, refused-write notes, released-entry times, instance
    /// VPCs and pool series of every node ever seen would stay.
    pub(crate) fn prune(&self, store: &Store<NodeNetwork>) {
        let live = store.state();
        let nodes: HashSet<String> = live.iter().map(|nn| nn.name_any()).collect();
        let instances: HashSet<&str> = live
            .iter()
            .filter_map(|nn| nn.spec.instance_id.as_deref())
            .collect();
        lock(&self.failures).retain(|n, _| nodes.contains(n));
        lock(&self.conflicted).retain(|n, _| nodes.contains(n));
        self.ipam
            .retain(|n| nodes.contains(n), |i| instances.contains(i));
    }

    /// Per-node entries kept: failures, refused writes, then
    /// [`NodeIpam::kept`]'s.
    #[cfg(test)]
    fn kept(&self) -> [usize; 5] {
        let (released, vpcs, series) = self.ipam.kept();
        [
            lock(&self.failures).len(),
            lock(&self.conflicted).len(),
            released,
            vpcs,
            series,
        ]
    }

    /// Notes a refused status write of `node` so that its next reconcile
    /// reads it again.
    fn note_write_error(&self, node: &str, err: &ControllerError, mutated: bool) {
        if let ControllerError::WriteStatus { source, .. } = err
            && is_conflict(source)
        {
            let mut c = lock(&self.conflicted);
            let e = c.entry(node.to_owned()).or_insert(Conflicted { mutated });
            e.mutated |= mutated;
        }
    }
}

/// Writes the operator's fields of `new` as a merge patch against `read`,
/// the NodeNetwork as it was read, guarded by its resourceVersion
/// ([`make_status_patch`]); no request when nothing changed. Returns whether
/// a request was made. A 409 is [`ControllerError::WriteStatus`] with a
/// conflict, which `requeue_for` requeues at once.
pub async fn write_status(
    api: &Api<NodeNetwork>,
    read: &NodeNetwork,
    new: &NodeNetworkStatus,
) -> Result<bool, ControllerError> {
    let Some(patch) = make_status_patch(read, new) else {
        debug!("status unchanged");
        return Ok(false);
    };
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
        ..PatchParams::default()
    };
    let node = read.name_any();
    api.patch_status(&node, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|source| ControllerError::WriteStatus { node, source })?;
    Ok(true)
}

/// Writes an unassign decision (`decided`, from [`NodeIpam::decide`]) as
/// a merge patch guarded by `read`'s resourceVersion, before any cloud
/// step; returns the NodeNetwork as written, whose version guards the
/// reconcile's final write. A 409 means the node changed since `read`: the
/// decision is dropped and the node read and planned again.
async fn record_decision(
    api: &Api<NodeNetwork>,
    read: &NodeNetwork,
    decided: &NodeNetworkStatus,
) -> Result<Option<NodeNetwork>, ControllerError> {
    let Some(patch) = make_status_patch(read, decided) else {
        return Ok(None);
    };
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
        ..PatchParams::default()
    };
    let node = read.name_any();
    let written = api
        .patch_status(&node, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|source| ControllerError::WriteStatus { node, source })?;
    debug!(
        resource_version = written.metadata.resource_version.as_deref(),
        "unassign decision recorded"
    );
    Ok(Some(written))
}

/// What a reconcile works on.
struct Observed {
    /// The NodeNetwork as read: the write is guarded by its version.
    read: Arc<NodeNetwork>,
    /// What IPAM plans on: `read`, with `lastResync` cleared when cloud
    /// steps preceded a refused write, so the instance is resynced first.
    work: Arc<NodeNetwork>,
    /// Cloud steps preceded a refused write that no write has recorded
    /// since: still owed if this reconcile's write is refused too.
    unrecorded: bool,
}

/// The NodeNetwork to reconcile: `cached` as the controller's cache has
/// it, or, after a refused write, the API server's current one (the cache
/// may not have seen the change yet); `None` when it is gone.
async fn observe(
    api: &Api<NodeNetwork>,
    cached: Arc<NodeNetwork>,
    ctx: &Context,
) -> Result<Option<Observed>, ControllerError> {
    let node = cached.name_any();
    let Some(conflicted) = lock(&ctx.conflicted).get(&node).copied() else {
        return Ok(Some(Observed {
            read: cached.clone(),
            work: cached,
            unrecorded: false,
        }));
    };
    let fresh = api
        .get_opt(&node)
        .await
        .map_err(|source| ControllerError::ReadAgain {
            node: node.clone(),
            source,
        })?;
    lock(&ctx.conflicted).remove(&node);
    let Some(fresh) = fresh.map(Arc::new) else {
        return Ok(None);
    };
    debug!(
        resource_version = fresh.metadata.resource_version.as_deref(),
        resync = conflicted.mutated,
        "read again after a conflict"
    );
    if !conflicted.mutated {
        return Ok(Some(Observed {
            read: fresh.clone(),
            work: fresh,
            unrecorded: false,
        }));
    }
    let mut work = fresh.as_ref().clone();
    if let Some(s) = work.status.as_mut() {
        s.last_resync = None;
    }
    Ok(Some(Observed {
        read: fresh,
        work: Arc::new(work),
        unrecorded: true,
    }))
}

/// Reconciles one NodeNetwork: node IPAM, then the status write, guarded
/// by the resourceVersion of the read. A cloud error met while executing is
/// returned after the status that still reflects the work done has been
/// written. After a refused write the node is read from the API server again.
#[instrument(skip_all, fields(node = %nn.name_any()))]
pub async fn reconcile(nn: Arc<NodeNetwork>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let node = nn.name_any();
    let api: Api<NodeNetwork> = Api::all(ctx.client.clone());
    let Some(Observed {
        read,
        work,
        unrecorded,
    }) = observe(&api, nn, &ctx).await?
    else {
        debug!("gone");
        ctx.ipam.forget(&node);
        ctx.succeeded(&node);
        return Ok(Action::await_change());
    };
    let now = (ctx.clock)();
    match ctx.ipam.decide(&work, now).await {
        Ok(decision) => {
            // Unassigns are irreversible: their decision is written first,
            // guarded by the read's version; refused, nothing is done.
            let read = if decision.records_unassigns() {
                match record_decision(&api, &read, decision.status()).await {
                    Ok(written) => written.map_or(read, Arc::new),
                    Err(e) => {
                        if matches!(&e, ControllerError::WriteStatus { source, .. } if is_conflict(source))
                        {
                            decision.refused(ctx.ipam.metrics());
                        }
                        ctx.note_write_error(&node, &e, unrecorded);
                        return Err(e);
                    }
                }
            } else {
                read
            };
            let reconciled = ctx.ipam.carry_out(decision, now).await;
            // A failed step may have changed the cloud before failing.
            let mutated = unrecorded || !reconciled.done.is_empty() || reconciled.error.is_some();
            write_status(&api, &read, &reconciled.status)
                .await
                .inspect_err(|e| ctx.note_write_error(&node, e, mutated))?;
            if let Some(source) = reconciled.error {
                return Err(ControllerError::Ipam { node, source });
            }
            debug!(
                steps = reconciled.done.len(),
                requeue_after = ?reconciled.requeue_after,
                "reconciled"
            );
            ctx.succeeded(&node);
            Ok(Action::requeue(reconciled.requeue_after))
        }
        Err(source) => {
            if let Error::InvalidSpec { status, .. } = &source {
                write_status(&api, &read, status)
                    .await
                    .inspect_err(|e| ctx.note_write_error(&node, e, unrecorded))?;
            }
            Err(ControllerError::Ipam { node, source })
        }
    }
}

/// How often per-node state of deleted NodeNetworks is dropped.
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Every [`PRUNE_EVERY`], once `store` is ready, drops per-node state of
/// NodeNetworks that are gone ([`Context::prune`]).
pub(crate) async fn prune(ctx: Arc<Context>, store: Store<NodeNetwork>) {
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        ctx.prune(&store);
    }
}

/// Counts the failure and picks the requeue with `requeue_for`.
pub fn error_policy(nn: Arc<NodeNetwork>, err: &ControllerError, ctx: Arc<Context>) -> Action {
    action(failure_requeue(&nn.name_any(), err, &ctx))
}

/// The requeue [`error_policy`] picks, after counting the failure.
fn failure_requeue(node: &str, err: &ControllerError, ctx: &Context) -> Option<Duration> {
    ctx.ipam.metrics().error(err.metric_label());
    let attempt = ctx.failed(node);
    let requeue = requeue_for(err, attempt, &ctx.policy, &mut *lock(&ctx.rng));
    if matches!(err, ControllerError::WriteStatus { source, .. } if is_conflict(source)) {
        // Routine: the agent reported while we planned; go again on its report.
        debug!(%node, error = %ErrorChain(err), attempt, "status changed since read; again at once");
    } else {
        warn!(%node, error = %ErrorChain(err), kind = err.metric_label(), attempt, ?requeue, "reconcile failed");
    }
    requeue
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use kube::core::Status;
    use sextant_cloud::Action as CloudAction;
    use sextant_crds::SpecError;

    fn ipam_err(source: Error) -> ControllerError {
        ControllerError::Ipam {
            node: "n".into(),
            source,
        }
    }

    fn kube_err(code: u16, reason: &str) -> ControllerError {
        ControllerError::WriteStatus {
            node: "n".into(),
            source: kube::Error::Api(Status::failure("x", reason).with_code(code).boxed()),
        }
    }

    fn throttled() -> ControllerError {
        ipam_err(Error::Cloud {
            source: sextant_cloud::Error::Throttled {
                action: CloudAction::AssignIps,
                retry_after: None,
            },
        })
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn invalid_spec_waits_for_a_change() {
        let err = ipam_err(Error::InvalidSpec {
            node: "n".into(),
            source: SpecError::MissingPodCidrs,
            status: Box::default(),
        });
        assert_eq!(
            requeue_for(&err, 0, &RequeuePolicy::default(), &mut rng()),
            None
        );
        assert_eq!(action(None), Action::await_change());
        assert_eq!(err.metric_label(), "invalid_spec");
    }

    #[test]
    fn status_conflict_requeues_at_once() {
        let err = kube_err(409, "Conflict");
        assert_eq!(
            requeue_for(&err, 3, &RequeuePolicy::default(), &mut rng()),
            Some(Duration::ZERO)
        );
        assert_eq!(err.metric_label(), "kube_conflict");
        assert_eq!(kube_err(500, "InternalError").metric_label(), "kube");
    }

    #[test]
    fn throttled_nodes_back_off_with_jitter_above_the_floor() {
        let policy = RequeuePolicy::default();
        let mut r = rng();
        let lo = policy.throttled_floor;
        let hi = policy.throttled_floor + policy.backoff.ceiling(2);
        let delays: Vec<Duration> = (0..50)
            .map(|_| requeue_for(&throttled(), 2, &policy, &mut r).unwrap())
            .collect();
        assert!(delays.iter().all(|d| (lo..=hi).contains(d)), "{delays:?}");
        let distinct: std::collections::BTreeSet<_> = delays.iter().collect();
        assert!(distinct.len() > 40, "delays are jittered: {delays:?}");
        assert_eq!(throttled().metric_label(), "throttled");
    }

    #[test]
    fn a_provider_retry_after_raises_the_floor() {
        let err = ipam_err(Error::Cloud {
            source: sextant_cloud::Error::Throttled {
                action: CloudAction::AssignIps,
                retry_after: Some(Duration::from_secs(60)),
            },
        });
        let d = requeue_for(&err, 0, &RequeuePolicy::default(), &mut rng()).unwrap();
        assert!(d >= Duration::from_secs(60), "{d:?}");
    }

    #[test]
    fn transient_failures_back_off_and_permanent_ones_wait_long() {
        let policy = RequeuePolicy::default();
        let unavailable = ipam_err(Error::Cloud {
            source: sextant_cloud::Error::Unavailable {
                action: CloudAction::ListEnis,
                message: "503".into(),
                source: None,
            },
        });
        let d = requeue_for(&unavailable, 0, &policy, &mut rng()).unwrap();
        assert!(
            d >= policy.backoff.base && d <= policy.backoff.base * 2,
            "{d:?}"
        );
        let later = requeue_for(&unavailable, 20, &policy, &mut rng()).unwrap();
        assert!(
            later <= policy.backoff.base + policy.backoff.cap,
            "{later:?}"
        );
        let missing_vpc = ipam_err(Error::MissingVpc { node: "n".into() });
        assert_eq!(
            requeue_for(&missing_vpc, 0, &policy, &mut rng()),
            Some(policy.permanent)
        );
        let api_down = kube_err(503, "ServiceUnavailable");
        let d = requeue_for(&api_down, 0, &policy, &mut rng()).unwrap();
        assert!(d >= policy.backoff.base, "{d:?}");
    }

    #[test]
    fn error_chain_shows_every_cause() {
        let err = throttled();
        assert_eq!(
            ErrorChain(&err).to_string(),
            "NodeNetwork n: reconcile failed: cloud call failed: assign_ips: throttled by the cloud API"
        );
    }

    // The kube calls of a whole reconcile, against a mocked API server and
    // the simulated cloud.

    use http::Method;
    use serde_json::{Value, json};
    use sextant_cloud::{
        Tags,
        sim::{Faults, SimCloud, SimConfig, SimProvider},
    };
    use sextant_crds::{AgentUsage, NodeNetworkSpec, Provider};

    use sextant_kit::testing::{ApiServerVerifier, mock_client, status_failure};

    use crate::ipam::{metrics::IpamMetrics, node::IpamConfig};

    const NOW: &str = "2026-11-25T12:00:00Z";
    const STATUS: &str =
        "/apis/sextant.io/v1alpha1/nodenetworks/node-a/status?&fieldManager=sextant-operator";
    const MERGE_PATCH: &str = "application/merge-patch+json";

    /// A simulated cloud with one instance, and a controller context whose
    /// client talks to the returned verifier.
    struct World {
        sim: Arc<SimCloud>,
        ctx: Arc<Context>,
        server: ApiServerVerifier,
        instance: String,
    }

    fn world() -> World {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 7)));
        let subnet = sim
            .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
            .unwrap();
        sim.add_security_group("vpc-1", "pods", Tags::new());
        let instance = sim.add_instance("m5.large", &subnet).unwrap();
        let ipam = Arc::new(NodeIpam::new(
            sim.clone(),
            IpamConfig {
                cluster: "test".into(),
                ..IpamConfig::default()
            },
            IpamMetrics::default(),
        ));
        let (client, server) = mock_client();
        let now: Timestamp = NOW.parse().unwrap();
        let ctx = Context::with_clock(
            client,
            ipam,
            RequeuePolicy::default(),
            Arc::new(move || now),
        );
        World {
            sim,
            ctx: Arc::new(ctx),
            server,
            instance,
        }
    }

    fn mk_nn(instance: Option<&str>) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            "node-a",
            NodeNetworkSpec {
                provider: Provider::Aws,
                instance_id: instance.map(str::to_owned),
                instance_type: Some("m5.large".into()),
                zone: Some("us-east-1a".into()),
                vpc_id: Some("vpc-1".into()),
                ..NodeNetworkSpec::default()
            },
        );
        nn.metadata.generation = Some(1);
        nn.metadata.resource_version = Some("5".into());
        nn
    }

    /// RFC 7386: what the API server makes of a merge patch.
    fn merge(target: &mut Value, patch: &Value) {
        let Value::Object(patch) = patch else {
            *target = patch.clone();
            return;
        };
        if !target.is_object() {
            *target = json!({});
        }
        let Some(target) = target.as_object_mut() else {
            return;
        };
        for (k, v) in patch {
            if v.is_null() {
                target.remove(k);
            } else {
                merge(target.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }

    /// `nn` as the API server keeps it after `patch`: merged, at the next
    /// resourceVersion.
    fn patched(nn: &NodeNetwork, patch: &Value) -> NodeNetwork {
        let mut v = serde_json::to_value(nn).unwrap();
        merge(&mut v, patch);
        let mut out: NodeNetwork = serde_json::from_value(v).unwrap();
        out.metadata.resource_version = Some(next_version(nn));
        out
    }

    fn next_version(nn: &NodeNetwork) -> String {
        let rv: u64 = nn
            .metadata
            .resource_version
            .as_deref()
            .unwrap()
            .parse()
            .unwrap();
        (rv + 1).to_string()
    }

    fn condition_of<'a>(status: &'a Value, type_: &str) -> &'a Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
            .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
    }

    /// Runs one reconcile against a server that answers its status write
    /// with `code` (and the object, on success); returns what it sent.
    async fn reconcile_answering(
        nn: &NodeNetwork,
        ctx: &Arc<Context>,
        server: &mut ApiServerVerifier,
        code: u16,
    ) -> (Result<Action, ControllerError>, Value) {
        let reply = match code {
            200 => json!(nn),
            409 => status_failure(409, "Conflict"),
            _ => status_failure(code, "InternalError"),
        };
        let (result, seen) = tokio::join!(
            reconcile(Arc::new(nn.clone()), ctx.clone()),
            server.expect(Method::PATCH, STATUS, code, reply),
        );
        assert_eq!(seen.content_type.as_deref(), Some(MERGE_PATCH));
        (result, seen.body)
    }

    fn spec_valid() -> Value {
        json!({
            "type": "SpecValid", "status": "True", "reason": "Valid", "message": "",
            "observedGeneration": 1, "lastTransitionTime": NOW,
        })
    }

    fn within_limits() -> Value {
        json!({
            "type": "LimitReached", "status": "False", "reason": "WithinLimits", "message": "",
            "observedGeneration": 1, "lastTransitionTime": NOW,
        })
    }

    #[tokio::test]
    async fn reconcile_writes_the_pool_as_a_merge_patch_of_status() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, body) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        drop(ctx);
        server.expect_no_more().await;

        // The first reconcile resyncs the instance (its primary ENI), creates
        // an ENI with preAllocate (8) addresses and writes all of it, once.
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(1)));
        let pool: serde_json::Map<String, Value> = (6..=13)
            .map(|i| (format!("10.0.0.{i}"), json!({ "eni": "eni-00000005" })))
            .collect();
        assert_eq!(
            body,
            json!({ "metadata": { "resourceVersion": "5" }, "status": {
                "enis": [
                    {
                        "id": "eni-00000004", "subnetId": "subnet-00000001", "deviceIndex": 0,
                        "mac": "02:d1:bb:b4:8e:b9", "primaryIp": "10.0.0.4",
                    },
                    {
                        "id": "eni-00000005", "subnetId": "subnet-00000001", "deviceIndex": 1,
                        "mac": "02:d1:bc:b4:8e:b9", "primaryIp": "10.0.0.5",
                        "addresses": (6..=13).map(|i| format!("10.0.0.{i}")).collect::<Vec<_>>(),
                    },
                ],
                "pool": pool,
                "summary": {
                    "enis": 2, "poolSize": 8, "used": 0,
                    "capacity": 18, "maxEnis": 3, "ipv4PerEni": 10,
                },
                "conditions": [
                    spec_valid(),
                    {
                        "type": "PoolReady", "status": "False", "reason": "Filling",
                        "message": "0 available of 0 in pool, 0 used, 0 releasing; preAllocate 8",
                        "observedGeneration": 1, "lastTransitionTime": NOW,
                    },
                    within_limits(),
                ],
                "observedGeneration": 1,
                "lastResync": NOW,
            }})
        );
        let stats = sim.stats().by_action;
        assert_eq!(stats[&sextant_cloud::Action::CreateEni].calls, 1);
        assert!(!stats.contains_key(&sextant_cloud::Action::AssignIps));
        let created = sim
            .all_enis()
            .into_iter()
            .find(|e| e.id == "eni-00000005")
            .unwrap();
        assert_eq!(created.secondary_ips.len(), 8);
        assert_eq!(
            created.attachment.map(|a| (a.instance_id, a.device_index)),
            Some((instance, 1))
        );
    }

    #[tokio::test]
    async fn a_converged_node_costs_no_request() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (_, first) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        let nn = patched(&nn, &first);

        // The pool is full: only the PoolReady condition still changes.
        let (result, second) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
        assert_eq!(
            second,
            json!({ "metadata": { "resourceVersion": "6" }, "status": { "conditions": [
                spec_valid(),
                {
                    "type": "PoolReady", "status": "True", "reason": "Ready",
                    "message": "8 available of 8 in pool, 0 used, 0 releasing; preAllocate 8",
                    "observedGeneration": 1, "lastTransitionTime": NOW,
                },
                within_limits(),
            ]}})
        );
        let nn = patched(&nn, &second);

        // Nothing left to change: no request at all.
        let calls = sim.stats().total_calls();
        let result = reconcile(Arc::new(nn), ctx.clone()).await;
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
        drop(ctx);
        server.expect_no_more().await;
        assert_eq!(sim.stats().total_calls(), calls, "no cloud call either");
    }

    #[tokio::test]
    async fn a_conflicting_status_write_requeues_at_once() {
        let World {
            ctx,
            mut server,
            instance,
            ..
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, _) = reconcile_answering(&nn, &ctx, &mut server, 409).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ControllerError::WriteStatus { node, source } if node == "node-a" && is_conflict(source)),
            "{err:?}"
        );
        assert_eq!(err.metric_label(), "kube_conflict");
        for _ in 0..3 {
            assert_eq!(
                error_policy(Arc::new(nn.clone()), &err, ctx.clone()),
                Action::requeue(Duration::ZERO)
            );
        }
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_failed_status_write_backs_off() {
        let World {
            ctx,
            mut server,
            instance,
            ..
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, _) = reconcile_answering(&nn, &ctx, &mut server, 500).await;
        let err = result.unwrap_err();
        assert!(
            matches!(&err, ControllerError::WriteStatus { source, .. } if !is_conflict(source)),
            "{err:?}"
        );
        assert_eq!(err.metric_label(), "kube");
        // Not at once, unlike a conflict: the base plus full jitter.
        let base = RequeuePolicy::default().backoff.base;
        let after = failure_requeue("node-a", &err, &ctx).unwrap();
        assert!((base..=base * 2).contains(&after), "{after:?}");
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn an_invalid_spec_writes_the_condition_and_waits_for_a_change() {
        let World {
            sim,
            ctx,
            mut server,
            ..
        } = world();
        let nn = mk_nn(None);
        let (result, body) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        assert_eq!(
            body,
            json!({ "metadata": { "resourceVersion": "5" }, "status": { "conditions": [{
                "type": "SpecValid", "status": "False", "reason": "InvalidSpec",
                "message": "spec.instanceId is required for provider aws",
                "observedGeneration": 1, "lastTransitionTime": NOW,
            }]}})
        );
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                ControllerError::Ipam {
                    source: Error::InvalidSpec { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            error_policy(Arc::new(nn.clone()), &err, ctx.clone()),
            Action::await_change()
        );

        // Once the condition is written, the same spec writes nothing again.
        let nn = patched(&nn, &body);
        let again = reconcile(Arc::new(nn), ctx.clone()).await;
        assert!(
            matches!(again, Err(ControllerError::Ipam { .. })),
            "{again:?}"
        );
        drop(ctx);
        server.expect_no_more().await;
        assert_eq!(
            sim.stats().total_calls(),
            0,
            "an invalid spec asks no cloud"
        );
    }

    #[tokio::test]
    async fn a_cloud_error_before_any_change_writes_nothing_and_backs_off() {
        let World {
            sim,
            ctx,
            server,
            instance,
        } = world();
        sim.set_faults(Faults {
            throttle_ratio: 1.0,
            ..Faults::default()
        });
        let nn = mk_nn(Some(&instance));
        let err = reconcile(Arc::new(nn), ctx.clone()).await.unwrap_err();
        assert_eq!(err.metric_label(), "throttled");
        let policy = RequeuePolicy::default();
        let after = failure_requeue("node-a", &err, &ctx).unwrap();
        let ceiling = policy.throttled_floor + policy.backoff.ceiling(0);
        assert!(
            (policy.throttled_floor..=ceiling).contains(&after),
            "{after:?}"
        );
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_cloud_error_while_executing_still_writes_the_status() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (_, first) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        let mut nn = patched(&nn, &first);
        // The agent reports five pods: the pool must grow by five.
        if let Some(status) = nn.status.as_mut() {
            status.usage = Some(AgentUsage {
                used: (6..=10)
                    .map(|i| (format!("10.0.0.{i}"), format!("default/pod-{i}")))
                    .collect(),
                ..AgentUsage::default()
            });
        }
        sim.set_faults(Faults {
            throttle_ratio: 1.0,
            ..Faults::default()
        });
        let (result, body) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        drop(ctx);
        server.expect_no_more().await;

        assert_eq!(
            sim.stats().by_action[&sextant_cloud::Action::AssignIps].throttled,
            1
        );
        assert_eq!(body["metadata"], json!({ "resourceVersion": "6" }));
        let status = &body["status"];
        let mut keys: Vec<&str> = status
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["conditions", "summary"], "never the agent's usage");
        assert_eq!(
            status["summary"],
            json!({
                "enis": 2, "poolSize": 8, "used": 5,
                "capacity": 18, "maxEnis": 3, "ipv4PerEni": 10,
            })
        );
        assert_eq!(
            condition_of(status, "PoolReady")["message"],
            "3 available of 8 in pool, 5 used, 0 releasing; preAllocate 8"
        );
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                ControllerError::Ipam {
                    source: Error::Cloud {
                        source: sextant_cloud::Error::Throttled { .. }
                    },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    const NODE: &str = "/apis/sextant.io/v1alpha1/nodenetworks/node-a";

    /// `nn` after the agent's report of `ips` in use (its own merge patch),
    /// at the next resourceVersion.
    fn agent_reported(nn: &NodeNetwork, ips: std::ops::RangeInclusive<u8>) -> NodeNetwork {
        let mut out = nn.clone();
        out.status.get_or_insert_with(Default::default).usage = Some(AgentUsage {
            used: ips
                .map(|i| (format!("10.0.0.{i}"), format!("default/pod-{i}")))
                .collect(),
            reported_at: Some(format!("report at {}", next_version(nn))),
            ..AgentUsage::default()
        });
        out.metadata.resource_version = Some(next_version(nn));
        out
    }

    fn assign_calls(sim: &SimCloud) -> u64 {
        sim.stats()
            .by_action
            .get(&sextant_cloud::Action::AssignIps)
            .map_or(0, |s| s.calls)
    }

    #[tokio::test]
    async fn after_a_conflict_the_node_is_read_again_and_planned_on_the_newer_report() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (_, first) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        // The cache holds version 6: a full pool, nothing used. The agent
        // has meanwhile reported five pods (version 7).
        let cached = patched(&nn, &first);
        let fresh = agent_reported(&cached, 6..=10);

        let (result, refused) = reconcile_answering(&cached, &ctx, &mut server, 409).await;
        assert_eq!(refused["metadata"], json!({ "resourceVersion": "6" }));
        let err = result.unwrap_err();
        assert_eq!(err.metric_label(), "kube_conflict");
        assert_eq!(
            error_policy(Arc::new(cached.clone()), &err, ctx.clone()),
            Action::requeue(Duration::ZERO)
        );

        // Requeued at once with the cache's version 6 again: the API
        // server's version 7 is read, and the pool grows by the five used.
        let (result, (read, written)) =
            tokio::join!(reconcile(Arc::new(cached.clone()), ctx.clone()), async {
                let read = server.expect(Method::GET, NODE, 200, json!(fresh)).await;
                let written = server
                    .expect(Method::PATCH, STATUS, 200, json!(fresh))
                    .await;
                (read, written)
            });
        assert_eq!(read.body, Value::Null);
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(1)));
        assert_eq!(written.body["metadata"], json!({ "resourceVersion": "7" }));
        assert_eq!(written.body["status"]["summary"]["used"], 5);
        assert_eq!(written.body["status"]["summary"]["poolSize"], 13);
        assert!(
            written.body["status"].get("usage").is_none(),
            "never the agent's usage"
        );
        assert_eq!(assign_calls(&sim), 1);

        // Read again once: the next reconcile trusts the cache.
        let settled = patched(&fresh, &written.body);
        let (result, _) = reconcile_answering(&settled, &ctx, &mut server, 200).await;
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_conflict_after_cloud_steps_resyncs_the_instance_before_planning_again() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (_, first) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        let cached = agent_reported(&patched(&nn, &first), 6..=10);

        // Five more assigned in the cloud, and the write of them refused:
        // the agent reported again meanwhile.
        let (result, refused) = reconcile_answering(&cached, &ctx, &mut server, 409).await;
        assert_eq!(refused["metadata"], json!({ "resourceVersion": "7" }));
        assert_eq!(refused["status"]["summary"]["poolSize"], 13);
        assert_eq!(assign_calls(&sim), 1);
        let err = result.unwrap_err();
        assert_eq!(
            error_policy(Arc::new(cached.clone()), &err, ctx.clone()),
            Action::requeue(Duration::ZERO)
        );

        // What the API server has does not show the five: planned on it
        // alone, they would be assigned twice. The instance is resynced first.
        let fresh = agent_reported(&cached, 6..=10);
        let (result, written) =
            tokio::join!(reconcile(Arc::new(cached.clone()), ctx.clone()), async {
                server.expect(Method::GET, NODE, 200, json!(fresh)).await;
                server
                    .expect(Method::PATCH, STATUS, 200, json!(fresh))
                    .await
            });
        assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(300)));
        assert_eq!(assign_calls(&sim), 1, "no second assign");
        assert_eq!(
            sim.stats().by_action[&sextant_cloud::Action::CreateEni].calls,
            2,
            "no third ENI"
        );
        assert_eq!(written.body["metadata"], json!({ "resourceVersion": "8" }));
        assert_eq!(written.body["status"]["summary"]["poolSize"], 13);
        assert_eq!(
            written.body["status"]["pool"].as_object().map(|p| p.len()),
            Some(5),
            "the five assigned before the conflict join the pool: {}",
            written.body
        );
        let in_cloud: usize = sim.all_enis().iter().map(|e| e.secondary_ips.len()).sum();
        assert_eq!(in_cloud, 13);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_resync_owed_after_cloud_steps_survives_a_second_conflict() {
        let World {
            sim,
            ctx,
            mut server,
            instance,
        } = world();
        let nn = mk_nn(Some(&instance));
        let (_, first) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        let cached = agent_reported(&patched(&nn, &first), 6..=10);
        let (result, _) = reconcile_answering(&cached, &ctx, &mut server, 409).await;
        assert!(result.is_err());
        assert_eq!(assign_calls(&sim), 1);

        // The retry resyncs, plans nothing new, and is refused again: the
        // agent keeps reporting. Its write never recorded the cloud steps.
        let fresh = agent_reported(&cached, 6..=10);
        let (result, _) = tokio::join!(reconcile(Arc::new(cached.clone()), ctx.clone()), async {
            server.expect(Method::GET, NODE, 200, json!(fresh)).await;
            server
                .expect(Method::PATCH, STATUS, 409, status_failure(409, "Conflict"))
                .await
        });
        let err = result.unwrap_err();
        assert_eq!(err.metric_label(), "kube_conflict");

        // So the next attempt resyncs again rather than assign twice.
        let fresher = agent_reported(&fresh, 6..=10);
        let (result, written) =
            tokio::join!(reconcile(Arc::new(cached.clone()), ctx.clone()), async {
                server.expect(Method::GET, NODE, 200, json!(fresher)).await;
                server
                    .expect(Method::PATCH, STATUS, 200, json!(fresher))
                    .await
            });
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(assign_calls(&sim), 1, "no second assign");
        assert_eq!(written.body["metadata"], json!({ "resourceVersion": "9" }));
        assert_eq!(written.body["status"]["summary"]["poolSize"], 13);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_node_gone_when_read_again_after_a_conflict_is_let_go() {
        let World {
            ctx,
            mut server,
            instance,
            ..
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, _) = reconcile_answering(&nn, &ctx, &mut server, 409).await;
        assert!(result.is_err());
        let (result, _) = tokio::join!(
            reconcile(Arc::new(nn.clone()), ctx.clone()),
            server.expect(Method::GET, NODE, 404, status_failure(404, "NotFound")),
        );
        assert_eq!(result.unwrap(), Action::await_change());
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_failed_read_after_a_conflict_backs_off_and_reads_again_next_time() {
        let World {
            ctx,
            mut server,
            instance,
            ..
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, _) = reconcile_answering(&nn, &ctx, &mut server, 409).await;
        assert!(result.is_err());
        let (result, _) = tokio::join!(
            reconcile(Arc::new(nn.clone()), ctx.clone()),
            server.expect(Method::GET, NODE, 500, status_failure(500, "InternalError")),
        );
        let err = result.unwrap_err();
        assert!(matches!(err, ControllerError::ReadAgain { .. }), "{err:?}");
        assert_eq!(err.metric_label(), "kube");
        let base = RequeuePolicy::default().backoff.base;
        let after = failure_requeue("node-a", &err, &ctx).unwrap();
        assert!((base..=base * 2).contains(&after), "{after:?}");
        // Still not trusting the cache.
        let (result, _) = tokio::join!(reconcile(Arc::new(nn.clone()), ctx.clone()), async {
            server.expect(Method::GET, NODE, 200, json!(nn)).await;
            server.expect(Method::PATCH, STATUS, 200, json!(nn)).await
        });
        assert!(result.is_ok(), "{result:?}");
        drop(ctx);
        server.expect_no_more().await;
    }

    /// A cache holding `nns`, as the controller's store would.
    fn store_of(nns: &[NodeNetwork]) -> Store<NodeNetwork> {
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Init);
        for nn in nns {
            writer.apply_watcher_event(&kube::runtime::watcher::Event::InitApply(nn.clone()));
        }
        writer.apply_watcher_event(&kube::runtime::watcher::Event::InitDone);
        store
    }

    #[tokio::test]
    async fn per_node_state_of_ten_thousand_deleted_nodes_is_dropped() {
        let World {
            ctx,
            mut server,
            instance,
            ..
        } = world();
        let nn = mk_nn(Some(&instance));
        let (result, _) = reconcile_answering(&nn, &ctx, &mut server, 200).await;
        result.unwrap();
        // The live node's state: its instance's VPC and its pool series.
        let live = ctx.kept();
        assert_eq!(live, [0, 0, 0, 1, 1]);
        for i in 0..10_000 {
            let node = format!("gone-{i}");
            let refused = ControllerError::WriteStatus {
                node: node.clone(),
                source: kube::Error::Api(
                    kube::core::Status::failure("Conflict", "Conflict")
                        .with_code(409)
                        .boxed(),
                ),
            };
            failure_requeue(&node, &refused, &ctx);
            ctx.note_write_error(&node, &refused, true);
            ctx.ipam
                .metrics()
                .pool(&node, &NodeNetworkStatus::default(), 0);
        }
        assert_eq!(ctx.kept(), [10_000, 10_000, 0, 1, 10_001]);
        // None of them is in the cache any more: pruning returns every map
        // to the live node's size, and keeps the live node's state.
        ctx.prune(&store_of(std::slice::from_ref(&nn)));
        assert_eq!(ctx.kept(), live);
        ctx.prune(&store_of(&[]));
        assert_eq!(ctx.kept(), [0, 0, 0, 0, 0]);
    }

    /// The operator's status write through the client every binary builds,
    /// to an API server that takes the request and never answers: it fails
    /// at the client's deadline as a transient error (retried with backoff),
    /// instead of holding the node's reconcile for good.
    #[tokio::test]
    async fn a_status_write_to_an_api_server_that_never_answers_fails_at_the_deadline() {
        let (url, held) = sextant_kit::testing::silent_api_server().await;
        let config = kube::Config::new(url);
        let deadline = Duration::from_millis(300);
        let client = sextant_kit::client::with_deadlines(config, deadline).unwrap();
        let api: Api<NodeNetwork> = Api::all(client);
        let read = mk_nn(Some("i-1"));
        let mut new = NodeNetworkStatus::default();
        new.pool.insert("10.0.0.9".into(), Default::default());
        let started = std::time::Instant::now();
        let err = write_status(&api, &read, &new).await.unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= deadline && took < Duration::from_secs(5),
            "{took:?}"
        );
        let ControllerError::WriteStatus { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(sextant_kit::client::is_deadline(source), "{source:?}");
        // Transient: backed off and retried, not parked as permanent.
        let requeue = requeue_for(
            &err,
            0,
            &RequeuePolicy::default(),
            &mut SmallRng::seed_from_u64(1),
        );
        assert!(
            requeue.is_some_and(|d| d <= Duration::from_secs(60)),
            "{requeue:?}"
        );
        held.abort();
    }
}
