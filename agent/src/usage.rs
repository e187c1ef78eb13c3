//! Usage reporting into NodeNetwork status: the kube call that applies the
//! patch `sextant_agent_core::usage` builds (a JSON merge patch on the
//! status subresource, touching only `usage` and the agent's `release`
//! answers).

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::Value;
use sextant_crds::NodeNetwork;

use crate::error::{Error, Result};

/// Applies `patch` to the status of NodeNetwork `node`.
pub async fn write(api: &Api<NodeNetwork>, node: &str, patch: &Value) -> Result<()> {
    Error::kube_call(
        || format!("patching NodeNetwork {node} status"),
        api.patch_status(node, &PatchParams::default(), &Patch::Merge(patch)),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::{Client, client::Body};

    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn write_sends_a_merge_patch_to_the_status_subresource() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "default");
        let api: Api<NodeNetwork> = Api::all(client);
        let patch = json!({"status": {"usage": {"used": {}}}});
        let expected = patch.clone();
        let server = tokio::spawn(async move {
            let (req, send) = handle.next_request().await.expect("a request");
            assert_eq!(req.method(), http::Method::PATCH);
            assert_eq!(
                req.uri().path(),
                "/apis/sextant.io/v1alpha1/nodenetworks/node-a/status"
            );
            assert_eq!(
                req.headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok()),
                Some("application/merge-patch+json")
            );
            let body = req.into_body().collect_bytes().await.expect("body");
            let got: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(got, expected);
            let nn = NodeNetwork::new("node-a", Default::default());
            send.send_response(
                Response::builder()
                    .body(Body::from(serde_json::to_vec(&nn).expect("json")))
                    .expect("response"),
            );
        });
        write(&api, "node-a", &patch).await.expect("patched");
        server.await.expect("server");
    }

    /// An API server that takes the request and never answers costs the
    /// report its deadline, not the agent's loop for good.
    #[tokio::test(start_paused = true)]
    async fn a_report_to_an_api_server_that_never_answers_ends_at_its_deadline() {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let api: Api<NodeNetwork> = Api::all(Client::new(svc, "default"));
        let held = tokio::spawn(async move {
            // Takes the request, never answers, keeps the connection open.
            let pending = handle.next_request().await;
            std::future::pending::<()>().await;
            drop(pending);
        });
        let started = tokio::time::Instant::now();
        let err = write(&api, "node-a", &json!({"status": {}}))
            .await
            .expect_err("no answer");
        assert!(matches!(err, Error::ApiDeadline { .. }), "{err}");
        assert_eq!(started.elapsed(), crate::error::API_DEADLINE);
        held.abort();
    }
}
