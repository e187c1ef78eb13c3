//! The NodeNetwork controller: kube-runtime's `Controller` around
//! [`NodeIpam::reconcile`], writing the status as a JSON merge patch and
//! letting the error decide the requeue.
//!
//! ```text
//!  watch NodeNetwork ─▶ reconcile ─▶ NodeIpam::reconcile (observe, plan, execute)
//!                           │
//!                           ├─▶ status_patch(old, new) ─▶ PATCH …/nodenetworks/<node>/status (merge)
//!                           └─▶ Ok(requeue_after) | Err ─▶ error_policy ─▶ requeue_for (pure)
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::controller::Action,
};
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_cloud::Backoff;
use sextant_crds::{NodeNetwork, NodeNetworkStatus};
use tracing::{debug, instrument, warn};

use crate::{Error, ipam::node::NodeIpam, status_patch};

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "sextant-operator";

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
    /// Writing the status failed.
    #[error("NodeNetwork {node}: writing status")]
    WriteStatus {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

/// Whether a kube error is a 409 Conflict.
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict())
}

impl ControllerError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ControllerError::Ipam { source, .. } => source.metric_label(),
            ControllerError::WriteStatus { source, .. } if is_conflict(source) => "kube_conflict",
            ControllerError::WriteStatus { .. } => "kube",
        }
    }
}

/// How failed reconciles are requeued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequeuePolicy {
    /// Backoff of transient failures, by consecutive failures of the node.
    pub backoff: Backoff,
    /// Least wait after the cloud throttled us, jitter added on top, so
    /// nodes throttled together do not come back together.
    pub throttled_floor: Duration,
    /// Wait after a failure that needs someone to act (missing VPC, an ENI
    /// limit); an edit of the NodeNetwork triggers a reconcile sooner.
    pub permanent: Duration,
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
pub fn requeue_for(
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
        ControllerError::WriteStatus { .. } => Some(backoff(policy.backoff.base, rng)),
        ControllerError::Ipam { source, .. } if source.is_transient() => {
            Some(backoff(policy.backoff.base, rng))
        }
        ControllerError::Ipam { .. } => Some(policy.permanent),
    }
}

/// The controller's [`Action`] for a requeue decision.
pub fn action(requeue: Option<Duration>) -> Action {
    match requeue {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

/// The clock reconciles read; tests pin it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What the NodeNetwork controller works with.
pub struct Context {
    client: Client,
    ipam: Arc<NodeIpam>,
    policy: RequeuePolicy,
    clock: Clock,
    failures: Mutex<HashMap<String, u32>>,
    rng: Mutex<SmallRng>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Context {
    /// A context on the system clock.
    pub fn new(client: Client, ipam: Arc<NodeIpam>, policy: RequeuePolicy) -> Self {
        Self::with_clock(client, ipam, policy, Arc::new(Timestamp::now))
    }

    /// A context reading time from `clock`.
    pub fn with_clock(
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
            rng: Mutex::new(SmallRng::from_os_rng()),
        }
    }

    /// Node IPAM.
    pub fn ipam(&self) -> &Arc<NodeIpam> {
        &self.ipam
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
}

/// Writes the operator's fields of `new` as a merge patch against `old`;
/// no request when nothing changed.
async fn write_status(
    api: &Api<NodeNetwork>,
    node: &str,
    old: &NodeNetworkStatus,
    new: &NodeNetworkStatus,
) -> Result<(), ControllerError> {
    let Some(patch) = status_patch(old, new) else {
        debug!("status unchanged");
        return Ok(());
    };
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(node, &pp, &Patch::Merge(&patch))
        .await
        .map_err(|source| ControllerError::WriteStatus {
            node: node.to_owned(),
            source,
        })?;
    Ok(())
}

/// Reconciles one NodeNetwork: node IPAM, then the status write. A cloud
/// error met while executing is returned after the status that still
/// reflects the work done has been written.
#[instrument(skip_all, fields(node = %nn.name_any()))]
pub async fn reconcile(nn: Arc<NodeNetwork>, ctx: Arc<Context>) -> Result<Action, ControllerError> {
    let node = nn.name_any();
    let api: Api<NodeNetwork> = Api::all(ctx.client.clone());
    let old = nn.status.clone().unwrap_or_default();
    let now = (ctx.clock)();
    match ctx.ipam.reconcile(&nn, now).await {
        Ok(reconciled) => {
            write_status(&api, &node, &old, &reconciled.status).await?;
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
                write_status(&api, &node, &old, status).await?;
            }
            Err(ControllerError::Ipam { node, source })
        }
    }
}

/// Counts the failure and picks the requeue with [`requeue_for`].
pub fn error_policy(nn: Arc<NodeNetwork>, err: &ControllerError, ctx: Arc<Context>) -> Action {
    let node = nn.name_any();
    ctx.ipam.metrics().error(err.metric_label());
    let attempt = ctx.failed(&node);
    let requeue = requeue_for(err, attempt, &ctx.policy, &mut *lock(&ctx.rng));
    warn!(%node, error = %ErrorChain(err), kind = err.metric_label(), attempt, ?requeue, "reconcile failed");
    action(requeue)
}

/// Displays an error with its sources, `a: b: c`.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
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
        assert_eq!(requeue_for(&err, 0, &RequeuePolicy::default(), &mut rng()), None);
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
        assert!(d >= policy.backoff.base && d <= policy.backoff.base * 2, "{d:?}");
        let later = requeue_for(&unavailable, 20, &policy, &mut rng()).unwrap();
        assert!(later <= policy.backoff.base + policy.backoff.cap, "{later:?}");
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
}
