//! The kube-runtime shell of the policy status controller: one `Controller`
//! per policy source, reconciles that parse, [`judge`], write the status when
//! it changed and publish a Warning Event when a policy is refused.
//!
//! ```text
//!  Controller<SextantNetworkPolicy> ─▶ reconcile_sextant ─▶ judge ─▶ next_status? ─▶ PATCH …/status (merge)
//!                                                                                └─▶ Event (refused)
//!  Controller<NetworkPolicy> ───────▶ reconcile_kubernetes ─▶ judge ─▶ index news? ─▶ Event (refused)
//!  every PRUNE_EVERY: index.retain(what the watch caches hold) ─▶ gauge
//! ```

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt, future};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use rand::{SeedableRng, rngs::SmallRng};
use serde_json::json;
use sextant_cloud::Backoff;
use sextant_crds::{SextantNetworkPolicy, wellknown::FIELD_MANAGER_OPERATOR};
use sextant_kit::{ErrorChain, sync::lock};
use tracing::{debug, info, instrument, warn};

use super::{
    index::{PolicyIndex, PolicyKey, Source},
    plan::{Refusal, Verdict, judge, next_status},
};
use crate::{
    apiserver::{Clock, is_conflict},
    metrics::PolicyMetrics,
};

/// How often an accepted policy is looked at again without a change.
pub(crate) const RESYNC: Duration = Duration::from_secs(300);
/// How often the index drops policies the watch caches no longer hold
/// (kube-runtime's controller does not reconcile deleted objects).
pub(crate) const PRUNE_EVERY: Duration = Duration::from_secs(30);
/// Event action of the Warning Events.
pub(crate) const EVENT_ACTION: &str = "Enforce";

/// Why a policy reconcile failed. A refused policy is not an error: its
/// condition and Event say why, and it waits for a change.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PolicyStatusError {
    /// Writing the status failed.
    #[error("{policy}: writing status")]
    WriteStatus {
        /// The policy.
        policy: PolicyKey,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl PolicyStatusError {
    /// Label for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            PolicyStatusError::WriteStatus { source, .. } if is_conflict(source) => "kube_conflict",
            PolicyStatusError::WriteStatus { .. } => "kube",
        }
    }
}

/// What the policy controllers work with.
pub(crate) struct PolicyContext {
    client: Client,
    recorder: Recorder,
    index: PolicyIndex,
    metrics: PolicyMetrics,
    clock: Clock,
    backoff: Backoff,
    failures: Mutex<HashMap<PolicyKey, u32>>,
    rng: Mutex<SmallRng>,
}

impl PolicyContext {
    /// A context writing through `client`, reading time from `clock`.
    pub(crate) fn new(client: Client, metrics: PolicyMetrics, clock: Clock) -> Self {
        PolicyContext {
            recorder: Recorder::new(
                client.clone(),
                Reporter {
                    controller: FIELD_MANAGER_OPERATOR.into(),
                    instance: std::env::var("HOSTNAME").ok(),
                },
            ),
            client,
            index: PolicyIndex::default(),
            metrics,
            clock,
            backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(300),
                ..Backoff::default()
            },
            failures: Mutex::default(),
            rng: Mutex::new(SmallRng::from_os_rng()),
        }
    }

    /// Its metrics.
    pub(crate) fn metrics(&self) -> &PolicyMetrics {
        &self.metrics
    }

    /// Records a verdict and refreshes the gauge; returns whether the
    /// refusal is news (see [`PolicyIndex::apply`]).
    fn record(&self, key: &PolicyKey, verdict: &Verdict, generation: Option<i64>) -> bool {
        let news = self.index.apply(key, verdict, generation);
        self.refresh_gauge();
        lock(&self.failures).remove(key);
        news
    }

    fn refresh_gauge(&self) {
        let c = self.index.counts();
        self.metrics.set_policies(c.accepted, c.rejected);
    }

    /// Drops from the index the policies of `source` that `present` says
    /// are gone.
    pub(crate) fn prune(&self, source: Source, present: impl Fn(&PolicyKey) -> bool) {
        lock(&self.failures).retain(|k, _| k.source != source || present(k));
        self.index.retain(source, present);
        self.refresh_gauge();
    }

    /// Publishes the Warning Event of a refusal on `regarding`; a failed
    /// publish is logged, never fatal.
    async fn warn(
        &self,
        key: &PolicyKey,
        regarding: &k8s_openapi::api::core::v1::ObjectReference,
        r: &Refusal,
    ) {
        let ev = Event {
            type_: EventType::Warning,
            reason: r.reason.to_owned(),
            note: Some(r.note.clone()),
            action: EVENT_ACTION.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, regarding).await {
            warn!(policy = %key, error = %ErrorChain(&e), "publishing the refusal event failed");
        }
    }
}

fn key_of<K: ResourceExt>(source: Source, obj: &K) -> PolicyKey {
    PolicyKey {
        source,
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

/// The requeue after a verdict: accepted policies are looked at again every
/// [`RESYNC`]; refused ones when they change.
fn settled(verdict: &Verdict) -> Action {
    if verdict.accepted() {
        Action::requeue(RESYNC)
    } else {
        Action::await_change()
    }
}

/// Reconciles one SextantNetworkPolicy: parse, then write `status` only
/// when it changed, with a Warning Event when that write refuses it.
#[instrument(skip_all, fields(policy = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())))]
pub(crate) async fn reconcile_sextant(
    p: Arc<SextantNetworkPolicy>,
    ctx: Arc<PolicyContext>,
) -> Result<Action, PolicyStatusError> {
    let key = key_of(Source::Sextant, p.as_ref());
    let generation = p.metadata.generation;
    let verdict = judge(&sextant_policy::from_sextant(&p), generation, (ctx.clock)());
    ctx.record(&key, &verdict, generation);
    let Some(status) = next_status(p.status.as_ref(), &verdict, generation) else {
        debug!("status unchanged");
        return Ok(settled(&verdict));
    };
    let api: Api<SextantNetworkPolicy> = Api::namespaced(ctx.client.clone(), &key.namespace);
    let pp = PatchParams {
        field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
        ..PatchParams::default()
    };
    api.patch_status(&key.name, &pp, &Patch::Merge(&json!({ "status": status })))
        .await
        .map_err(|source| PolicyStatusError::WriteStatus {
            policy: key.clone(),
            source,
        })?;
    match &verdict.refusal {
        None => info!(?generation, "policy accepted"),
        Some(r) => {
            warn!(?generation, reason = r.reason, problems = %r.note, "policy refused");
            ctx.warn(&key, &p.object_ref(&()), r).await;
        }
    }
    Ok(settled(&verdict))
}

/// Reconciles one NetworkPolicy: parse, and publish a Warning Event the
/// first time a version of it is refused (it has no status Sextant owns).
#[instrument(skip_all, fields(policy = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())))]
pub(crate) async fn reconcile_kubernetes(
    p: Arc<NetworkPolicy>,
    ctx: Arc<PolicyContext>,
) -> Result<Action, PolicyStatusError> {
    let key = key_of(Source::Kubernetes, p.as_ref());
    let generation = p.metadata.generation;
    let verdict = judge(
        &sextant_policy::from_network_policy(&p),
        generation,
        (ctx.clock)(),
    );
    if ctx.record(&key, &verdict, generation)
        && let Some(r) = &verdict.refusal
    {
        warn!(?generation, reason = r.reason, problems = %r.note, "NetworkPolicy refused");
        ctx.warn(&key, &p.object_ref(&()), r).await;
    }
    Ok(settled(&verdict))
}

/// Counts the failure and picks the requeue: a conflict at once, anything
/// else with jittered exponential backoff per policy.
pub(crate) fn error_policy<K: ResourceExt>(
    source: Source,
) -> impl Fn(Arc<K>, &PolicyStatusError, Arc<PolicyContext>) -> Action {
    move |obj, err, ctx| {
        ctx.metrics.error(err.metric_label());
        let key = key_of(source, obj.as_ref());
        let attempt = {
            let mut f = lock(&ctx.failures);
            let n = f.entry(key.clone()).or_insert(0);
            let before = *n;
            *n = n.saturating_add(1);
            before
        };
        let after = match err {
            PolicyStatusError::WriteStatus { source, .. } if is_conflict(source) => Duration::ZERO,
            PolicyStatusError::WriteStatus { .. } => {
                ctx.backoff
                    .delay(attempt, Some(ctx.backoff.base), &mut *lock(&ctx.rng))
            }
        };
        warn!(policy = %key, error = %ErrorChain(err), kind = err.metric_label(), attempt, ?after, "policy reconcile failed");
        Action::requeue(after)
    }
}

/// Drops from the index, every [`PRUNE_EVERY`], the policies of `source`
/// that `store` no longer holds; starts once the store is filled.
async fn prune<K>(ctx: Arc<PolicyContext>, source: Source, store: Store<K>)
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    if store.wait_until_ready().await.is_err() {
        return;
    }
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tick.tick().await;
        ctx.prune(source, |k| {
            store
                .get(&ObjectRef::new(&k.name).within(&k.namespace))
                .is_some()
        });
    }
}

/// Runs both policy controllers (and their index pruning) until the
/// watches end; `concurrency` policies of each source are reconciled at once.
pub(crate) async fn run(ctx: Arc<PolicyContext>, concurrency: u16) {
    let config = controller::Config::default().concurrency(concurrency);
    let sextant = Controller::new(
        Api::<SextantNetworkPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .with_config(config.clone());
    let sextant_store = sextant.store();
    let sextant = sextant
        .run(
            reconcile_sextant,
            error_policy::<SextantNetworkPolicy>(Source::Sextant),
            ctx.clone(),
        )
        .for_each(|r| {
            if let Err(e) = r {
                debug!(error = %ErrorChain(&e), "SextantNetworkPolicy controller");
            }
            future::ready(())
        });
    let kubernetes = Controller::new(
        Api::<NetworkPolicy>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .with_config(config);
    let kubernetes_store = kubernetes.store();
    let kubernetes = kubernetes
        .run(
            reconcile_kubernetes,
            error_policy::<NetworkPolicy>(Source::Kubernetes),
            ctx.clone(),
        )
        .for_each(|r| {
            if let Err(e) = r {
                debug!(error = %ErrorChain(&e), "NetworkPolicy controller");
            }
            future::ready(())
        });
    tokio::select! {
        _ = future::join(sextant, kubernetes) => warn!("policy watches ended"),
        () = prune(ctx.clone(), Source::Sextant, sextant_store) => {},
        () = prune(ctx.clone(), Source::Kubernetes, kubernetes_store) => {},
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use http::Method;
    use jiff::Timestamp;
    use serde_json::Value;
    use sextant_crds::REASON_UNSUPPORTED;

    use super::*;
    use sextant_kit::testing::{ApiServerVerifier, finish, mock_client, status_failure};

    const NOW: &str = "2026-11-25T12:00:00Z";
    const STATUS: &str = "/apis/sextant.io/v1alpha1/namespaces/shop/sextantnetworkpolicies/db/status?&fieldManager=sextant-operator";
    const L7_PATH: &str = "spec.ingress[0].toPorts[0].rules";

    fn context_at(now: &str) -> (Arc<PolicyContext>, ApiServerVerifier) {
        let (client, server) = mock_client();
        let now: Timestamp = now.parse().unwrap();
        let ctx = PolicyContext::new(client, PolicyMetrics::default(), Arc::new(move || now));
        (Arc::new(ctx), server)
    }

    /// The seed's example policy (only `app=employee` reaches
    /// `app=protected-db` on TCP 6379), with `extra` merged into its
    /// ingress rule's `toPorts[0]`.
    fn snp(extra: Value) -> SextantNetworkPolicy {
        let mut port_rule = json!({ "ports": [{ "port": "6379", "protocol": "TCP" }] });
        if let (Some(p), Value::Object(extra)) = (port_rule.as_object_mut(), extra) {
            p.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
            "metadata": { "name": "db", "namespace": "shop", "generation": 3, "uid": "u-1" },
            "spec": {
                "endpointSelector": { "matchLabels": { "app": "protected-db" } },
                "ingress": [{
                    "fromEndpoints": [{ "matchLabels": { "app": "employee" } }],
                    "toPorts": [port_rule],
                }],
            },
        }))
        .unwrap()
    }

    fn l7() -> Value {
        json!({ "rules": { "http": [{ "method": "GET", "path": "/public" }] } })
    }

    fn accepted_of(status: &Value) -> &Value {
        status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Accepted"))
            .unwrap_or_else(|| panic!("no Accepted condition in {status}"))
    }

    #[tokio::test]
    async fn an_enforceable_policy_gets_accepted_true_and_no_event() {
        let (ctx, mut server) = context_at(NOW);
        let p = snp(json!({}));
        let reply = json!(p);
        let script = tokio::spawn(async move {
            let seen = server.expect(Method::PATCH, STATUS, 200, reply).await;
            server.expect_no_more().await;
            seen
        });
        let action = reconcile_sextant(Arc::new(p), ctx.clone()).await.unwrap();
        let metrics = ctx.metrics().clone();
        drop(ctx);
        let seen = finish(script).await;
        assert_eq!(action, Action::requeue(RESYNC));
        assert_eq!(
            seen.content_type.as_deref(),
            Some("application/merge-patch+json")
        );
        let status = &seen.body["status"];
        assert_eq!(status["observedGeneration"], 3);
        let c = accepted_of(status);
        assert_eq!(
            (&c["status"], &c["reason"], &c["observedGeneration"]),
            (&json!("True"), &json!("Enforced"), &json!(3))
        );
        assert_eq!(c["lastTransitionTime"], NOW);
        assert_eq!(metrics.policies("accepted"), 1);
        assert_eq!(metrics.policies("rejected"), 0);
    }

    #[tokio::test]
    async fn an_l7_policy_is_refused_as_unsupported_by_field_path_with_a_warning_event() {
        let (ctx, mut server) = context_at(NOW);
        let p = snp(l7());
        let reply = json!(p);
        let script = tokio::spawn(async move {
            let status = server.expect(Method::PATCH, STATUS, 200, reply).await;
            let event = server.expect_event("shop").await;
            server.expect_no_more().await;
            (status, event)
        });
        let action = reconcile_sextant(Arc::new(p), ctx.clone()).await.unwrap();
        let metrics = ctx.metrics().clone();
        drop(ctx);
        let (status, event) = finish(script).await;
        assert_eq!(
            action,
            Action::await_change(),
            "nothing to retry until it changes"
        );
        let c = accepted_of(&status.body["status"]);
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], REASON_UNSUPPORTED);
        let message = c["message"].as_str().unwrap();
        assert!(message.contains(L7_PATH), "{message}");
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], REASON_UNSUPPORTED);
        assert_eq!(event.body["action"], EVENT_ACTION);
        assert!(
            event.body["note"].as_str().unwrap().contains(L7_PATH),
            "{}",
            event.body["note"]
        );
        let regarding = &event.body["regarding"];
        assert_eq!(regarding["kind"], "SextantNetworkPolicy");
        assert_eq!(regarding["apiVersion"], "sextant.io/v1alpha1");
        assert_eq!(regarding["namespace"], "shop");
        assert_eq!(regarding["name"], "db");
        assert_eq!(regarding["uid"], "u-1");
        assert_eq!(metrics.policies("accepted"), 0);
        assert_eq!(metrics.policies("rejected"), 1);
    }

    #[tokio::test]
    async fn an_unchanged_status_is_not_written_again_nor_the_event_repeated() {
        // The status a reconcile an hour ago wrote, for both verdicts.
        for extra in [json!({}), l7()] {
            let mut p = snp(extra);
            let earlier = judge(
                &sextant_policy::from_sextant(&p),
                Some(3),
                "2026-11-25T11:00:00Z".parse().unwrap(),
            );
            p.status = next_status(None, &earlier, Some(3));
            let (ctx, server) = context_at(NOW);
            reconcile_sextant(Arc::new(p), ctx.clone()).await.unwrap();
            let metrics = ctx.metrics().clone();
            drop(ctx);
            server.expect_no_more().await;
            assert_eq!(
                metrics.policies("accepted") + metrics.policies("rejected"),
                1,
                "the gauge still counts it"
            );
        }
    }

    #[tokio::test]
    async fn a_new_generation_is_written_even_with_the_same_verdict() {
        let mut p = snp(json!({}));
        let earlier = judge(
            &sextant_policy::from_sextant(&p),
            Some(2),
            NOW.parse().unwrap(),
        );
        p.status = next_status(None, &earlier, Some(2));
        let (ctx, mut server) = context_at(NOW);
        let reply = json!(p);
        let script = tokio::spawn(async move {
            let seen = server.expect(Method::PATCH, STATUS, 200, reply).await;
            server.expect_no_more().await;
            seen
        });
        reconcile_sextant(Arc::new(p), ctx.clone()).await.unwrap();
        drop(ctx);
        let seen = finish(script).await;
        assert_eq!(seen.body["status"]["observedGeneration"], 3);
        assert_eq!(accepted_of(&seen.body["status"])["observedGeneration"], 3);
    }

    #[tokio::test]
    async fn a_status_conflict_requeues_at_once_and_publishes_nothing() {
        let (ctx, mut server) = context_at(NOW);
        let p = Arc::new(snp(l7()));
        let script = tokio::spawn(async move {
            server
                .expect(Method::PATCH, STATUS, 409, status_failure(409, "Conflict"))
                .await;
            server.expect_no_more().await;
        });
        let err = reconcile_sextant(p.clone(), ctx.clone()).await.unwrap_err();
        assert_eq!(err.metric_label(), "kube_conflict");
        let action = error_policy::<SextantNetworkPolicy>(Source::Sextant)(p, &err, ctx.clone());
        assert_eq!(action, Action::requeue(Duration::ZERO));
        drop(ctx);
        finish(script).await;
    }

    fn network_policy(port: Value) -> Arc<NetworkPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": { "name": "web", "namespace": "shop", "generation": 1 },
                "spec": {
                    "podSelector": { "matchLabels": { "app": "web" } },
                    "ingress": [{ "ports": [{ "port": port, "protocol": "TCP" }] }],
                },
            }))
            .unwrap(),
        )
    }

    #[tokio::test]
    async fn a_network_policy_with_a_named_port_gets_one_warning_event_and_no_write() {
        let (ctx, mut server) = context_at(NOW);
        let np = network_policy(json!("http"));
        let script = tokio::spawn(async move {
            let event = server.expect_event("shop").await;
            server.expect_no_more().await;
            event
        });
        // The periodic requeue (and a resync) sees it again: one Event.
        for _ in 0..2 {
            let action = reconcile_kubernetes(np.clone(), ctx.clone()).await.unwrap();
            assert_eq!(action, Action::await_change());
        }
        let ok = reconcile_kubernetes(network_policy(json!(8080)), ctx.clone())
            .await
            .unwrap();
        assert_eq!(ok, Action::requeue(RESYNC));
        let metrics = ctx.metrics().clone();
        drop(ctx);
        let event = finish(script).await;
        assert_eq!(event.body["type"], "Warning");
        assert_eq!(event.body["reason"], REASON_UNSUPPORTED);
        let note = event.body["note"].as_str().unwrap();
        assert!(note.contains("spec.ingress[0].ports[0].port"), "{note}");
        assert_eq!(event.body["regarding"]["kind"], "NetworkPolicy");
        assert_eq!(
            event.body["regarding"]["apiVersion"],
            "networking.k8s.io/v1"
        );
        // Same key, now accepted.
        assert_eq!(metrics.policies("accepted"), 1);
        assert_eq!(metrics.policies("rejected"), 0);
    }

    #[tokio::test]
    async fn pruning_drops_deleted_policies_from_the_gauge() {
        let (ctx, server) = context_at(NOW);
        let mut p = snp(json!({}));
        let v = judge(
            &sextant_policy::from_sextant(&p),
            Some(3),
            NOW.parse().unwrap(),
        );
        p.status = next_status(None, &v, Some(3));
        reconcile_sextant(Arc::new(p), ctx.clone()).await.unwrap();
        assert_eq!(ctx.metrics().policies("accepted"), 1);
        ctx.prune(Source::Kubernetes, |_| false);
        assert_eq!(
            ctx.metrics().policies("accepted"),
            1,
            "other source untouched"
        );
        ctx.prune(Source::Sextant, |_| false);
        assert_eq!(ctx.metrics().policies("accepted"), 0);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn failure_counts_of_ten_thousand_deleted_policies_are_dropped() {
        let (ctx, server) = context_at(NOW);
        let policy = error_policy::<SextantNetworkPolicy>(Source::Sextant);
        for i in 0..10_000 {
            let mut p = snp(json!({}));
            p.metadata.name = Some(format!("gone-{i}"));
            let key = key_of(Source::Sextant, &p);
            let err = PolicyStatusError::WriteStatus {
                policy: key,
                source: kube::Error::Api(
                    kube::core::Status::failure("x", "InternalError")
                        .with_code(500)
                        .boxed(),
                ),
            };
            policy(Arc::new(p), &err, ctx.clone());
        }
        assert_eq!(lock(&ctx.failures).len(), 10_000);
        ctx.prune(Source::Kubernetes, |_| false);
        assert_eq!(lock(&ctx.failures).len(), 10_000, "other source untouched");
        ctx.prune(Source::Sextant, |_| false);
        assert_eq!(lock(&ctx.failures).len(), 0);
        drop(ctx);
        server.expect_no_more().await;
    }
}
