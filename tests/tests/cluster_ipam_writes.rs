//! Issue 14, defect 7, on a real kube-apiserver: node IPAM records an
//! unassign decision in NodeNetwork status, guarded by the resourceVersion
//! of the read it was decided from, *before* it unassigns anything in the
//! cloud. A decision made on a stale read (the controller's cache lags a
//! cancel and the agent's new report) is refused with 409 Conflict and
//! nothing is unassigned; the requeued reconcile reads the node again and
//! plans on what is there.
//!
//! ```text
//!  read (rv N: 10.0.0.x ready-for-release) ─▶ cancel + agent uses x (rv N+2)
//!  reconcile(read at N) ─▶ PATCH status {release: released, pool: -x} + resourceVersion N ─▶ 409
//!                       ─▶ no UnassignPrivateIpAddresses; requeued at once
//!  reconcile again ─▶ GET (rv N+2) ─▶ plan: x in use, kept ─▶ record ─▶ unassign the others
//! ```
//!
//! The reconcile is the operator's own (`controller::reconcile`) over the
//! simulated cloud, through a kube `Client` to the test cluster.

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
use sextant_crds::{IpamSpec, NodeNetwork, NodeNetworkSpec, Provider, ReleaseState};
use sextant_e2e::cluster::{Cluster, Options, install};
use sextant_operator::{
    ipam::metrics::IpamMetrics,
    ipam::node::{IpamConfig, NodeIpam},
    node_network::controller::{self, Context, ControllerError, RequeuePolicy, is_conflict},
};

/// One CRD install at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

/// The operator's NodeNetwork controller context over a simulated cloud
/// with one m5.large; returns it with the cloud, the instance and metrics.
fn operator(client: Client) -> (Arc<Context>, Arc<SimCloud>, String, IpamMetrics) {
    let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 9)));
    let subnet = sim
        .add_subnet("vpc-1", "us-east-1a", "10.0.0.0/24", Tags::new())
        .expect("subnet");
    sim.add_security_group("vpc-1", "pods", Tags::new());
    let instance = sim.add_instance("m5.large", &subnet).expect("instance");
    let metrics = IpamMetrics::default();
    let ipam = Arc::new(NodeIpam::new(
        sim.clone(),
        IpamConfig {
            cluster: "e2e".into(),
            ..IpamConfig::default()
        },
        metrics.clone(),
    ));
    let ctx = Arc::new(Context::new(client, ipam, RequeuePolicy::default()));
    (ctx, sim, instance, metrics)
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

async fn fresh_node_network(api: &Api<NodeNetwork>, name: &str, spec: NodeNetworkSpec) {
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

/// A merge patch of `status` as another writer sends it: no resourceVersion.
async fn write(api: &Api<NodeNetwork>, node: &str, status: serde_json::Value) {
    api.patch_status(
        node,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("status patch");
}

fn release(nn: &NodeNetwork) -> BTreeMap<String, ReleaseState> {
    nn.status
        .as_ref()
        .map(|s| s.release.clone())
        .unwrap_or_default()
}

/// The secondary addresses the simulated cloud has on the node's ENIs.
fn in_cloud(sim: &SimCloud) -> Vec<Ipv4Addr> {
    let mut ips: Vec<Ipv4Addr> = sim
        .all_enis()
        .iter()
        .flat_map(|e| e.secondary_ips.clone())
        .collect();
    ips.sort();
    ips
}

fn unassign_calls(sim: &SimCloud) -> u64 {
    sim.stats()
        .by_action
        .get(&sextant_cloud::Action::UnassignIps)
        .map_or(0, |s| s.calls)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unassign_decided_on_a_stale_read_is_refused_before_the_cloud_is_touched() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    install::apply_crds(c).expect("CRDs applied and established");
    let admin = c.admin().await.expect("admin client");
    let api: Api<NodeNetwork> = Api::all(admin.clone());
    let node = "ipam-writes-stale-unassign";
    let (ctx, sim, instance, metrics) = operator(admin.clone());
    fresh_node_network(&api, node, spec(&instance)).await;

    // Fill the pool to preAllocate (8) on fresh reads.
    for _ in 0..4 {
        let nn = api.get(node).await.expect("read");
        controller::reconcile(Arc::new(nn), ctx.clone())
            .await
            .expect("reconcile on a fresh read");
    }
    // preAllocate drops to 2: six excess addresses are marked, and the
    // agent answers ready-for-release for all six.
    let low = json!({ "spec": { "ipam": { "preAllocate": 2, "maxAboveWatermark": 0 } } });
    api.patch(node, &PatchParams::default(), &Patch::Merge(&low))
        .await
        .expect("spec");
    let nn = api.get(node).await.expect("read");
    controller::reconcile(Arc::new(nn), ctx.clone())
        .await
        .expect("marks");
    let marked: Vec<String> = release(&api.get(node).await.expect("read"))
        .into_iter()
        .filter(|(_, s)| *s == ReleaseState::Marked)
        .map(|(ip, _)| ip)
        .collect();
    assert_eq!(marked.len(), 6, "{marked:?}");
    let answers: serde_json::Map<String, serde_json::Value> = marked
        .iter()
        .map(|ip| (ip.clone(), json!("ready-for-release")))
        .collect();
    write(&api, node, json!({ "release": answers })).await;

    // The controller's cache holds this version. Then, on the API server,
    // the promise for one address is cancelled and the agent hands it to
    // a pod: releasing it now would take a live pod's address.
    let cached = Arc::new(api.get(node).await.expect("read"));
    let taken = marked[0].clone();
    write(&api, node, json!({ "release": { taken.clone(): null } })).await;
    write(
        &api,
        node,
        json!({ "usage": { "used": { taken.clone(): "default/db-0" }, "cooling": [],
                "reportedAt": "2026-11-25T12:00:01Z" } }),
    )
    .await;
    let before = in_cloud(&sim);
    let taken_ip: Ipv4Addr = taken.parse().expect("IPv4");
    assert!(before.contains(&taken_ip));

    // Decided on the cached version: refused, and nothing unassigned.
    let err = controller::reconcile(cached.clone(), ctx.clone())
        .await
        .expect_err("an unassign decided on a version written since must be refused");
    assert!(
        in_cloud(&sim).contains(&taken_ip),
        "{taken} was unassigned in the cloud on a stale read while the agent uses it \
         ({} UnassignPrivateIpAddresses calls)",
        unassign_calls(&sim)
    );
    assert!(
        matches!(&err, ControllerError::WriteStatus { source, .. } if is_conflict(source)),
        "{err:?}"
    );
    assert_eq!(unassign_calls(&sim), 0, "no cloud call before the record");
    assert_eq!(in_cloud(&sim), before);
    assert_eq!(metrics.decisions_refused(), 1);
    assert_eq!(
        controller::error_policy(cached.clone(), &err, ctx.clone()),
        Action::requeue(Duration::ZERO)
    );

    // Requeued with the cache's old version: the node is read again, the
    // used address is kept, the other five are recorded and unassigned.
    controller::reconcile(cached.clone(), ctx.clone())
        .await
        .expect("the requeued reconcile succeeds");
    let after = api.get(node).await.expect("read");
    let status = after.status.clone().expect("status");
    let cloud_now = in_cloud(&sim);
    assert!(cloud_now.contains(&taken_ip), "{taken} unassigned");
    assert!(status.pool.contains_key(&taken), "{taken} left the pool");
    assert_eq!(release(&after).get(&taken), None);
    for ip in &marked[1..] {
        let addr: Ipv4Addr = ip.parse().expect("IPv4");
        assert!(!cloud_now.contains(&addr), "{ip} still assigned");
        assert!(!status.pool.contains_key(ip), "{ip} still pooled");
        assert_eq!(
            release(&after).get(ip),
            Some(&ReleaseState::Released),
            "{ip}"
        );
    }
    assert_eq!(cloud_now.len(), before.len() - 5);
    assert_eq!(metrics.decisions_refused(), 1);
    let _ = api.delete(node, &DeleteParams::default()).await;
}
