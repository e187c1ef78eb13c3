//! This node's NodeNetwork from the API server: the watch that applies
//! the pool and the release marks to the agent (answering the handshake as
//! soon as answers change) and the periodic usage report into its status.
//!
//! ```text
//!  NodeNetwork node ─watch─▶ Agent::apply_node ─answers─▶ checkpoint, status patch (release)
//!  every rate, or at once when an ADD found the pool empty:
//!      Agent::usage_merge_patch ─▶ status patch (usage), only when due
//! ```
//!
//! A node whose usage did not change writes nothing (at 6,000 nodes every
//! needless report is API server load); a quiet round makes one cheap
//! read instead, so the fail-open mode still knows the control plane is there.

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
/// every `rate` when it changed, at once when pods wait on an empty pool;
/// answers to the handshake are written as soon as they change.
pub async fn node_loops(agent: Arc<Agent>, api: Api<NodeNetwork>, node: String, rate: Duration) {
    let reporter = {
        let (agent, api, node) = (agent.clone(), api.clone(), node.clone());
        async move {
            let mut tick = tokio::time::interval(rate);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = agent.pool_starved() => {}
                }
                if let Some(patch) = agent.usage_merge_patch(&Default::default(), rate) {
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
                .backoff(crate::watch::WatchBackoff::new())
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
            if let Some(patch) = agent.usage_merge_patch(&answers, rate)
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

    async fn ready_agent(dir: &std::path::Path) -> Arc<Agent> {
        let agent = Agent::new(Config {
            state_dir: dir.to_path_buf(),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        agent
    }

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    /// The node loops of `agent` for `node-a` against a mock API server,
    /// reporting every hour (so any earlier report is one the agent chose).
    fn start_loops(agent: &Arc<Agent>) -> (tokio::task::JoinHandle<()>, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<NodeNetwork> = Api::all(Client::new(svc, "default"));
        let loops = tokio::spawn(node_loops(
            agent.clone(),
            api,
            "node-a".into(),
            Duration::from_secs(3600),
        ));
        (loops, handle)
    }

    /// The agent lists its NodeNetwork, answers the release mark it finds,
    /// and reports usage, all through the status subresource.
    #[tokio::test]
    async fn node_loop_answers_release_marks_and_reports_usage() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
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

        let (loops, mut handle) = start_loops(&agent);
        let mut answered = false;
        let mut reported = false;
        let mut held_watches = Vec::new();
        while !(answered && reported) {
            let Served::Patch(patch) = serve(&mut handle, &nn, &mut held_watches).await else {
                continue;
            };
            if let Some(release) = patch["status"].get("release") {
                assert_eq!(release["10.0.0.2"], "ready-for-release");
                answered = true;
            }
            assert!(patch["status"]["usage"]["reportedAt"].is_string());
            reported = true;
        }
        let h = agent.health();
        assert_eq!(
            (h.ipam.pool, h.ipam.free),
            (1, 1),
            "10.0.0.2 is held back for release"
        );
        loops.abort();
    }

    enum Served {
        Watch,
        List,
        /// A status PATCH, with its body.
        Patch(Value),
    }

    /// Answers one request of the node loops as the API server would for
    /// `nn` (watches are held open).
    async fn serve(
        handle: &mut Handle,
        nn: &NodeNetwork,
        held_watches: &mut Vec<tower_test::mock::SendResponse<Response<Body>>>,
    ) -> Served {
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
                Served::Watch
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
                Served::List
            }
            (http::Method::PATCH, "/apis/sextant.io/v1alpha1/nodenetworks/node-a/status") => {
                let body = req.into_body().collect_bytes().await.expect("body");
                let patch: Value = serde_json::from_slice(&body).expect("json");
                send.send_response(
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(nn).expect("json")))
                        .expect("response"),
                );
                Served::Patch(patch)
            }
            (m, p) => panic!("unexpected {m} {p}?{query}"),
        }
    }

    /// Pods refused for an empty pool reach the operator at once as
    /// `usage.pending`, not a report interval (here an hour) later.
    #[tokio::test]
    async fn pods_waiting_on_an_empty_pool_are_reported_at_once() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = ready_agent(dir.path()).await;
        let mut nn = NodeNetwork::new("node-a", Default::default());
        nn.metadata.resource_version = Some("7".into());
        nn.status = Some(NodeNetworkStatus {
            pool: [("10.0.0.1".to_string(), PoolEntry::default())].into(),
            ..Default::default()
        });
        let (loops, mut handle) = start_loops(&agent);
        let mut held_watches = Vec::new();
        // The first report, and the watch applying the pool.
        let (mut reported, mut listed) = (false, false);
        while !(reported && listed) {
            match serve(&mut handle, &nn, &mut held_watches).await {
                Served::Patch(_) => reported = true,
                Served::List => listed = true,
                Served::Watch => {}
            }
        }
        tokio::time::timeout(Duration::from_secs(10), async {
            while agent.health().ipam.pool == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the pool applied");
        for pod in ["a", "b", "c"] {
            let _ = agent
                .allocate(&sextant_agent_core::testing::mk_req(pod))
                .await;
        }
        let patch = loop {
            if let Served::Patch(p) = serve(&mut handle, &nn, &mut held_watches).await {
                break p;
            }
        };
        assert_eq!(patch["status"]["usage"]["pending"], 2, "{patch}");
        loops.abort();
    }
}
