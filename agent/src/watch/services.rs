//! ClusterIP services for the datapath: the watch loop over Services and
//! EndpointSlices that applies `sextant_agent_core::services`' pure
//! translation ([`desired`]) and diff ([`diff`]) to the datapath.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tracing::warn;

use sextant_agent_core::services::{desired, diff};

use crate::agent::Agent;

/// Watches Services and EndpointSlices cluster-wide and keeps the datapath's
/// service maps equal to [`desired`].
pub async fn watch(agent: Arc<Agent>, client: Client) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (eps_store, eps_writer) = reflector::store::<EndpointSlice>();
    let svcs = watcher(
        Api::<Service>::all(client.clone()),
        watcher::Config::default(),
    )
    .backoff(crate::watch::WatchBackoff::new())
    .reflect(svc_writer)
    .map(|_| ());
    let eps = watcher(
        Api::<EndpointSlice>::all(client),
        watcher::Config::default(),
    )
    .backoff(crate::watch::WatchBackoff::new())
    .reflect(eps_writer)
    .map(|_| ());
    let mut events = std::pin::pin!(futures::stream::select(svcs, eps));
    let mut installed = BTreeMap::new();
    while events.next().await.is_some() {
        // Let a burst of events land before recomputing.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let want = desired(&svc_store.state(), &eps_store.state());
        for spec in diff(&installed, &want) {
            if let Err(e) = agent.set_service(&spec) {
                warn!(error = %sextant_kit::ErrorChain(&e), vip = %spec.frontend.vip, "programming service");
            }
        }
        installed = want;
    }
}

#[cfg(test)]
mod kube_tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use sextant_agent_core::testing::{mk_slice, mk_svc};

    use super::*;
    use crate::agent::Config;

    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = crate::datapath::remove_pins(&self.0);
        }
    }

    /// Services and EndpointSlices listed from the API server end up in the
    /// datapath's service map.
    #[tokio::test]
    async fn watched_cluster_ip_is_programmed_into_the_datapath() {
        let test = format!(
            "{}: {}",
            file!(),
            sextant_testkit::current_test("watched_cluster_ip_is_programmed_into_the_datapath")
        );
        if !sextant_testkit::require(
            sextant_testkit::Tier::Kernel,
            sextant_testkit::root_unavailable(),
            &test,
        ) {
            return;
        }
        let root = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/sextant-test-svcwatch-{}",
            std::process::id()
        ));
        let _pins = Pins(root.clone());
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(Config {
            state_dir: dir.path().to_path_buf(),
            bpf_root: Some(root),
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let svc = mk_svc("web", "10.96.5.5", 80);
        let slice = mk_slice("web", &[("10.0.0.9", true), ("10.0.0.10", true)], 8080);

        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let watch = tokio::spawn(super::watch(agent.clone(), client));
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while agent.health().datapath.services == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "service never programmed"
            );
            let Ok(Some((req, send))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            else {
                continue;
            };
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            let body = match path.as_str() {
                "/api/v1/services" => json!({"apiVersion": "v1", "kind": "ServiceList",
                    "metadata": {"resourceVersion": "1"}, "items": [svc.as_ref()]}),
                "/apis/discovery.k8s.io/v1/endpointslices" => {
                    json!({"apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"}, "items": [slice.as_ref()]})
                }
                other => panic!("unexpected request {other}?{query}"),
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        assert_eq!(agent.health().datapath.services, 1);
        watch.abort();
    }
}
