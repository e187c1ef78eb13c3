//! Network policy from the API server: reflectors over the objects policy
//! depends on, a [`PolicySnapshot`] built from them after each burst of
//! events, and `SextantIdentity` objects created for label sets this node
//! numbered first (create-if-absent: the API server's `AlreadyExists`
//! decides, so one number never means two label sets; the loser takes the
//! next number on its next sync).

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::{
    core::v1::{Namespace, Node, Pod},
    networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client, Resource,
    api::PostParams,
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        reflector, watcher,
    },
};
use sextant_crds::{SextantIdentity, SextantNetworkPolicy};
use tracing::{debug, warn};

use crate::{
    agent::Agent,
    policy::{PodInfo, PolicySnapshot},
};

/// Serializes a typed object with its `apiVersion` and `kind`.
fn with_type<K: Resource<DynamicType = ()> + serde::Serialize>(o: &K) -> serde_json::Value {
    let mut v = serde_json::to_value(o).unwrap_or_default();
    v["apiVersion"] = K::api_version(&()).into();
    v["kind"] = K::kind(&()).into();
    v
}

/// The snapshot the stores describe (pure).
pub fn snapshot(
    policies: &[Arc<SextantNetworkPolicy>],
    network_policies: &[Arc<NetworkPolicy>],
    pods: &[Arc<Pod>],
    namespaces: &[Arc<Namespace>],
    nodes: &[Arc<Node>],
    identities: &[Arc<SextantIdentity>],
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
        let addrs = n.status.as_ref().and_then(|s| s.addresses.as_ref());
        for a in addrs.into_iter().flatten() {
            if a.type_ == "InternalIP"
                && let Ok(ip) = a.address.parse::<Ipv4Addr>()
            {
                snap.nodes.push(ip);
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
    tokio::join!(events_loop, sync_loop(agent, client));
}

async fn sync_loop(agent: Arc<Agent>, client: Client) {
    let (pol_store, pol_w) = reflector::store::<SextantNetworkPolicy>();
    let (np_store, np_w) = reflector::store::<NetworkPolicy>();
    let (pod_store, pod_w) = reflector::store::<Pod>();
    let (ns_store, ns_w) = reflector::store::<Namespace>();
    let (node_store, node_w) = reflector::store::<Node>();
    let (id_store, id_w) = reflector::store::<SextantIdentity>();
    let cfg = watcher::Config::default;
    let streams = futures::stream::select_all([
        watcher(Api::<SextantNetworkPolicy>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(pol_w)
            .map(|e| e.is_ok())
            .boxed(),
        watcher(Api::<NetworkPolicy>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(np_w)
            .map(|e| e.is_ok())
            .boxed(),
        watcher(Api::<Pod>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(pod_w)
            .map(|e| e.is_ok())
            .boxed(),
        watcher(Api::<Namespace>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(ns_w)
            .map(|e| e.is_ok())
            .boxed(),
        watcher(Api::<Node>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(node_w)
            .map(|e| e.is_ok())
            .boxed(),
        watcher(Api::<SextantIdentity>::all(client.clone()), cfg())
            .backoff(crate::watch::WatchBackoff::new())
            .reflect(id_w)
            .map(|e| e.is_ok())
            .boxed(),
    ]);
    let identities: Api<SextantIdentity> = Api::all(client);
    let mut events = std::pin::pin!(streams);
    while let Some(ok) = events.next().await {
        if !ok {
            continue;
        }
        // Let a burst of events land before recomputing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let snap = snapshot(
            &pol_store.state(),
            &np_store.state(),
            &pod_store.state(),
            &ns_store.state(),
            &node_store.state(),
            &id_store.state(),
        );
        let given = snap.identities.clone();
        match agent.sync_policy(snap) {
            Ok(report) => {
                if report.changes > 0 {
                    debug!(changes = report.changes, "policy synced");
                }
            }
            Err(e) => warn!(error = %sextant_kit::ErrorChain(&e), "policy sync"),
        }
        let unpublished = agent.unpublished_identities(&given);
        if !unpublished.is_empty() {
            publish(&identities, &unpublished).await;
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
            &[node],
            &[id],
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
        assert_eq!(snap.nodes, vec![Ipv4Addr::new(192, 168, 1, 10)]);
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
}
