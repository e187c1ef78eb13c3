//! Usage reporting into NodeNetwork status: a pure patch builder and the
//! kube call that applies it (a JSON merge patch on the status subresource,
//! touching only `usage` and the agent's `release` answers).

use std::collections::{BTreeMap, BTreeSet};

use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};
use sextant_agent_core::pool::Pool;
use sextant_crds::{NodeNetwork, ReleaseState};

use crate::error::{Error, Result};

/// Node IPs from NodeNetwork status: the pool keys that parse as IPv4.
pub fn pool_ips(nn: &NodeNetwork) -> Vec<std::net::Ipv4Addr> {
    nn.status
        .as_ref()
        .map(|s| s.pool.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// `(capacity, unavailable)` for the agent API: `maxAllocate` when set, else
/// the addresses of the static pod CIDRs, else the pool itself.
pub fn capacity(nn: &NodeNetwork, pool_len: usize) -> (usize, usize) {
    let from_cidrs: usize = nn
        .spec
        .pod_cidrs
        .iter()
        .filter_map(|c| sextant_crds::parse_ipv4_cidr(c))
        .map(|(_, len)| (1usize << (32 - u32::from(len))).saturating_sub(2))
        .sum();
    let cap = match nn.spec.ipam.max_allocate() {
        Some(m) => m as usize,
        None if from_cidrs > 0 => from_cidrs,
        None => pool_len,
    };
    let limited = nn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "LimitReached" && c.status == "True")
    });
    let unavailable = if limited {
        cap.saturating_sub(pool_len)
    } else {
        0
    };
    (cap.max(pool_len), unavailable)
}

/// The status merge patch: usage (in use + cooling) and handshake answers;
/// the addresses in `gone` (listed as used before, not in use now) are
/// removed from `used` (`null`).
pub fn status_patch(
    pool: &Pool,
    answers: &BTreeMap<String, ReleaseState>,
    now_ms: u64,
    reported_at: &str,
    gone: &BTreeSet<String>,
) -> Value {
    let mut used: BTreeMap<String, Value> =
        gone.iter().map(|ip| (ip.clone(), Value::Null)).collect();
    used.extend(
        pool.allocations()
            .map(|a| (a.ip.to_string(), Value::String(a.owner()))),
    );
    let cooling: Vec<String> = pool.cooling(now_ms).map(|(ip, _)| ip.to_string()).collect();
    let mut status = json!({
        "usage": { "used": used, "cooling": cooling, "reportedAt": reported_at },
    });
    if !answers.is_empty() {
        status["release"] = json!(answers);
    }
    json!({ "status": status })
}

/// Applies `patch` to the status of NodeNetwork `node`.
pub async fn write(api: &Api<NodeNetwork>, node: &str, patch: &Value) -> Result<()> {
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
        .map_err(|source| Error::Kube {
            action: format!("patching NodeNetwork {node} status"),
            source: Box::new(source),
        })
}

#[cfg(test)]
mod tests {
    use http::{Request, Response};
    use kube::{Client, client::Body};

    use super::*;
    use sextant_agent_core::testing::{mk_pool, mk_req};

    #[test]
    fn patch_reports_used_cooling_and_answers() {
        let mut p = mk_pool(4);
        p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip");
        p.free(&b.key(), 0);
        let answers = [("10.0.0.4".to_string(), ReleaseState::ReadyForRelease)].into();
        let v = status_patch(&p, &answers, 1, "2026-11-25T23:00:00Z", &BTreeSet::new());
        assert_eq!(v["status"]["usage"]["used"]["10.0.0.1"], "default/pod-a");
        assert_eq!(v["status"]["usage"]["cooling"][0], "10.0.0.2");
        assert_eq!(v["status"]["release"]["10.0.0.4"], "ready-for-release");
    }

    #[test]
    fn patch_removes_gone_addresses_and_keeps_used_ones() {
        let mut p = mk_pool(4);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let gone: BTreeSet<String> = ["10.0.0.3".to_string(), a.ip.to_string()].into();
        let v = status_patch(&p, &BTreeMap::new(), 0, "x", &gone);
        assert_eq!(v["status"]["usage"]["used"]["10.0.0.3"], Value::Null);
        assert!(
            v["status"]["usage"]["used"]
                .as_object()
                .is_some_and(|m| m.contains_key("10.0.0.3")),
            "an explicit null deletes the key"
        );
        assert_eq!(
            v["status"]["usage"]["used"][a.ip.to_string()],
            "default/pod-a",
            "in use wins over gone"
        );
    }

    #[test]
    fn patch_without_answers_leaves_release_alone() {
        let p = mk_pool(1);
        let v = status_patch(&p, &BTreeMap::new(), 0, "x", &BTreeSet::new());
        assert!(v["status"].get("release").is_none());
    }

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
}
