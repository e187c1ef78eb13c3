//! This node's NodeNetwork from the API server: the watch that applies
//! the pool and the release marks to the agent (answering the handshake as
//! soon as answers change) and the periodic usage report into its status.
//!
//! ```text
//!  NodeNetwork node ─watch─▶ Agent::apply_node ─answers─▶ checkpoint, status patch (release)
//!  every rate: Agent::usage_merge_patch ─▶ status patch (usage, pool)
//! ```

use std::{sync::Arc, time::Duration};

use futures::StreamExt;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use sextant_crds::NodeNetwork;
use sextant_kit::ErrorChain;
use tracing::warn;

use crate::{agent::Agent, usage};

/// Watches this node's NodeNetwork (pool, release marks) and reports usage
/// every `rate`; answers to the handshake are written as soon as they change.
pub async fn node_loops(agent: Arc<Agent>, api: Api<NodeNetwork>, node: String, rate: Duration) {
    let reporter = {
        let (agent, api, node) = (agent.clone(), api.clone(), node.clone());
        async move {
            let mut tick = tokio::time::interval(rate);
            loop {
                tick.tick().await;
                if let Some(patch) = agent.usage_merge_patch(&Default::default()) {
                    match usage::write(&api, &node, &patch).await {
                        Ok(()) => {
                            agent.metrics.reports.inc();
                            agent.control_plane_seen();
                        }
                        Err(e) => {
                            agent.metrics.error(&e);
                            warn!(error = %ErrorChain(&e), %node, "usage report failed");
                        }
                    }
                } else if api.get_metadata(&node).await.is_ok() {
                    // Nothing to report: a cheap read tells the control plane is there.
                    agent.control_plane_seen();
                }
            }
        }
    };
    let watch = async move {
        let cfg = watcher::Config::default().fields(&format!("metadata.name={node}"));
        let mut stream = std::pin::pin!(
            watcher(api.clone(), cfg)
                .default_backoff()
                .applied_objects()
        );
        while let Some(ev) = stream.next().await {
            let nn = match ev {
                Ok(nn) => nn,
                Err(e) => {
                    warn!(error = %e, %node, "NodeNetwork watch");
                    continue;
                }
            };
            let answers = agent.apply_node(&nn);
            if answers.is_empty() {
                continue;
            }
            if let Err(e) = agent.save().await {
                warn!(error = %ErrorChain(&e), "checkpoint after handshake");
            }
            if let Some(patch) = agent.usage_merge_patch(&answers)
                && let Err(e) = usage::write(&api, &node, &patch).await
            {
                agent.metrics.error(&e);
                warn!(error = %ErrorChain(&e), %node, "handshake answer failed");
            }
        }
    };
    tokio::join!(reporter, watch);
}

#[cfg(test)]
mod kube_tests {
    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::{Value, json};
    use sextant_crds::{NodeNetworkStatus, PoolEntry, ReleaseState};

    use kube::Client;

    use super::*;
    use crate::agent::Config;

    /// The agent lists its NodeNetwork, answers the release mark it finds,
    /// and reports usage, all through the status subresource.
    #[tokio::test]
    async fn node_loop_answers_release_marks_and_reports_usage() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(Config {
            state_dir: dir.path().to_path_buf(),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let mut nn = NodeNetwork::new("node-a", Default::default());
        nn.metadata.resource_version = Some("7".into());
        nn.status = Some(NodeNetworkStatus {
            pool: ["10.0.0.1", "10.0.0.2"]
                .iter()
                .map(|ip| (ip.to_string(), PoolEntry::default()))
                .collect(),
            release: [("10.0.0.2".to_string(), ReleaseState::Marked)].into(),
            ..Default::default()
        });

        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<NodeNetwork> = Api::all(Client::new(svc, "default"));
        let loops = tokio::spawn(node_loops(
            agent.clone(),
            api,
            "node-a".into(),
            Duration::from_secs(3600),
        ));
        let mut answered = false;
        let mut reported = false;
        let mut held_watches = Vec::new();
        while !(answered && reported) {
            let (req, send) = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
                .await
                .expect("a request in time")
                .expect("a request");
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            match (req.method().clone(), path.as_str()) {
                (http::Method::GET, "/apis/sextant.io/v1alpha1/nodenetworks")
                    if query.contains("watch=true") =>
                {
                    held_watches.push(send);
                }
                (http::Method::GET, "/apis/sextant.io/v1alpha1/nodenetworks") => {
                    assert!(
                        query.contains("fieldSelector=metadata.name%3Dnode-a"),
                        "{query}"
                    );
                    let list = json!({
                        "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetworkList",
                        "metadata": {"resourceVersion": "7"}, "items": [nn],
                    });
                    send.send_response(
                        Response::builder()
                            .body(Body::from(list.to_string().into_bytes()))
                            .expect("response"),
                    );
                }
                (http::Method::PATCH, "/apis/sextant.io/v1alpha1/nodenetworks/node-a/status") => {
                    let body = req.into_body().collect_bytes().await.expect("body");
                    let patch: Value = serde_json::from_slice(&body).expect("json");
                    if let Some(release) = patch["status"].get("release") {
                        assert_eq!(release["10.0.0.2"], "ready-for-release");
                        answered = true;
                    }
                    assert!(patch["status"]["usage"]["reportedAt"].is_string());
                    reported = true;
                    send.send_response(
                        Response::builder()
                            .body(Body::from(serde_json::to_vec(&nn).expect("json")))
                            .expect("response"),
                    );
                }
                (m, p) => panic!("unexpected {m} {p}?{query}"),
            }
        }
        let h = agent.health();
        assert_eq!(
            (h.ipam.pool, h.ipam.free),
            (1, 1),
            "10.0.0.2 is held back for release"
        );
        loops.abort();
    }
}
