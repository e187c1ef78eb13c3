//! The endpoint over a real loopback HTTP server, with request bodies as
//! kube-scheduler sends them (`tests/fixtures/`).

use std::sync::{Arc, RwLock};

use serde_json::{Value, json};
use sextant_crds::testing::{mk_fixed_ip, mk_node_network};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::{fixtures::mk_index, index::Index};

const FILTER_NODE_NAMES: &str = include_str!("../../tests/fixtures/filter_node_names.json");
const FILTER_NODES: &str = include_str!("../../tests/fixtures/filter_nodes.json");
const PRIORITIZE_NODE_NAMES: &str = include_str!("../../tests/fixtures/prioritize_node_names.json");

const N10: &str = "ip-10-0-1-10.ec2.internal";
const N11: &str = "ip-10-0-1-11.ec2.internal";
const N12: &str = "ip-10-0-1-12.ec2.internal";
const N20: &str = "ip-10-0-2-20.ec2.internal";

/// The cluster behind the fixtures: `db/web-3` holds 10.0.1.77 on N10.
fn cluster() -> Index {
    mk_index(
        &[
            mk_node_network(N10, "us-east-1a")
                .eni("eni-10a", "subnet-1a", 1, &["10.0.1.77", "10.0.1.78"])
                .usage(17, 0)
                .build(),
            mk_node_network(N11, "us-east-1a")
                .eni_with("eni-11a", "subnet-1a", 1, 3)
                .usage(3, 0)
                .build(),
            mk_node_network(N12, "us-east-1a")
                .eni_with("eni-12a", "subnet-1a", 1, 9)
                .eni_with("eni-12b", "subnet-1a", 2, 9)
                .usage(18, 0)
                .build(),
            mk_node_network(N20, "us-east-1b").build(),
        ],
        &[mk_fixed_ip(
            "db",
            "web-3",
            "10.0.1.77",
            "us-east-1a",
            "subnet-1a",
        )],
    )
}

struct Server {
    base: String,
    addr: SocketAddr,
    index: SharedIndex,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(index: Index, config: ServerConfig) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("bound");
    let index: SharedIndex = Arc::new(RwLock::new(index));
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let extender = Arc::new(Extender::new(
        index.clone(),
        metrics,
        Arc::new(registry),
        config,
    ));
    let task = tokio::spawn(serve(listener, extender));
    Server {
        base: format!("http://{addr}"),
        addr,
        index,
        task,
    }
}

async fn post(server: &Server, path: &str, body: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}{path}", server.base))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

async fn get(server: &Server, path: &str) -> (u16, String) {
    let resp = reqwest::get(format!("{}{path}", server.base))
        .await
        .expect("request sent");
    let status = resp.status().as_u16();
    (status, resp.text().await.expect("body"))
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).expect("JSON answer")
}

#[tokio::test]
async fn filter_with_node_names_answers_in_kube_scheduler_field_names() {
    let server = start(cluster(), ServerConfig::default()).await;
    let (status, body) = post(&server, "/filter", FILTER_NODE_NAMES).await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert_eq!(v["NodeNames"], json!([N10, N11]));
    assert_eq!(v["Nodes"], Value::Null);
    assert_eq!(v["Error"], "");
    // Preemption cannot bring a fixed IP to these nodes: every refusal is
    // unresolvable, so FailedNodes is empty.
    assert_eq!(
        v["FailedAndUnresolvableNodes"][N20],
        "sextant: fixed IP 10.0.1.77 lives in zone us-east-1a, node is in zone us-east-1b"
    );
    assert!(
        v["FailedAndUnresolvableNodes"][N12]
            .as_str()
            .is_some_and(|r| r.contains("cannot be attached")),
        "{body}"
    );
    assert_eq!(
        v["FailedAndUnresolvableNodes"].as_object().map(|m| m.len()),
        Some(2)
    );
    assert_eq!(v["FailedNodes"], json!({}));
}

#[tokio::test]
async fn filter_with_full_nodes_returns_the_passing_node_objects_untouched() {
    let server = start(cluster(), ServerConfig::default()).await;
    let (status, body) = post(&server, "/filter", FILTER_NODES).await;
    assert_eq!(status, 200, "{body}");
    let v = parse(&body);
    assert_eq!(v["NodeNames"], Value::Null);
    let items = v["Nodes"]["items"].as_array().expect("items");
    let names: Vec<&str> = items
        .iter()
        .filter_map(|n| n["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, [N10, N11, N20]);
    let sent = parse(FILTER_NODES);
    assert_eq!(
        items[2]["status"]["nodeInfo"],
        sent["Nodes"]["items"][3]["status"]["nodeInfo"]
    );
    assert_eq!(
        items[0]["metadata"]["labels"],
        sent["Nodes"]["items"][0]["metadata"]["labels"]
    );
    assert_eq!(
        v["FailedNodes"][N12],
        "sextant: no pod IP left (18 used + 0 pending >= capacity 18)"
    );
    assert_eq!(v["FailedAndUnresolvableNodes"], json!({}));
}

#[tokio::test]
async fn prioritize_answers_a_host_priority_list_with_the_holder_first() {
    let server = start(cluster(), ServerConfig::default()).await;
    let (status, body) = post(&server, "/prioritize", PRIORITIZE_NODE_NAMES).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        parse(&body),
        json!([
            {"Host": N10, "Score": 10},
            {"Host": N11, "Score": 7},
            {"Host": N12, "Score": 0},
            {"Host": N20, "Score": 9},
        ])
    );
}

#[tokio::test]
async fn lower_case_keys_from_hand_written_clients_are_accepted() {
    let server = start(cluster(), ServerConfig::default()).await;
    let body =
        json!({"pod": {"metadata": {"name": "web-3", "namespace": "db"}}, "nodenames": [N20, N11]});
    let (status, answer) = post(&server, "/filter", &body.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(parse(&answer)["NodeNames"], json!([N11]));
}

#[tokio::test]
async fn a_malformed_filter_body_is_answered_200_with_error_set() {
    let server = start(cluster(), ServerConfig::default()).await;
    for (body, want) in [
        (
            "{\"Pod\": ",
            "request body is not ExtenderArgs JSON: EOF while parsing",
        ),
        ("", "request body is not ExtenderArgs JSON"),
        (
            "[1,2]",
            "request body is not ExtenderArgs JSON: invalid type",
        ),
        ("{\"NodeNames\": [\"a\"]}", "ExtenderArgs has no Pod"),
        (
            "{\"Pod\": {\"metadata\": {\"name\": \"x\"}}, \"Nodes\": null, \"NodeNames\": null}",
            "ExtenderArgs has neither NodeNames nor Nodes",
        ),
        (
            "{\"Pod\": {\"metadata\": {}}, \"NodeNames\": []}",
            "pod in ExtenderArgs has no metadata.name",
        ),
        (
            "{\"Pod\": {\"kind\": \"Service\"}, \"NodeNames\": []}",
            "request body is not ExtenderArgs JSON: invalid value",
        ),
    ] {
        let (status, answer) = post(&server, "/filter", body).await;
        assert_eq!(status, 200, "{body}: {answer}");
        let v = parse(&answer);
        let error = v["Error"].as_str().expect("Error is a string");
        assert!(error.starts_with(want), "{body}: {error}");
        assert_eq!(v["NodeNames"], Value::Null, "{body}");
        assert_eq!(v["Nodes"], Value::Null, "{body}");
    }
}

#[tokio::test]
async fn a_failed_prioritize_is_400_for_a_bad_request_and_503_while_unsynced() {
    let server = start(Index::default(), ServerConfig::default()).await;
    let (status, body) = post(&server, "/prioritize", "{nope").await;
    assert_eq!(status, 400);
    assert!(
        body.starts_with("request body is not ExtenderArgs JSON: key must be a string"),
        "{body}"
    );
    let (status, body) = post(&server, "/prioritize", PRIORITIZE_NODE_NAMES).await;
    assert_eq!(status, 503);
    assert!(body.contains("index not synced yet"), "{body}");
}

#[tokio::test]
async fn while_unsynced_plain_pods_pass_everywhere_counted_and_fixed_ip_pods_wait() {
    let server = start(Index::default(), ServerConfig::default()).await;
    let (status, body) = get(&server, "/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "index not synced: still listing NodeNetworks and FixedIPs\n"
        )
    );
    // A plain pod: no Error (an ignorable extender's Error is skipped, a
    // non-ignorable one's blocks every pod); every candidate passes.
    let plain = json!({"Pod": {"metadata": {"name": "api-1", "namespace": "shop"}},
                       "NodeNames": [N10, N12, N20]});
    let (status, body) = post(&server, "/filter", &plain.to_string()).await;
    assert_eq!(status, 200);
    let v = parse(&body);
    assert_eq!(v["Error"], "", "{body}");
    assert_eq!(v["NodeNames"], json!([N10, N12, N20]));
    // A pod annotated for a fixed IP: refused on every node, unresolvable,
    // with the reason, so it waits with an ignorable extender too.
    let fixed = json!({"Pod": {"metadata": {"name": "web-3", "namespace": "db",
                                            "annotations": {"sextant.io/fixed-ip": "true"}}},
                       "NodeNames": [N10, N20]});
    let (_, body) = post(&server, "/filter", &fixed.to_string()).await;
    let v = parse(&body);
    assert_eq!(v["Error"], "", "{body}");
    assert_eq!(v["NodeNames"], json!([]));
    let reason = v["FailedAndUnresolvableNodes"][N10]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason
            .starts_with("sextant: index not synced yet: still listing NodeNetworks and FixedIPs")
            && reason.ends_with(
                "pod db/web-3 asks for a fixed IP and waits until the index can place it"
            ),
        "{reason}"
    );
    assert_eq!(v["FailedAndUnresolvableNodes"][N20], reason);
    let (_, metrics) = get(&server, "/metrics").await;
    for line in [
        "sextant_scheduler_ext_unsynced_answers_total{verb=\"filter\"} 1",
        "sextant_scheduler_ext_decisions_total{verb=\"filter\",result=\"held\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line}:\n{metrics}");
    }

    *server.index.write().expect("not poisoned") = cluster();
    assert_eq!(get(&server, "/readyz").await.0, 200);
    let (_, body) = post(&server, "/filter", FILTER_NODE_NAMES).await;
    assert_eq!(parse(&body)["NodeNames"], json!([N10, N11]));
}

#[tokio::test]
async fn an_annotated_pod_without_its_fixed_ip_is_refused_everywhere_not_answered_an_error() {
    let server = start(cluster(), ServerConfig::default()).await;
    let pod = json!({"Pod": {"metadata": {"name": "web-9", "namespace": "db",
                                          "annotations": {"sextant.io/fixed-ip": "true"}}},
                     "NodeNames": [N10, N11]});
    let (status, body) = post(&server, "/filter", &pod.to_string()).await;
    assert_eq!(status, 200);
    let v = parse(&body);
    assert_eq!(v["Error"], "", "{body}");
    assert_eq!(v["NodeNames"], json!([]));
    for n in [N10, N11] {
        assert!(
            v["FailedAndUnresolvableNodes"][n]
                .as_str()
                .is_some_and(|r| r.contains("FixedIP db/web-9 does not exist yet")),
            "{body}"
        );
    }
}

/// A fixed-IP pod whose FixedIP lands in the index while its filter call
/// waits is placed, not refused: refused, kube-scheduler would retry it only
/// at its next flush of unschedulable pods, up to 5 minutes later (the
/// chaos soak's 30 StatefulSet pods stayed Pending for 240 s that way).
#[tokio::test]
async fn a_fixed_ip_reserved_while_the_filter_waits_places_the_pod() {
    let server = start(cluster(), ServerConfig::default()).await;
    let pod = json!({"Pod": {"metadata": {"name": "web-9", "namespace": "db",
                                          "annotations": {"sextant.io/fixed-ip": "true"}}},
                     "NodeNames": [N10, N11, N20]});
    let index = server.index.clone();
    let reserve = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        index
            .write()
            .expect("not poisoned")
            .apply_fixed_ip(&mk_fixed_ip(
                "db",
                "web-9",
                "10.0.1.78",
                "us-east-1a",
                "subnet-1a",
            ));
    });
    let started = std::time::Instant::now();
    let (status, body) = post(&server, "/filter", &pod.to_string()).await;
    let took = started.elapsed();
    reserve.await.expect("reserved");
    assert_eq!(status, 200);
    let v = parse(&body);
    let placed = v["NodeNames"].as_array().cloned().unwrap_or_default();
    assert!(
        placed.contains(&json!(N10)) && !placed.contains(&json!(N20)),
        "{body}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < DEFAULT_HELD_WAIT,
        "answered after {took:?}"
    );
}

#[tokio::test]
async fn the_url_prefix_moves_the_verbs_and_only_post_is_served_there() {
    let config = ServerConfig {
        prefix: "/sextant/".into(),
        ..ServerConfig::default()
    };
    let server = start(cluster(), config).await;
    assert_eq!(
        post(&server, "/sextant/filter", FILTER_NODE_NAMES).await.0,
        200
    );
    assert_eq!(
        post(&server, "/sextant/prioritize", PRIORITIZE_NODE_NAMES)
            .await
            .0,
        200
    );
    assert_eq!(post(&server, "/filter", FILTER_NODE_NAMES).await.0, 405);
    assert_eq!(get(&server, "/filter").await.0, 404);
    assert_eq!(get(&server, "/sextant/filter").await.0, 405);
    assert_eq!(get(&server, "/healthz").await, (200, "ok\n".into()));
}

#[tokio::test]
async fn a_body_that_never_completes_is_answered_with_an_error_at_the_deadline() {
    let config = ServerConfig {
        request_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start(cluster(), config).await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    s.write_all(
        b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"Pod\":",
    )
    .await
    .expect("write");
    let mut buf = vec![0; 4096];
    let n = s.read(&mut buf).await.expect("an answer, not a hang");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("request body not received within 200ms"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_an_error() {
    let config = ServerConfig {
        max_body_bytes: 1024,
        ..ServerConfig::default()
    };
    let server = start(cluster(), config).await;
    let (status, body) = post(&server, "/filter", FILTER_NODES).await;
    assert_eq!(status, 200);
    assert_eq!(
        parse(&body)["Error"],
        "request body exceeds 1024 bytes (--max-body-bytes)"
    );
}

#[tokio::test]
async fn metrics_count_decisions_time_filters_and_size_the_index() {
    let server = start(cluster(), ServerConfig::default()).await;
    post(&server, "/filter", FILTER_NODE_NAMES).await;
    let no_fit =
        json!({"Pod": {"metadata": {"name": "web-3", "namespace": "db"}}, "NodeNames": [N20]});
    post(&server, "/filter", &no_fit.to_string()).await;
    post(&server, "/filter", "garbage").await;
    post(&server, "/prioritize", PRIORITIZE_NODE_NAMES).await;
    let (status, text) = get(&server, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "sextant_scheduler_ext_decisions_total{verb=\"filter\",result=\"pass\"} 1",
        "sextant_scheduler_ext_decisions_total{verb=\"filter\",result=\"no_fit\"} 1",
        "sextant_scheduler_ext_decisions_total{verb=\"filter\",result=\"error\"} 1",
        "sextant_scheduler_ext_decisions_total{verb=\"prioritize\",result=\"scored\"} 1",
        "sextant_scheduler_ext_filter_duration_seconds_count 3",
        "sextant_scheduler_ext_index_objects{kind=\"nodenetworks\"} 4",
        "sextant_scheduler_ext_index_objects{kind=\"fixedips\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

#[tokio::test]
async fn names_and_reasons_needing_json_escapes_come_back_intact() {
    let odd = "odd\"node\\\u{1}";
    let mut index = cluster();
    index.apply_node(&mk_node_network(odd, "zone \"b\"").build());
    let server = start(index, ServerConfig::default()).await;
    let body =
        json!({"Pod": {"metadata": {"name": "web-3", "namespace": "db"}}, "NodeNames": [odd, N10]});
    let (status, answer) = post(&server, "/filter", &body.to_string()).await;
    assert_eq!(status, 200);
    let v = parse(&answer);
    assert_eq!(v["NodeNames"], json!([N10]));
    assert_eq!(
        v["FailedAndUnresolvableNodes"][odd],
        "sextant: fixed IP 10.0.1.77 lives in zone us-east-1a, node is in zone zone \"b\""
    );
}

#[tokio::test]
async fn prioritize_with_full_nodes_scores_by_name() {
    let server = start(cluster(), ServerConfig::default()).await;
    let (status, body) = post(&server, "/prioritize", FILTER_NODES).await;
    assert_eq!(status, 200, "{body}");
    // A plain pod: free-IP headroom only (N10 holds web-3's address, not this pod's).
    assert_eq!(
        parse(&body),
        json!([
            {"Host": N10, "Score": 0},
            {"Host": N11, "Score": 7},
            {"Host": N12, "Score": 0},
            {"Host": N20, "Score": 9},
        ])
    );
}
