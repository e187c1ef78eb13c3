//! Network policy from the API server: watches over the objects policy
//! depends on, drained and coalesced per object in batches
//! (`crate::watch::batch`), a [`PolicySnapshot`] built once per batch, and `SextantIdentity` objects created for label sets this node
//! numbered first (create-if-absent: the API server's `AlreadyExists`
//! decides, so one number never means two label sets; the loser takes the
//! next number on its next sync).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    api::PostParams,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use sextant_crds::{SextantIdentity, SextantNetworkPolicy};
use tracing::{debug, warn};

use crate::{
    agent::Agent,
    policy::{PodInfo, PolicySnapshot},
    watch::batch::{self, Objects},
};

/// Serializes a typed object with its `apiVersion` and `kind`.
fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(o: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

/// The snapshot the stores describe (pure). Every node's InternalIPs go to
/// `nodes` (remote-node); those of Node `local_node` also to `host`.
pub fn snapshot(
    policies: &[Arc<SextantNetworkPolicy>],
    network_policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
    nodes: &[Arc<Node>],
    identities: &[Arc<SextantIdentity>],
    local_node: Option<&str>,
) -> PolicySnapshot {
    let mut snap = PolicySnapshot::default();
    snap.policies
        .extend(policies.iter().map(|p| with_type(p.as_ref())));
    snap.policies
        .extend(network_policies.iter().map(|p| with_type(p.as_ref())));
    for ns in namespaces {
        if let Some(name) = &ns.metadata.name {
            snap.namespaces
                .insert(name.clone(), ns.metadata.labels.clone().unwrap_or_default());
        }
    }
    for p in pods {
        let host_network = p
            .spec
            .as_ref()
            .and_then(|s| s.host_network)
            .unwrap_or(false);
        let (Some(ns), Some(name)) = (&p.metadata.namespace, &p.metadata.name) else {
            continue;
        };
        if host_network {
            continue;
        }
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        // As Cilium does: policies may select pods by service account.
        let labels = sextant_policy::pod_labels(
            p.metadata.labels.as_ref(),
            p.spec
                .as_ref()
                .and_then(|s| s.service_account_name.as_deref()),
        );
        snap.pods.push(PodInfo {
            namespace: ns.clone(),
            name: name.clone(),
            labels,
            ip,
        });
    }
    for n in nodes {
        let local = local_node.is_some() && n.metadata.name.as_deref() == local_node;
        let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addrs.into_iter().flatten() {
            if a.type_ == "InternalIP"
                && let Ok(ip) = a.address.parse::<Ipv4Addr>()
            {
                snap.nodes.push(ip);
                if local {
                    snap.host.push(ip);
                }
            }
        }
    }
    for i in identities {
        if let Some(id) = i.id() {
            snap.identities.insert(id, i.spec.labels.clone());
        }
    }
    snap
}

/// Creates `SextantIdentity/<id>` for each of `ids`; an existing object
/// (another node won, or this node published it before) is fine: the next
/// snapshot carries the binding.
pub async fn publish(api: &Api<SextantIdentity>, ids: &[(u32, BTreeMap<String, String>)]) -> usize {
    let mut created = 0;
    for (id, labels) in ids {
        match api
            .create(
                &PostParams::default(),
                &SextantIdentity::bind(*id, labels.clone()),
            )
            .await
        {
            Ok(_) => created += 1,
            Err(kube::Error::Api(s)) if s.code == 409 => {
                debug!(
                    id,
                    "identity already bound; the next sync reads the binding"
                );
            }
            Err(e) => warn!(id, error = %e, "creating SextantIdentity"),
        }
    }
    created
}

/// Posts the agent's pending policy Events on its Node (`node`); those the
/// API server refuses wait for the next try, and each refusal is a warning
/// with the API server's answer (a 403 means the agent's RBAC lacks
/// `events`: nobody would ever see the Event).
pub async fn post_events(agent: &Agent, recorder: &Recorder, node: &str) {
    let pending = agent.take_policy_events();
    let mut failed = Vec::new();
    for ev in pending {
        let event = Event {
            type_: if ev.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: ev.reason.to_string(),
            note: Some(ev.note.clone()),
            action: ev.reason.to_string(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(node.to_string()),
            ..Default::default()
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(error = %e, reason = ev.reason, %node, "posting a policy Event on the Node failed; kept for the next try");
            failed.push(ev);
        }
    }
    if !failed.is_empty() {
        agent.requeue_policy_events(failed);
    }
}

/// Watches policies, pods, namespaces, nodes and identities cluster-wide and
/// keeps the node's policy equal to what they say; posts policy Events
/// (fail-open engaged / restored) on Node `node`.
pub async fn watch(agent: Arc<Agent>, client: Client, node: String) {
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: sextant_crds::wellknown::FIELD_MANAGER_AGENT.into(),
            instance: Some(node.clone()),
        },
    );
    let events_loop = {
        let agent = agent.clone();
        let node = node.clone();
        let recorder = recorder.clone();
        async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                post_events(&agent, &recorder, &node).await;
            }
        }
    };
    tokio::join!(events_loop, sync_loop(agent, client, node));
}

/// One event of the policy loop's watches.
#[expect(
    clippy::large_enum_variant,
    reason = "each event moves once, from its stream into its kind's pending map; a box would cost an allocation per event"
)]
pub(crate) enum PolicyWatchEvent {
    /// A SextantNetworkPolicy changed.
    Policy(watcher::Event<SextantNetworkPolicy>),
    /// A NetworkPolicy changed.
    NetworkPolicy(watcher::Event<NetworkPolicy>),
    /// A Pod changed.
    Pod(watcher::Event<Pod>),
    /// A Namespace changed.
    Namespace(watcher::Event<Namespace>),
    /// A Node changed.
    Node(watcher::Event<Node>),
    /// A SextantIdentity changed.
    Identity(watcher::Event<SextantIdentity>),
}

/// The objects policy depends on, as the loop keeps them.
#[derive(Default)]
pub(crate) struct PolicyObjects {
    policies: Objects<SextantNetworkPolicy>,
    network_policies: Objects<NetworkPolicy>,
    pods: Objects<Pod>,
    namespaces: Objects<Namespace>,
    nodes: Objects<Node>,
    identities: Objects<SextantIdentity>,
    /// This node's name.
    local_node: Option<String>,
}

impl PolicyObjects {
    /// Takes one event; returns whether it coalesced into a pending change.
    fn push(&mut self, e: PolicyWatchEvent) -> bool {
        match e {
            PolicyWatchEvent::Policy(e) => self.policies.pending.push(e),
            PolicyWatchEvent::NetworkPolicy(e) => self.network_policies.pending.push(e),
            PolicyWatchEvent::Pod(e) => self.pods.pending.push(e),
            PolicyWatchEvent::Namespace(e) => self.namespaces.pending.push(e),
            PolicyWatchEvent::Node(e) => self.nodes.pending.push(e),
            PolicyWatchEvent::Identity(e) => self.identities.pending.push(e),
        }
    }

    fn pending(&self) -> usize {
        self.policies.pending.len()
            + self.network_policies.pending.len()
            + self.pods.pending.len()
            + self.namespaces.pending.len()
            + self.nodes.pending.len()
            + self.identities.pending.len()
    }

    fn ready(&self) -> bool {
        self.policies.pending.is_ready()
            || self.network_policies.pending.is_ready()
            || self.pods.pending.is_ready()
            || self.namespaces.pending.is_ready()
            || self.nodes.pending.is_ready()
            || self.identities.pending.is_ready()
    }

    fn apply(&mut self) -> usize {
        self.policies.apply()
            + self.network_policies.apply()
            + self.pods.apply()
            + self.namespaces.apply()
            + self.nodes.apply()
            + self.identities.apply()
    }

    fn snapshot(&self) -> PolicySnapshot {
        snapshot(
            &self.policies.values(),
            &self.network_policies.values(),
            &self.pods.values(),
            &self.namespaces.values(),
            &self.nodes.values(),
            &self.identities.values(),
            self.local_node.as_deref(),
        )
    }
}

/// The `watch` label of this loop's metrics.
const WATCH: &str = "policy";

async fn sync_loop(agent: Arc<Agent>, client: Client, node: String) {
    let events = futures::stream::select_all([
        batch::events(
            Api::<SextantNetworkPolicy>::all(client.clone()),
            PolicyWatchEvent::Policy,
        )
        .boxed(),
        batch::events(
            Api::<NetworkPolicy>::all(client.clone()),
            PolicyWatchEvent::NetworkPolicy,
        )
        .boxed(),
        batch::events(Api::<Pod>::all(client.clone()), PolicyWatchEvent::Pod).boxed(),
        batch::events(
            Api::<Namespace>::all(client.clone()),
            PolicyWatchEvent::Namespace,
        )
        .boxed(),
        batch::events(Api::<Node>::all(client.clone()), PolicyWatchEvent::Node).boxed(),
        batch::events(
            Api::<SextantIdentity>::all(client.clone()),
            PolicyWatchEvent::Identity,
        )
        .boxed(),
    ]);
    run(&agent, events, Some(Api::all(client)), Some(node)).await;
}

/// The loop: drain a batch of events, apply it, sync the node's policy
/// once to the snapshot of every object (the engine turns it into
/// incremental map writes), publish the identities this node chose; a
/// failed sync is retried with backoff. Until `events` ends. `node`: this
/// node's name, whose addresses get the `host` identity.
pub(crate) async fn run(
    agent: &Agent,
    events: impl Stream<Item = PolicyWatchEvent>,
    identities: Option<Api<SextantIdentity>>,
    node: Option<String>,
) {
    let mut events = std::pin::pin!(events);
    let mut objects = PolicyObjects {
        local_node: node,
        ..PolicyObjects::default()
    };
    let mut retries = batch::write_retries();
    let mut retry_at = None;
    loop {
        let (mut coalesced, mut high) = (0usize, 0usize);
        let d = batch::drain(&mut events, retry_at, |e| {
            coalesced += usize::from(objects.push(e));
            high = high.max(objects.pending());
        })
        .await;
        let ready = objects.ready();
        let applied = if ready { objects.apply() } else { 0 };
        agent
            .metrics
            .watch_batch(WATCH, d.events, coalesced, applied, high);
        if ready || d.timed_out {
            if d.timed_out {
                agent.metrics.write_retry(WATCH);
            }
            let snap = objects.snapshot();
            let given = snap.identities.clone();
            match agent.sync_policy(snap) {
                Ok(report) => {
                    retries.reset();
                    retry_at = None;
                    if report.changes > 0 {
                        debug!(changes = report.changes, objects = applied, "policy synced");
                    }
                }
                Err(e) => {
                    let wait = retries.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = %sextant_kit::ErrorChain(&e), retry_ms = wait.as_millis() as u64, "policy sync failed; will retry");
                    retry_at = Some(tokio::time::Instant::now() + wait);
                }
            }
            if let Some(api) = &identities {
                let unpublished = agent.unpublished_identities(&given);
                if !unpublished.is_empty() {
                    publish(api, &unpublished).await;
                }
            }
        }
        if d.ended {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus, PodSpec, PodStatus};
    use kube::{api::ObjectMeta, client::Body};
    use serde_json::{Value, json};

    use super::*;

    fn mk_pod(ns: &str, name: &str, app: &str, ip: Option<&str>, host: bool) -> Arc<Pod> {
        Arc::new(Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                labels: Some([("app".to_string(), app.to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                host_network: Some(host),
                service_account_name: Some(format!("{app}-sa")),
                ..Default::default()
            }),
            status: Some(PodStatus {
                pod_ip: ip.map(String::from),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn snapshot_carries_typed_policies_pods_namespaces_nodes_and_identities() {
        let pol: SextantNetworkPolicy = serde_json::from_value(json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": [{}]}
        }))
        .expect("policy");
        let np: NetworkPolicy = serde_json::from_value(json!({
            "metadata": {"name": "np", "namespace": "prod"},
            "spec": {"podSelector": {}}
        }))
        .expect("netpol");
        let ns = Arc::new(Namespace {
            metadata: ObjectMeta {
                name: Some("prod".into()),
                labels: Some([("team".to_string(), "a".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        });
        let node = Arc::new(Node {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: "192.168.1.10".into(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: "n1".into(),
                    },
                ]),
                ..Default::default()
            }),
            ..Default::default()
        });
        let mut remote = (*node).clone();
        remote.metadata.name = Some("n2".into());
        if let Some(a) = remote
            .status
            .as_mut()
            .and_then(|s| s.addresses.as_mut())
            .and_then(|a| a.first_mut())
        {
            a.address = "192.168.1.11".into();
        }
        let remote = Arc::new(remote);
        let id = Arc::new(SextantIdentity::bind(
            70_000,
            [("app".to_string(), "db".to_string())].into(),
        ));
        let snap = snapshot(
            &[Arc::new(pol)],
            &[Arc::new(np)],
            &[
                mk_pod("prod", "db-0", "db", Some("10.0.0.5"), false),
                mk_pod("prod", "pending", "db", None, false),
                mk_pod("kube-system", "proxy", "p", Some("192.168.1.10"), true),
            ],
            &[ns],
            &[node.clone(), remote],
            &[id],
            Some("n1"),
        );
        assert_eq!(snap.policies.len(), 2);
        assert_eq!(snap.policies[0]["kind"], "SextantNetworkPolicy");
        assert_eq!(snap.policies[1]["kind"], "NetworkPolicy");
        assert_eq!(snap.policies[1]["apiVersion"], "networking.k8s.io/v1");
        for p in &snap.policies {
            assert!(sextant_policy::parse_value(p).is_ok(), "{p}");
        }
        assert_eq!(
            snap.pods.len(),
            2,
            "hostNetwork pods have no identity of their own"
        );
        assert_eq!(snap.pods[0].ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(
            snap.pods[0].labels[sextant_policy::SERVICE_ACCOUNT_LABEL],
            "db-sa"
        );
        assert_eq!(snap.pods[1].ip, None);
        assert_eq!(snap.namespaces["prod"]["team"], "a");
        assert_eq!(
            snap.nodes,
            vec![
                Ipv4Addr::new(192, 168, 1, 10),
                Ipv4Addr::new(192, 168, 1, 11)
            ]
        );
        assert_eq!(
            snap.host,
            vec![Ipv4Addr::new(192, 168, 1, 10)],
            "only this node's own addresses are host"
        );
        assert_eq!(snap.identities[&70_000]["app"], "db");
    }

    #[tokio::test]
    async fn publish_creates_identities_and_takes_already_exists_in_stride() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<SextantIdentity> = Api::all(Client::new(svc, "default"));
        let server = tokio::spawn(async move {
            let mut names = Vec::new();
            for status in [201u16, 409] {
                let (req, send) = handle.next_request().await.expect("a request");
                assert_eq!(req.method(), http::Method::POST);
                assert_eq!(
                    req.uri().path(),
                    "/apis/sextant.io/v1alpha1/sextantidentities"
                );
                let body = req.into_body().collect_bytes().await.expect("body");
                let v: Value = serde_json::from_slice(&body).expect("json");
                names.push(
                    v["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
                let answer = if status == 201 {
                    v
                } else {
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                           "reason": "AlreadyExists", "code": 409, "message": "exists"})
                };
                send.send_response(
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                        .expect("response"),
                );
            }
            names
        });
        let created = publish(
            &api,
            &[
                (300, [("app".to_string(), "a".to_string())].into()),
                (301, [("app".to_string(), "b".to_string())].into()),
            ],
        )
        .await;
        assert_eq!(created, 1);
        assert_eq!(server.await.expect("server"), vec!["300", "301"]);
    }

    /// 10,000 events about 2,500 objects delivered at once reach the node's
    /// policy in bounded time, through the loop the agent runs; what waits
    /// is bounded by the distinct objects. (Before: one event per 100 ms,
    /// each followed by a full recompute: 1,000 s.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_policy_events_at_once_converge_with_pending_bounded_by_objects() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(crate::agent::Config {
            state_dir: dir.path().to_path_buf(),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let (policies, pods, versions) = (500u32, 2_000u32, 4u32);
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for v in 0..versions {
            for i in 0..policies {
                let pol: SextantNetworkPolicy = serde_json::from_value(json!({
                    "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
                    "metadata": {"name": format!("p{i}"), "namespace": "prod",
                                 "resourceVersion": v.to_string()},
                    "spec": {"endpointSelector": {"matchLabels": {"app": format!("a{}", i % 50)}},
                             "ingress": [{"fromEndpoints": [{"matchLabels": {"ver": v.to_string()}}]}]}
                }))
                .expect("policy");
                tx.unbounded_send(PolicyWatchEvent::Policy(watcher::Event::Apply(pol)))
                    .expect("send");
            }
            for i in 0..pods {
                let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 3, 0, 0)) + i);
                let mut pod = (*mk_pod(
                    "prod",
                    &format!("pod{i}"),
                    &format!("a{}", i % 50),
                    Some(&ip.to_string()),
                    false,
                ))
                .clone();
                pod.metadata
                    .labels
                    .get_or_insert_default()
                    .insert("ver".into(), v.to_string());
                tx.unbounded_send(PolicyWatchEvent::Pod(watcher::Event::Apply(pod)))
                    .expect("send");
            }
        }
        let started = std::time::Instant::now();
        let task = {
            let agent = agent.clone();
            tokio::spawn(async move { run(&agent, rx, None, None).await })
        };
        // Converged: every policy enforced, every pod's identity the one of
        // its last labels.
        let converged = || {
            let ids = agent.unpublished_identities(&BTreeMap::new());
            agent.policy_report().enforced.len() == policies as usize
                && ids.len() == 50
                && ids.iter().all(|(_, l)| {
                    l.get("k8s:ver").or(l.get("ver")).map(String::as_str) == Some("3")
                })
        };
        while !converged() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "not converged within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let took = started.elapsed();
        let text = agent.metrics_text();
        let value = |name: &str| -> f64 {
            text.lines()
                .find(|l| l.starts_with(name) && l.contains("watch=\"policy\""))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let high = value("sextant_agent_watch_pending_high_water");
        println!(
            "10,000 policy events: converged in {took:?}, pending high-water {high}, {} coalesced",
            value("sextant_agent_watch_events_coalesced_total")
        );
        assert_eq!(value("sextant_agent_watch_events_total"), 10_000.0);
        assert!(
            high > 0.0 && high <= f64::from(policies + pods),
            "high-water {high}"
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends with its stream")
            .expect("loop");
    }
}
