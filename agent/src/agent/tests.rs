use sextant_crds::{NodeNetwork, NodeNetworkStatus, PoolEntry, ReleaseState};

use std::collections::BTreeMap;

use sextant_agent_core::pool::AllocRequest;

use super::*;
use crate::policy::PolicySnapshot;
use sextant_agent_core::testing::mk_req;

fn cfg(dir: &Path) -> Config {
    Config {
        state_dir: dir.to_path_buf(),
        bpf_root: None,
        cooldown: Duration::from_secs(30),
        static_pool: Vec::new(),
    }
}

fn mk_node(ips: &[&str], marked: &[&str]) -> NodeNetwork {
    let mut nn = NodeNetwork::new("node-a", Default::default());
    nn.status = Some(NodeNetworkStatus {
        pool: ips
            .iter()
            .map(|ip| (ip.to_string(), PoolEntry::default()))
            .collect(),
        release: marked
            .iter()
            .map(|ip| (ip.to_string(), ReleaseState::Marked))
            .collect(),
        ..Default::default()
    });
    nn
}

fn mk_node_with_fixed(ips: &[&str], fixed: &[(&str, &str)]) -> NodeNetwork {
    let mut nn = mk_node(ips, &[]);
    if let Some(st) = nn.status.as_mut() {
        st.fixed_ips = fixed
            .iter()
            .map(|(ip, pod)| (ip.to_string(), pod.to_string()))
            .collect();
    }
    nn
}

fn mk_pod_req(id: &str, ns: &str, name: &str) -> AllocRequest {
    let mut r = mk_req(id);
    r.pod_namespace = ns.to_string();
    r.pod_name = name.to_string();
    r
}

/// A mock API server that knows the FixedIPs `known` (`ns`, `name`, `ip`),
/// answers 404 for any other, and returns the paths it was asked for.
fn fixed_ip_api(
    known: &[(&str, &str, &str)],
) -> (kube::Client, tokio::task::JoinHandle<Vec<String>>) {
    use http::{Request, Response};
    use kube::client::Body;
    use sextant_crds::{FixedIP, FixedIPSpec};

    let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let known: Vec<(String, String)> = known
        .iter()
        .map(|(ns, name, ip)| {
            let mut fip = FixedIP::new(
                name,
                FixedIPSpec {
                    ip: ip.to_string(),
                    stateful_set: "web".into(),
                    ordinal: 0,
                    zone: None,
                    subnet_id: None,
                    reclaim_policy: Default::default(),
                    ttl_seconds: None,
                },
            );
            fip.metadata.namespace = Some(ns.to_string());
            (
                format!("/apis/sextant.io/v1alpha1/namespaces/{ns}/fixedips/{name}"),
                serde_json::to_string(&fip).expect("json"),
            )
        })
        .collect();
    let server = tokio::spawn(async move {
        let mut asked = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!(req.method(), http::Method::GET);
            let path = req.uri().path().to_string();
            let resp = match known.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => Response::builder().body(Body::from(body.clone().into_bytes())),
                None => Response::builder().status(404).body(Body::from(
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                        "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})
                    .to_string()
                    .into_bytes(),
                )),
            };
            send.send_response(resp.expect("response"));
            asked.push(path);
        }
        asked
    });
    (kube::Client::new(svc, "default"), server)
}

async fn ready_agent(dir: &Path) -> Arc<Agent> {
    let agent = Agent::new(cfg(dir)).expect("agent");
    agent.restore().await.expect("restore");
    agent
}

#[tokio::test]
async fn fail_open_engages_only_past_its_delay_and_queues_node_events() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    agent.sync_policy(PolicySnapshot::default()).expect("sync");
    agent.check_fail_open().expect("check");
    assert!(
        agent.take_policy_events().is_empty(),
        "not armed: nothing happens"
    );

    agent.enable_policy_fail_open(PolicyFailOpen {
        after: Duration::from_secs(3600),
        selector: BTreeMap::new(),
    });
    agent.check_fail_open().expect("check");
    assert!(
        agent.take_policy_events().is_empty(),
        "control plane seen just now"
    );

    agent.enable_policy_fail_open(PolicyFailOpen {
        after: Duration::ZERO,
        selector: BTreeMap::new(),
    });
    agent.check_fail_open().expect("check");
    agent.check_fail_open().expect("engages once");
    let evs = agent.take_policy_events();
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(evs[0].warning && evs[0].reason == "PolicyFailOpen");
    assert!(
        agent
            .metrics_text()
            .contains("sextant_agent_policy_fail_open 1")
    );

    // Not posted (API server away): kept, oldest first, bounded.
    agent.requeue_policy_events(evs.clone());
    agent.sync_policy(PolicySnapshot::default()).expect("sync");
    let evs = agent.take_policy_events();
    assert_eq!(
        evs.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["PolicyFailOpen", "PolicyRestored"]
    );
    assert!(
        agent
            .metrics_text()
            .contains("sextant_agent_policy_fail_open 0")
    );
    agent.requeue_policy_events(vec![evs[0].clone(); 40]);
    assert_eq!(agent.take_policy_events().len(), 16);
}

#[tokio::test]
async fn quiet_control_plane_that_answers_the_probe_never_opens_policy() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    agent.sync_policy(PolicySnapshot::default()).expect("sync");
    agent.enable_policy_fail_open(PolicyFailOpen {
        after: Duration::ZERO,
        selector: BTreeMap::new(),
    });
    // Past the delay with no watch event or report: the API server still answers.
    let asked = std::sync::atomic::AtomicUsize::new(0);
    let answers = || {
        asked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        async { true }
    };
    agent.fail_open_tick(&answers).await.expect("tick");
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert!(agent.take_policy_events().is_empty(), "quiet is not away");
    assert!(
        agent
            .metrics_text()
            .contains("sextant_agent_policy_fail_open 0")
    );
    // No answer: now it engages.
    agent
        .fail_open_tick(&|| async { false })
        .await
        .expect("tick");
    let evs = agent.take_policy_events();
    assert_eq!(
        evs.iter().map(|e| e.reason).collect::<Vec<_>>(),
        ["PolicyFailOpen"]
    );
}

#[tokio::test]
async fn contact_restores_enforcement_without_a_watch_event() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    agent.sync_policy(PolicySnapshot::default()).expect("sync");
    agent.enable_policy_fail_open(PolicyFailOpen {
        after: Duration::ZERO,
        selector: BTreeMap::new(),
    });
    agent
        .fail_open_tick(&|| async { false })
        .await
        .expect("tick");
    assert!(
        agent
            .metrics_text()
            .contains("sextant_agent_policy_fail_open 1")
    );
    // A usage report (or a probe) gets through; no policy object changed.
    agent.control_plane_seen();
    assert!(
        agent
            .metrics_text()
            .contains("sextant_agent_policy_fail_open 0")
    );
    assert_eq!(
        agent
            .take_policy_events()
            .iter()
            .map(|e| e.reason)
            .collect::<Vec<_>>(),
        ["PolicyFailOpen", "PolicyRestored"]
    );
    agent.control_plane_seen();
    assert!(agent.take_policy_events().is_empty(), "restored once");
}

#[tokio::test]
async fn add_of_a_fixed_ip_pod_waits_until_its_address_reaches_the_node() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    let (client, api) = fixed_ip_api(&[("db", "web-0", "10.0.0.9")]);
    agent.enable_fixed_ips(client, Duration::from_secs(20));
    agent.apply_node(&mk_node(&["10.0.0.1", "10.0.0.2"], &[]));

    let add = tokio::spawn({
        let agent = agent.clone();
        async move { agent.allocate(&mk_pod_req("c1", "db", "web-0")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !add.is_finished(),
        "must not take a pool IP while its own is elsewhere"
    );
    // The FixedIP controller moved the address to this node's ENI.
    agent.apply_node(&mk_node_with_fixed(
        &["10.0.0.1", "10.0.0.2", "10.0.0.9"],
        &[("10.0.0.9", "db/web-0")],
    ));
    let a = tokio::time::timeout(Duration::from_secs(5), add)
        .await
        .expect("ADD ends once the address is here")
        .expect("task")
        .expect("allocated");
    assert_eq!(a.ip, Ipv4Addr::new(10, 0, 0, 9));

    // An ordinary pod (its FixedIP lookup is a 404) never gets a fixed address.
    let other = agent
        .allocate(&mk_pod_req("c2", "db", "cache-0"))
        .await
        .expect("allocated");
    assert_eq!(other.ip, Ipv4Addr::new(10, 0, 0, 1));
    // Idempotent: the same key gets the same address without asking again.
    let again = agent
        .allocate(&mk_pod_req("c1", "db", "web-0"))
        .await
        .expect("again");
    assert_eq!(again, a);
    drop(agent);
    assert_eq!(
        api.await.expect("api"),
        vec![
            "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/web-0".to_string(),
            "/apis/sextant.io/v1alpha1/namespaces/db/fixedips/cache-0".to_string(),
        ]
    );
}

#[tokio::test]
async fn add_fails_clearly_when_the_fixed_ip_never_arrives() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    let (client, _api) = fixed_ip_api(&[("db", "web-0", "10.0.0.9")]);
    agent.enable_fixed_ips(client, Duration::from_millis(300));
    // Listed here for another pod: still not this pod's.
    agent.apply_node(&mk_node_with_fixed(
        &["10.0.0.1"],
        &[("10.0.0.8", "db/web-1")],
    ));
    let err = agent
        .allocate(&mk_pod_req("c1", "db", "web-0"))
        .await
        .expect_err("timed out");
    assert!(matches!(err, Error::FixedIpNotHere { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "fixed IP 10.0.0.9 for db/web-0 not on this node after 300ms"
    );
    assert_eq!(agent.health().ipam.allocated, 0);
}

#[tokio::test]
async fn restarted_fixed_ip_pod_gets_its_address_back_inside_the_cooldown() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    // No API client: a pod named in fixedIps needs no lookup.
    let answers = agent.apply_node(&mk_node_with_fixed(
        &["10.0.0.1", "10.0.0.9"],
        &[("10.0.0.9", "db/web-0")],
    ));
    assert!(answers.is_empty());
    let first = agent
        .allocate(&mk_pod_req("c1", "db", "web-0"))
        .await
        .expect("allocated");
    assert_eq!(first.ip, Ipv4Addr::new(10, 0, 0, 9));
    lock(&agent.state).node.free(&first.key(), now_ms());
    let second = agent
        .allocate(&mk_pod_req("c2", "db", "web-0"))
        .await
        .expect("allocated again inside the cooldown");
    assert_eq!(second.ip, first.ip);
    agent.save().await.expect("checkpoint");
    let cp = checkpoint::read(&dir.path().join(CHECKPOINT_FILE))
        .expect("read")
        .expect("checkpoint");
    assert!(
        cp.allocations
            .iter()
            .any(|a| a.ip == second.ip && a.container_id == "c2"),
        "checkpointed like any allocation"
    );
    // A release mark on it is refused; the pool IP is free to go.
    let mut nn = mk_node_with_fixed(&["10.0.0.1", "10.0.0.9"], &[("10.0.0.9", "db/web-0")]);
    if let Some(st) = nn.status.as_mut() {
        st.release = [
            ("10.0.0.1".to_string(), ReleaseState::Marked),
            ("10.0.0.9".to_string(), ReleaseState::Marked),
        ]
        .into();
    }
    let answers = agent.apply_node(&nn);
    assert_eq!(answers["10.0.0.9"], Some(ReleaseState::DoNotRelease));
    assert_eq!(answers["10.0.0.1"], Some(ReleaseState::ReadyForRelease));
}

#[tokio::test]
async fn restoring_agent_reports_checkpointed_allocations_never_an_empty_set() {
    let dir = tempfile::tempdir().expect("dir");
    let mut pool = Pool::new(30_000);
    pool.set_pool([Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)]);
    pool.allocate(&mk_req("a"), now_ms(), "2026-01-01T00:00:00Z")
        .expect("ip");
    checkpoint::write(
        &dir.path().join(CHECKPOINT_FILE),
        &Checkpoint::of(&pool, now_ms()),
    )
    .expect("checkpoint");
    let agent = Agent::new(cfg(dir.path())).expect("agent");
    let h = agent.health();
    assert_eq!(h.state, AgentState::Restoring);
    assert_eq!(
        h.ipam.allocated, 1,
        "checkpointed allocation counts as in use"
    );
    assert!(
        agent.usage_patch(&Default::default()).is_none(),
        "no report while restoring"
    );
    agent.restore().await.expect("restore");
    // The pod's netns does not exist here: its IP goes to cooldown.
    let h = agent.health();
    assert_eq!(h.state, AgentState::Ready);
    assert_eq!((h.ipam.allocated, h.ipam.cooldown), (0, 1));
    assert!(agent.usage_patch(&Default::default()).is_some());
}

#[tokio::test]
async fn merge_patch_removes_addresses_no_longer_in_use() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    // An earlier agent left 10.0.0.3 in status; this one uses 10.0.0.1.
    let mut nn = mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]);
    if let Some(st) = nn.status.as_mut() {
        st.usage = Some(sextant_crds::AgentUsage {
            used: [("10.0.0.3".to_string(), "default/old".to_string())].into(),
            ..Default::default()
        });
    }
    agent.apply_node(&nn);
    let a = lock(&agent.state)
        .node
        .allocate(&mk_req("a"), now_ms(), "t")
        .expect("ip");
    let patch = agent
        .usage_merge_patch(&BTreeMap::new(), Duration::ZERO)
        .expect("ready");
    let used = &patch["status"]["usage"]["used"];
    assert_eq!(used[a.ip.to_string()], "default/pod-a");
    assert_eq!(
        used.as_object().and_then(|m| m.get("10.0.0.3")),
        Some(&serde_json::Value::Null)
    );
    // Freed before the watch showed it in status: the last patch sent it.
    lock(&agent.state).node.free(&a.key(), now_ms());
    agent.apply_node(&mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]));
    let patch = agent
        .usage_merge_patch(&BTreeMap::new(), Duration::ZERO)
        .expect("ready");
    assert_eq!(
        patch["status"]["usage"]["used"]
            .as_object()
            .and_then(|m| m.get(&a.ip.to_string())),
        Some(&serde_json::Value::Null)
    );
    // The file report keeps `used` whole, without deletions.
    let file = agent.usage_patch(&BTreeMap::new()).expect("ready");
    assert_eq!(file["status"]["usage"]["used"], serde_json::json!({}));
}

#[tokio::test]
async fn node_network_sets_the_pool_and_answers_release_marks() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = Agent::new(cfg(dir.path())).expect("agent");
    agent.restore().await.expect("restore");
    let nn = mk_node(&["10.0.0.1", "10.0.0.2", "10.0.0.3"], &[]);
    assert!(agent.apply_node(&nn).is_empty());
    lock(&agent.state)
        .node
        .allocate(&mk_req("a"), now_ms(), "t")
        .expect("ip");
    let nn = mk_node(
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        &["10.0.0.1", "10.0.0.3"],
    );
    let answers = agent.apply_node(&nn);
    assert_eq!(answers["10.0.0.1"], Some(ReleaseState::DoNotRelease));
    assert_eq!(answers["10.0.0.3"], Some(ReleaseState::ReadyForRelease));
    let h = agent.health();
    assert_eq!(
        (h.ipam.allocated, h.ipam.free),
        (1, 1),
        "10.0.0.3 is held back for release"
    );
    let patch = agent.usage_patch(&answers).expect("ready");
    assert_eq!(patch["status"]["release"]["10.0.0.3"], "ready-for-release");
    assert_eq!(
        patch["status"]["usage"]["used"]["10.0.0.1"],
        "default/pod-a"
    );
}

#[tokio::test]
async fn verdict_series_of_deleted_policies_are_dropped() {
    let dir = tempfile::tempdir().expect("dir");
    let agent = ready_agent(dir.path()).await;
    let n = 10_000u32;
    let policies: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
                "metadata": {"name": format!("p-{i}"), "namespace": "prod"},
                "spec": {"endpointSelector": {"matchLabels": {"app": format!("a-{i}")}},
                         "ingress": [{}]}
            })
        })
        .collect();
    let series = |agent: &Agent| {
        agent
            .metrics_text()
            .lines()
            .filter(|l| l.starts_with("sextant_agent_policy_verdicts_total{"))
            .count()
    };
    let initial = series(&agent);
    agent
        .sync_policy(PolicySnapshot {
            policies,
            ..Default::default()
        })
        .expect("sync");
    // Every policy has counted packets (what a scrape reads off the datapath).
    let names = lock(&agent.policy)
        .node
        .engine()
        .contents()
        .policy_names
        .clone();
    assert_eq!(names.len(), n as usize);
    let sums = names.keys().map(|slot| (*slot, 1u64)).collect();
    agent.metrics.sync_verdicts(&sums, &names);
    assert_eq!(series(&agent), initial + n as usize);

    agent.sync_policy(PolicySnapshot::default()).expect("sync");
    assert_eq!(
        series(&agent),
        initial,
        "every deleted policy's series kept"
    );
}

#[tokio::test]
async fn a_policy_given_a_freed_verdict_slot_starts_from_zero() {
    let test = format!(
        "{}: {}",
        file!(),
        sextant_testkit::current_test("a_policy_given_a_freed_verdict_slot_starts_from_zero")
    );
    if !sextant_testkit::require(
        sextant_testkit::Tier::Kernel,
        sextant_testkit::root_unavailable(),
        &test,
    ) {
        return;
    }
    struct Pins(PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = crate::datapath::remove_pins(&self.0);
        }
    }
    let root = PathBuf::from(format!(
        "/sys/fs/bpf/sextant-test-verdict-slot-{}",
        std::process::id()
    ));
    let _pins = Pins(root.clone());
    let dir = tempfile::tempdir().expect("dir");
    let agent = Agent::new(Config {
        bpf_root: Some(root),
        ..cfg(dir.path())
    })
    .expect("agent");
    agent.restore().await.expect("restore");
    let snap = |name: &str| PolicySnapshot {
        policies: vec![serde_json::json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {"endpointSelector": {"matchLabels": {"app": name}}, "ingress": [{}]}
        })],
        ..Default::default()
    };
    let slot_of = |agent: &Agent, name: &str| {
        lock(&agent.policy)
            .node
            .engine()
            .contents()
            .policy_names
            .iter()
            .find(|(_, n)| n.as_str() == name)
            .map(|(slot, _)| *slot)
    };
    let series = |agent: &Agent, name: &str| {
        let prefix = format!("sextant_agent_policy_verdicts_total{{policy=\"{name}\"}} ");
        agent
            .metrics_text()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    };
    agent.sync_policy(snap("a")).expect("sync a");
    let slot = slot_of(&agent, "SextantNetworkPolicy/prod/a").expect("a's slot");
    // Packets a's entries allowed, as the datapath counts them.
    lock(&agent.datapath)
        .as_mut()
        .expect("datapath")
        .set_verdicts(slot, 5)
        .expect("count");
    assert_eq!(
        series(&agent, "SextantNetworkPolicy/prod/a").as_deref(),
        Some("5")
    );

    // a deleted, later b created: b gets the slot a freed.
    agent
        .sync_policy(PolicySnapshot::default())
        .expect("sync none");
    agent.sync_policy(snap("b")).expect("sync b");
    assert_eq!(
        slot_of(&agent, "SextantNetworkPolicy/prod/b"),
        Some(slot),
        "b takes the slot a freed"
    );
    assert_eq!(series(&agent, "SextantNetworkPolicy/prod/a"), None);
    assert_eq!(
        series(&agent, "SextantNetworkPolicy/prod/b"),
        None,
        "b inherited a's packets"
    );
}
