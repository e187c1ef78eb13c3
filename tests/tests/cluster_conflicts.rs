//! Issue 12 on a real kube-apiserver: the operator's status writes are
//! guarded by the resourceVersion of the read they were decided from, so a
//! decision made on a status that changed meanwhile (the agent's usage
//! report, another writer's change) is refused with 409 Conflict instead of
//! being written over the newer status; the refusal is the error the
//! reconciler requeues at once, and the requeued reconcile reads the node
//! again and decides on the newer report.
//!
//! ```text
//!  admin: create NodeNetwork ─▶ read (rv N) ─▶ "agent": usage patch (rv N+1)
//!  operator: make_status_patch(read at rv N, decision) ─▶ PATCH …/status ─▶ 409 ─▶ requeue now
//! ```
//!
//! The patches are the operator's own (`sextant_operator::make_status_patch`,
//! `controller::write_status`, `make_fixed_ip_status_patch`) and so is the
//! reconcile (`controller::reconcile` over the simulated cloud), all sent
//! through a kube `Client` to the test cluster's API server.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    runtime::controller::Action,
};
use serde_json::json;
use sextant_cloud::{
    Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_crds::{
    EniStatus, FixedIP, FixedIPPhase, FixedIPSpec, FixedIPStatus, IpamSpec, NodeNetwork,
    NodeNetworkSpec, NodeNetworkStatus, PoolEntry, Provider, ReclaimPolicy, ReleaseState,
};
use sextant_e2e::cluster::{Cluster, Options, install};
use sextant_operator::{
    fixed_ip::controller::make_fixed_ip_status_patch,
    ipam::metrics::IpamMetrics,
    ipam::node::{IpamConfig, NodeIpam},
    node_network::controller::{self, Context, ControllerError, RequeuePolicy, is_conflict},
    status_patch,
};

/// One CRD install at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

/// The chart's CRDs, applied and Established; an admin client.
async fn with_crds(c: &Cluster) -> Client {
    install::apply_crds(c).expect("CRDs applied and established");
    c.admin().await.expect("admin client")
}

/// A context whose cloud is a simulator with one subnet, one security group
/// and one m5.large; returns it with the instance id.
fn sim_context(client: Client) -> (Arc<Context>, Arc<SimCloud>, String) {
    let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 7)));
    let subnet = sim
        .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
        .expect("subnet");
    sim.add_security_group("vpc-1", "pods", Tags::new());
    let instance = sim.add_instance("m5.large", &subnet).expect("instance");
    let ipam = Arc::new(NodeIpam::new(
        sim.clone(),
        IpamConfig {
            cluster: "e2e".into(),
            ..IpamConfig::default()
        },
        IpamMetrics::default(),
    ));
    let ctx = Arc::new(Context::new(client, ipam, RequeuePolicy::default()));
    (ctx, sim, instance)
}

fn spec(instance: &str) -> NodeNetworkSpec {
    NodeNetworkSpec {
        provider: Provider::Aws,
        instance_id: Some(instance.into()),
        instance_type: Some("m5.large".into()),
        zone: Some("us-east-1a".into()),
        vpc_id: Some("vpc-1".into()),
        ipam: IpamSpec::default(),
        pod_cidrs: vec![],
    }
}

/// A fresh NodeNetwork `name` (any earlier one deleted).
async fn create_node_network(api: &Api<NodeNetwork>, name: &str, spec: NodeNetworkSpec) {
    let _ = api.delete(name, &DeleteParams::default()).await;
    for _ in 0..50 {
        if api.get_opt(name).await.expect("get").is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    api.create(&PostParams::default(), &NodeNetwork::new(name, spec))
        .await
        .expect("create NodeNetwork");
}

/// What the agent writes: its usage report (a merge patch of `usage` only),
/// as `sextant-agent` sends it, with its default field manager.
async fn agent_reports(api: &Api<NodeNetwork>, node: &str, used: &[&str]) {
    let used: BTreeMap<&str, String> = used
        .iter()
        .map(|ip| (*ip, format!("default/pod-{ip}")))
        .collect();
    let patch = json!({ "status": { "usage": {
        "used": used, "cooling": [], "reportedAt": "2026-11-25T12:00:01Z",
    }}});
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("agent usage report");
}

fn in_use(nn: &NodeNetwork) -> Vec<String> {
    nn.status
        .as_ref()
        .and_then(|s| s.usage.as_ref())
        .map(|u| u.used.keys().cloned().collect())
        .unwrap_or_default()
}

fn release(nn: &NodeNetwork) -> BTreeMap<String, ReleaseState> {
    nn.status
        .as_ref()
        .map(|s| s.release.clone())
        .unwrap_or_default()
}

fn refused_as_conflict(err: &ControllerError) -> bool {
    matches!(err, ControllerError::WriteStatus { source, .. } if is_conflict(source))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_mark_decided_on_a_stale_read_is_refused_with_409_and_requeued_now() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let api: Api<NodeNetwork> = Api::all(admin.clone());
    let node = "conflict-stale-mark";
    create_node_network(&api, node, spec("i-0e2e0000000000001")).await;

    // The operator's pool, as an earlier reconcile wrote it.
    let ips: Vec<String> = (6..=13).map(|i| format!("10.0.0.{i}")).collect();
    let pool: BTreeMap<String, PoolEntry> = ips
        .iter()
        .map(|ip| {
            (
                ip.clone(),
                PoolEntry {
                    eni: "eni-1".into(),
                },
            )
        })
        .collect();
    let filled = NodeNetworkStatus {
        enis: vec![EniStatus {
            id: "eni-1".into(),
            subnet_id: "subnet-1".into(),
            device_index: 1,
            addresses: ips.clone(),
            ..EniStatus::default()
        }],
        pool,
        last_resync: Some("2026-11-25T12:00:00Z".into()),
        ..NodeNetworkStatus::default()
    };
    let empty = api.get(node).await.expect("read");
    assert!(
        controller::write_status(&api, &empty, &filled)
            .await
            .expect("the pool, written on a fresh read"),
        "a request was made"
    );

    // The operator reads (version N) and decides 10.0.0.13, free in that
    // read, is excess; meanwhile the agent hands it to a pod (version N+1).
    let read = api.get(node).await.expect("read");
    let rv = read
        .metadata
        .resource_version
        .clone()
        .expect("resourceVersion");
    let mut decided = read.status.clone().expect("status");
    decided
        .release
        .insert("10.0.0.13".into(), ReleaseState::Marked);
    agent_reports(&api, node, &["10.0.0.13"]).await;

    let patch = sextant_operator::make_status_patch(&read, &decided).expect("a change");
    assert_eq!(patch["metadata"]["resourceVersion"], rv.as_str());
    let err = controller::write_status(&api, &read, &decided)
        .await
        .expect_err("a mark decided on an old version must be refused once the agent wrote");
    assert!(refused_as_conflict(&err), "{err:?}");
    assert_eq!(err.metric_label(), "kube_conflict");
    let (ctx, _, _) = sim_context(admin.clone());
    assert_eq!(
        controller::error_policy(Arc::new(read.clone()), &err, ctx),
        Action::requeue(Duration::ZERO),
        "a conflict is requeued at once"
    );

    // Nothing of the refused decision landed; the agent's report stands.
    let now = api.get(node).await.expect("read");
    assert_eq!(in_use(&now), ["10.0.0.13"]);
    assert!(release(&now).is_empty(), "{:?}", release(&now));

    // Decided again on the newer read: 10.0.0.13 is used, 10.0.0.12 is
    // the free one to mark; accepted, the report untouched.
    let mut again = now.status.clone().expect("status");
    again
        .release
        .insert("10.0.0.12".into(), ReleaseState::Marked);
    controller::write_status(&api, &now, &again)
        .await
        .expect("a patch decided on the current version is accepted");
    let after = api.get(node).await.expect("read");
    assert_eq!(
        release(&after),
        BTreeMap::from([("10.0.0.12".to_owned(), ReleaseState::Marked)])
    );
    assert_eq!(in_use(&after), ["10.0.0.13"]);

    // The defect the guard closes: the same stale decision without the
    // resourceVersion is accepted, marking an address the agent uses.
    let unguarded = status_patch(read.status.as_ref().expect("status"), &decided).expect("patch");
    assert!(unguarded.get("metadata").is_none());
    api.patch_status(node, &PatchParams::default(), &Patch::Merge(&unguarded))
        .await
        .expect("an unguarded merge patch is never refused");
    let broken = api.get(node).await.expect("read");
    assert_eq!(
        release(&broken).get("10.0.0.13"),
        Some(&ReleaseState::Marked),
        "without the guard the stale mark lands on a used address"
    );
    let _ = api.delete(node, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reconciler_refused_on_a_stale_read_reads_again_and_marks_only_free_addresses() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let api: Api<NodeNetwork> = Api::all(admin.clone());
    let node = "conflict-reconcile";
    let (ctx, sim, instance) = sim_context(admin.clone());
    create_node_network(&api, node, spec(&instance)).await;

    // Fill the pool to preAllocate (8) on fresh reads, as the controller
    // would on its watch events.
    for _ in 0..4 {
        let nn = api.get(node).await.expect("read");
        controller::reconcile(Arc::new(nn), ctx.clone())
            .await
            .expect("reconcile on a fresh read");
    }
    let filled = api.get(node).await.expect("read");
    let mut pool: Vec<Ipv4Addr> = filled
        .status
        .as_ref()
        .expect("status")
        .pool
        .keys()
        .map(|ip| ip.parse().expect("IPv4"))
        .collect();
    assert_eq!(pool.len(), 8, "{:?}", filled.status);
    pool.sort();

    // preAllocate drops to 2: six addresses become excess. The controller's
    // cache holds this version; then the agent hands the three highest
    // addresses (the ones the operator would mark first) to pods.
    let watermarks = json!({ "spec": { "ipam": { "preAllocate": 2, "maxAboveWatermark": 0 } } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&watermarks))
        .await
        .expect("spec");
    let cached = Arc::new(api.get(node).await.expect("read"));
    let used: Vec<String> = pool[5..].iter().map(ToString::to_string).collect();
    let used_refs: Vec<&str> = used.iter().map(String::as_str).collect();
    agent_reports(&api, node, &used_refs).await;

    // The reconcile on the cached version plans six marks, three of them on
    // used addresses: refused, requeued at once.
    let err = controller::reconcile(cached.clone(), ctx.clone())
        .await
        .expect_err("a status planned on a version the agent has written since must be refused");
    assert!(refused_as_conflict(&err), "{err:?}");
    assert_eq!(
        controller::error_policy(cached.clone(), &err, ctx.clone()),
        Action::requeue(Duration::ZERO)
    );
    let now = api.get(node).await.expect("read");
    assert!(
        release(&now).is_empty(),
        "refused marks landed: {:?}",
        release(&now)
    );
    assert_eq!(in_use(&now), used);

    // Requeued with the cache's (old) version again: it reads the node from
    // the API server and marks the three excess among the five free.
    let action = controller::reconcile(cached.clone(), ctx.clone())
        .await
        .expect("the requeued reconcile succeeds");
    assert!(action != Action::await_change(), "{action:?}");
    let after = api.get(node).await.expect("read");
    let marks = release(&after);
    assert_eq!(marks.len(), 3, "{marks:?}");
    for (ip, state) in &marks {
        assert_eq!(*state, ReleaseState::Marked, "{ip}");
        assert!(!used.contains(ip), "{ip} is in use and marked for release");
    }
    assert_eq!(in_use(&after), used, "the agent's report stands");
    assert_eq!(
        sim.stats()
            .by_action
            .get(&sextant_cloud::Action::UnassignIps)
            .map_or(0, |s| s.calls),
        0,
        "nothing released without the agent's answer"
    );
    let _ = api.delete(node, &DeleteParams::default()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fixed_ip_status_decided_on_a_stale_read_is_refused_with_409() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let ns = c.namespace("conflicts").await.expect("namespace");
    let api: Api<FixedIP> = Api::namespaced(admin, &ns);
    let f = FixedIP::new(
        "web-0",
        FixedIPSpec {
            ip: "10.0.0.9".into(),
            stateful_set: "web".into(),
            ordinal: 0,
            zone: Some("us-east-1a".into()),
            subnet_id: Some("subnet-1".into()),
            reclaim_policy: ReclaimPolicy::Retain,
            ttl_seconds: Some(60),
        },
    );
    api.create(&PostParams::default(), &f)
        .await
        .expect("FixedIP");
    let bound = json!({ "status": { "phase": "Bound", "node": "n1", "eni": "eni-1" } });
    api.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&bound))
        .await
        .expect("bound");

    // Decided on this read: the pod is gone, retain the address until …
    let read = api.get("web-0").await.expect("read");
    let mut retained = read.status.clone().expect("status");
    retained.phase = Some(FixedIPPhase::Reserved);
    retained.node = None;
    retained.release_after = Some("2026-11-25T12:01:00Z".into());
    // … while another writer (a second replica, say) binds it again.
    let moved = json!({ "status": { "node": "n2", "eni": "eni-2" } });
    api.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&moved))
        .await
        .expect("the other write");

    let patch = make_fixed_ip_status_patch(&read, &retained);
    let err = api
        .patch_status("web-0", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect_err("a FixedIP status decided on an old version must be refused");
    assert!(is_conflict(&err), "{err:?}");
    let now = api.get("web-0").await.expect("read");
    assert_eq!(
        now.status,
        Some(FixedIPStatus {
            phase: Some(FixedIPPhase::Bound),
            node: Some("n2".into()),
            eni: Some("eni-2".into()),
            ..FixedIPStatus::default()
        })
    );
}

/// A small deterministic sequence (no test randomness).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % below.max(1)
    }
}

/// A test stand-in for the agent, keeping its side of the contract: it
/// hands out only pool addresses outside the handshake, answers each mark
/// (`do-not-release` when in use, else `ready-for-release`, after which it
/// never hands that address out), drops `released` entries, and reports
/// usage with its own merge patch (no resourceVersion, `null` for freed).
#[derive(Default)]
struct FakeAgent {
    used: BTreeMap<String, String>,
    freed: Vec<String>,
    promised: std::collections::BTreeSet<String>,
    reports: u64,
    released_seen: u64,
    violations: Vec<String>,
}

impl FakeAgent {
    /// Reads the node, checks that nothing it uses was released, answers the
    /// handshake, moves one address toward `target` in use, and reports.
    async fn step(&mut self, api: &Api<NodeNetwork>, node: &str, target: usize, rng: &mut Lcg) {
        let Some(nn) = api.get_opt(node).await.expect("read") else {
            return;
        };
        let status = nn.status.clone().unwrap_or_default();
        for ip in self.used.keys() {
            if !status.pool.contains_key(ip) {
                self.violations
                    .push(format!("{ip} in use but gone from the pool"));
            }
            if matches!(
                status.release.get(ip),
                Some(ReleaseState::Released | ReleaseState::ReadyForRelease)
            ) {
                self.violations.push(format!(
                    "{ip} in use but {:?} in the handshake",
                    status.release[ip]
                ));
            }
        }
        // A cancelled mark lifts the promise.
        self.promised.retain(|ip| status.release.contains_key(ip));
        let mut answers = serde_json::Map::new();
        for (ip, state) in &status.release {
            match state {
                ReleaseState::Marked if self.used.contains_key(ip) => {
                    answers.insert(ip.clone(), json!("do-not-release"));
                }
                ReleaseState::Marked => {
                    self.promised.insert(ip.clone());
                    answers.insert(ip.clone(), json!("ready-for-release"));
                }
                ReleaseState::Released => {
                    self.released_seen += 1;
                    self.promised.remove(ip);
                    answers.insert(ip.clone(), serde_json::Value::Null);
                }
                ReleaseState::ReadyForRelease | ReleaseState::DoNotRelease => {}
            }
        }
        if self.used.len() < target {
            let free: Vec<&String> = status
                .pool
                .keys()
                .filter(|ip| {
                    !self.used.contains_key(*ip)
                        && !status.release.contains_key(*ip)
                        && !self.promised.contains(*ip)
                        && !answers.contains_key(*ip)
                })
                .collect();
            if !free.is_empty() {
                let ip = free[rng.next(free.len())].clone();
                self.used.insert(ip.clone(), format!("default/pod-{ip}"));
            }
        } else if self.used.len() > target {
            let keys: Vec<String> = self.used.keys().cloned().collect();
            let ip = keys[rng.next(keys.len())].clone();
            self.used.remove(&ip);
            self.freed.push(ip);
        }
        let mut used: serde_json::Map<String, serde_json::Value> = self
            .used
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        for ip in self.freed.drain(..) {
            used.insert(ip, serde_json::Value::Null);
        }
        let mut report = json!({ "usage": {
            "used": used, "cooling": [], "reportedAt": format!("report {}", self.reports),
        }});
        if !answers.is_empty() {
            report["release"] = serde_json::Value::Object(answers);
        }
        api.patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": report })),
        )
        .await
        .expect("agent report");
        self.reports += 1;
    }
}

/// `sextant_operator_reconcile_errors_total{error="kube_conflict"}` from
/// the operator's admin port.
fn conflicts_counted(addr: &str) -> u64 {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| {
            l.starts_with("sextant_operator_reconcile_errors_total")
                && l.contains("error=\"kube_conflict\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_racing_agent_reports_loses_none_and_never_releases_a_used_address() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let values = "provider: sim\nregion: us-east-1\nclusterName: e2e\nvpcId: vpc-sim\nipam:\n  preAllocate: 2\n  maxAboveWatermark: 0\n";
    let rendered = install::install(c, Some(values.into())).expect("install");
    let (op, addr) = install::run_operator(c, &rendered, "sextant-operator-race", vec![])
        .await
        .expect("operator started");
    let admin = c.admin().await.expect("admin");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    let node = "race-node";
    let _ = nodes.delete(node, &DeleteParams::default()).await;
    nodes
        .create(
            &PostParams::default(),
            &install::kwok_node(node, "us-east-1a", "i-0e2e0000000000099", "m5.large"),
        )
        .await
        .expect("node");
    let api: Api<NodeNetwork> = Api::all(admin);
    sextant_e2e::cluster::eventually(Duration::from_secs(60), "a filled pool", || {
        let api = api.clone();
        async move {
            Ok(api
                .get_opt(node)
                .await?
                .filter(|nn| nn.status.as_ref().is_some_and(|s| s.pool.len() >= 2)))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\noperator log:\n{}", op.process.log_tail(40)));

    // Reports every ~150 ms (the real agent's default is one per 15 s, plus
    // its handshake answers) while the operator reconciles each of them:
    // up to five pods, back to none, twice, so the pool grows and the
    // handshake then has to release what is no longer needed.
    let mut agent = FakeAgent::default();
    let mut rng = Lcg(12);
    for target in [5, 0, 5, 0] {
        for _ in 0..25 {
            agent.step(&api, node, target, &mut rng).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    // Then only the handshake, until the operator has settled: every
    // report there, every used address pooled, preAllocate free, no marks.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let settled = loop {
        let target = agent.used.len();
        agent.step(&api, node, target, &mut rng).await;
        let nn = api.get(node).await.expect("read");
        let s = nn.status.clone().unwrap_or_default();
        let free = s
            .pool
            .keys()
            .filter(|ip| !agent.used.contains_key(*ip))
            .count();
        if s.release.is_empty() && free == 2 {
            break nn;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool did not settle on the last report within 60 s: {s:?}\noperator log:\n{}",
            op.process.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert!(
        agent.violations.is_empty(),
        "used addresses released: {:?}",
        agent.violations
    );
    let status = settled.status.expect("status");
    let reported: Vec<&String> = status
        .usage
        .as_ref()
        .map(|u| u.used.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        reported,
        agent.used.keys().collect::<Vec<_>>(),
        "the last report stands"
    );
    for ip in agent.used.keys() {
        assert!(status.pool.contains_key(ip), "{ip} used but not pooled");
    }
    assert!(
        agent.released_seen > 0,
        "the handshake released nothing in {} reports",
        agent.reports
    );
    let conflicts = conflicts_counted(&addr);
    eprintln!(
        "{} agent reports, {} releases seen, {conflicts} status writes refused as conflicts",
        agent.reports, agent.released_seen
    );
    assert!(
        conflicts > 0,
        "no status write raced a report in {} reports: the race was not exercised",
        agent.reports
    );
    op.assert_no_forbidden().expect("operator RBAC");
    let _ = nodes.delete(node, &DeleteParams::default()).await;
}
