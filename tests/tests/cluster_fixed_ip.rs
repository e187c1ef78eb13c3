//! Fixed IPs on a real kube-apiserver: the FixedIP controller's own kube
//! writes (`FixedIpController::reconcile_statefulset`, and its watch loop
//! `fixed_ip::controller::watch::run`) over the simulated cloud.
//!
//! ```text
//!  move n1 ─▶ n2     n2 NodeNetwork: fixedIps names the pod            (first)
//!                    cloud: assign with reassignment onto n2's ENI
//!                    n1 NodeNetwork: pool, fixedIps, ENI address out  (then)
//!                    FixedIP: Bound on n2                              (last: the commit)
//!                    node IPAM resyncing n2 right after the cloud move
//!                    finds fixedIps naming the pod: never pooled unguarded
//!  move from a node whose NodeNetwork is gone: its 404 is "already gone"
//!  Reserve whose FixedIP create is refused: the parked address is swept
//!                    once no FixedIP has named it for the grace
//! ```
//!
//! Each test takes its own namespace, its own NodeNetwork names and its own
//! subnet CIDR (the sweep keeps any address a FixedIP of the cluster names),
//! and runs alone: the loop of the sweep test watches the whole cluster.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use futures::TryStreamExt;
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{Pod, ResourceQuota},
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;
use sextant_cloud::{
    AssignIps, CreateEni, EniCloud, ROLE_PARKING, TAG_ROLE, Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_crds::{
    EniStatus, FixedIP, FixedIPPhase, FixedIPSpec, FixedIPStatus, IpamSpec, NodeNetwork,
    NodeNetworkSpec, NodeNetworkStatus, PoolEntry, PoolSummary, Provider, ReclaimPolicy,
    wellknown::{ANNOTATION_FIXED_IP, LABEL_STATEFULSET},
};
use sextant_e2e::cluster::{Cluster, Options, eventually, install};
use sextant_operator::{
    fixed_ip::controller::{FixedIpController, Observed, node_views, pod_views, watch},
    ipam::fixed_ip::plan::StatefulSetView,
};

/// One test at a time: the sweep test's loop watches the whole cluster.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const VPC: &str = "vpc-1";
const ZONE: &str = "us-east-1a";

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

/// The chart's CRDs, applied and Established; an admin client.
async fn with_crds(c: &Cluster) -> Client {
    install::apply_crds(c).expect("CRDs applied and established");
    c.admin().await.expect("admin client")
}

/// A simulated AWS with one subnet of `cidr` in [`VPC`].
fn sim(cidr: &str) -> (Arc<SimCloud>, String) {
    let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 11)));
    let subnet = sim
        .add_subnet(VPC, ZONE, cidr, Tags::new())
        .expect("subnet");
    (sim, subnet)
}

/// An m5.large with a pod ENI at device index 1 in `subnet`.
async fn instance_with_eni(sim: &SimCloud, subnet: &str) -> (String, String) {
    let instance = sim.add_instance("m5.large", subnet).expect("instance");
    let eni = sim
        .create_eni(&CreateEni {
            subnet_id: subnet.to_owned(),
            security_groups: vec![],
            tags: Tags::new(),
            secondary_ips: 0,
            description: String::new(),
        })
        .await
        .expect("ENI");
    sim.attach_eni(&eni.id, &instance, 1).await.expect("attach");
    (instance, eni.id)
}

fn eni_status(eni: &str, subnet: &str, addresses: &[Ipv4Addr]) -> EniStatus {
    EniStatus {
        id: eni.to_owned(),
        subnet_id: subnet.to_owned(),
        device_index: 1,
        addresses: addresses.iter().map(ToString::to_string).collect(),
        ..EniStatus::default()
    }
}

/// NodeNetwork `name` as node IPAM and the FixedIP controller left it:
/// `eni` holding `addresses`, all in the pool, `fixed` in `fixedIps`.
async fn put_node_network(
    api: &Api<NodeNetwork>,
    name: &str,
    instance: &str,
    eni: EniStatus,
    fixed: &[(Ipv4Addr, &str)],
) -> NodeNetwork {
    let _ = api.delete(name, &DeleteParams::default()).await;
    eventually(Duration::from_secs(10), "the old NodeNetwork gone", || {
        let api = api.clone();
        async move { Ok(api.get_opt(name).await?.is_none().then_some(())) }
    })
    .await
    .expect("no NodeNetwork left from an earlier run");
    let spec = NodeNetworkSpec {
        provider: Provider::Aws,
        instance_id: Some(instance.to_owned()),
        instance_type: Some("m5.large".into()),
        zone: Some(ZONE.into()),
        vpc_id: Some(VPC.into()),
        ipam: IpamSpec::default(),
        pod_cidrs: vec![],
    };
    api.create(&PostParams::default(), &NodeNetwork::new(name, spec))
        .await
        .expect("create NodeNetwork");
    let status = NodeNetworkStatus {
        pool: eni
            .addresses
            .iter()
            .map(|a| {
                (
                    a.clone(),
                    PoolEntry {
                        eni: eni.id.clone(),
                    },
                )
            })
            .collect(),
        enis: vec![eni],
        fixed_ips: fixed
            .iter()
            .map(|(ip, pod)| (ip.to_string(), (*pod).to_owned()))
            .collect(),
        summary: Some(PoolSummary {
            max_enis: 3,
            ipv4_per_eni: 10,
            ..PoolSummary::default()
        }),
        ..NodeNetworkStatus::default()
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("NodeNetwork status")
}

/// FixedIP `web-0` of StatefulSet `web`, bound to `node`'s `eni`.
async fn bound_fixed_ip(
    api: &Api<FixedIP>,
    ip: Ipv4Addr,
    subnet: &str,
    node: &str,
    eni: &str,
) -> FixedIP {
    let mut f = FixedIP::new(
        "web-0",
        FixedIPSpec {
            ip: ip.to_string(),
            stateful_set: "web".into(),
            ordinal: 0,
            zone: Some(ZONE.into()),
            subnet_id: Some(subnet.to_owned()),
            reclaim_policy: ReclaimPolicy::Retain,
            ttl_seconds: None,
        },
    );
    f.metadata.labels = Some(BTreeMap::from([(LABEL_STATEFULSET.into(), "web".into())]));
    api.create(&PostParams::default(), &f)
        .await
        .expect("FixedIP");
    let status = FixedIPStatus {
        phase: Some(FixedIPPhase::Bound),
        node: Some(node.to_owned()),
        eni: Some(eni.to_owned()),
        pod_uid: Some("uid-old".into()),
        ..FixedIPStatus::default()
    };
    api.patch_status(
        "web-0",
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": status })),
    )
    .await
    .expect("FixedIP status")
}

/// Pod `web-0` of StatefulSet `web` as the pod watch has it: recreated with
/// a new UID and scheduled to `node`.
fn rescheduled_pod(namespace: &str, node: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some(namespace.to_owned()),
            uid: Some("uid-new".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "StatefulSet".into(),
                name: "web".into(),
                uid: "uid-sts".into(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.to_owned()),
            ..Default::default()
        }),
        ..Pod::default()
    }
}

fn sts_view(namespace: &str) -> StatefulSetView {
    StatefulSetView {
        namespace: namespace.to_owned(),
        name: "web".into(),
        replicas: 1,
        reclaim: ReclaimPolicy::Retain,
        ttl_seconds: None,
        subnet_ids: vec![],
    }
}

fn status_of(nn: &NodeNetwork) -> NodeNetworkStatus {
    nn.status.clone().unwrap_or_default()
}

/// The ENIs holding `ip` in the cloud.
fn holders(sim: &SimCloud, ip: Ipv4Addr) -> Vec<String> {
    sim.all_enis()
        .into_iter()
        .filter(|e| e.secondary_ips.contains(&ip))
        .map(|e| e.id)
        .collect()
}

/// One reconcile of StatefulSet `web` as its watch loop runs it: fresh
/// reads of `nodes`' NodeNetworks and of FixedIP `web-0`, its pod `web-0`
/// now bound to `on`.
async fn reconcile_web(
    ctl: &FixedIpController,
    ns: &str,
    nns: &Api<NodeNetwork>,
    fips: &Api<FixedIP>,
    nodes: &[&str],
    on: &str,
    subnets: &[sextant_cloud::Subnet],
) -> Result<
    Vec<sextant_operator::ipam::fixed_ip::plan::Step>,
    sextant_operator::fixed_ip::controller::FixedIpError,
> {
    let mut read_nns = Vec::new();
    for n in nodes {
        read_nns.push(nns.get(n).await.expect("read"));
    }
    let read_fip = fips.get("web-0").await.expect("read");
    let view = sts_view(ns);
    let pod = rescheduled_pod(ns, on);
    ctl.reconcile_statefulset(
        ns,
        "web",
        Observed {
            statefulset: Some(&view),
            fixed: vec![read_fip],
            pods: pod_views("web", [&pod]),
            nodes: node_views(&read_nns),
            subnets,
        },
        Timestamp::now(),
    )
    .await
}

/// Removes what a test left in the cluster-wide watches' view.
async fn clean_up(fips: &Api<FixedIP>, nns: &Api<NodeNetwork>, nodes: &[&str]) {
    let _ = fips.delete("web-0", &DeleteParams::default()).await;
    for n in nodes {
        let _ = nns.delete(n, &DeleteParams::default()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_moved_fixed_ip_is_named_on_the_new_node_first_and_leaves_the_old_nodes_pool_whole() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let ns = c.namespace("fip-move").await.expect("namespace");
    let nns: Api<NodeNetwork> = Api::all(admin.clone());
    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);
    let (old, new) = ("fip-move-old", "fip-move-new");

    let (sim, subnet) = sim("10.0.2.0/24");
    let (i1, eni1) = instance_with_eni(&sim, &subnet).await;
    let (i2, eni2) = instance_with_eni(&sim, &subnet).await;
    let on_old = sim
        .assign_ips(&eni1, &AssignIps::Count(3))
        .await
        .expect("n1's addresses");
    let (ip, others) = (on_old[0], &on_old[1..]);
    let on_new = sim
        .assign_ips(&eni2, &AssignIps::Count(1))
        .await
        .expect("n2's address");
    let owner = format!("{ns}/web-0");
    put_node_network(
        &nns,
        old,
        &i1,
        eni_status(&eni1, &subnet, &on_old),
        &[(ip, &owner)],
    )
    .await;
    put_node_network(&nns, new, &i2, eni_status(&eni2, &subnet, &on_new), &[]).await;
    // The new node was resynced by its node IPAM once already.
    let from_rv = nns
        .patch_status(
            new,
            &PatchParams::default(),
            &Patch::Merge(&json!({ "status": { "lastResync": "2026-12-07T00:00:00Z" } })),
        )
        .await
        .expect("lastResync")
        .metadata
        .resource_version
        .expect("resourceVersion");
    bound_fixed_ip(&fips, ip, &subnet, old, &eni1).await;

    // Every NodeNetwork write from here on, in the API server's order.
    let seen = {
        let nns = nns.clone();
        let ip = ip.to_string();
        tokio::spawn(async move {
            let mut order = Vec::new();
            let stream = nns
                .watch(&WatchParams::default().timeout(15), &from_rv)
                .await
                .expect("watch NodeNetworks");
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(ev)) = stream.try_next().await {
                let WatchEvent::Modified(nn) = ev else {
                    continue;
                };
                let name = nn.metadata.name.clone().unwrap_or_default();
                let s = status_of(&nn);
                let event =
                    if name == old && !s.pool.contains_key(&ip) && !s.fixed_ips.contains_key(&ip) {
                        "old node lost it"
                    } else if name == new && s.fixed_ips.contains_key(&ip) {
                        "new node names the pod"
                    } else {
                        continue;
                    };
                if !order.contains(&event) {
                    order.push(event);
                }
                if order.len() == 2 {
                    break;
                }
            }
            order
        })
    };

    let subnets = sim.subnets(VPC).await.expect("subnets");
    let ctl = FixedIpController::new(admin.clone(), sim.clone(), "e2e", VPC);
    reconcile_web(&ctl, &ns, &nns, &fips, &[old, new], new, &subnets)
        .await
        .expect("the move is recorded");

    let old_status = status_of(&nns.get(old).await.expect("read"));
    let ip_s = ip.to_string();
    assert!(
        !old_status.pool.contains_key(&ip_s),
        "after the move the old node's pool still offers {ip} to its agent, now without a \
         fixedIps entry guarding it: pool {:?}, fixedIps {:?}",
        old_status.pool.keys().collect::<Vec<_>>(),
        old_status.fixed_ips
    );
    assert!(
        !old_status.fixed_ips.contains_key(&ip_s),
        "{:?}",
        old_status.fixed_ips
    );
    assert!(
        old_status.enis.iter().all(|e| !e.addresses.contains(&ip_s)),
        "node IPAM of the old node would count {ip} as its own: {:?}",
        old_status.enis
    );
    let mut kept: Vec<String> = old_status.pool.keys().cloned().collect();
    kept.sort();
    let mut expected: Vec<String> = others.iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(kept, expected, "the old node's other addresses stay");

    let new_status = status_of(&nns.get(new).await.expect("read"));
    assert_eq!(
        new_status.fixed_ips.get(&ip_s),
        Some(&owner),
        "the new node names the pod"
    );
    assert_eq!(
        new_status.last_resync, None,
        "the new node's IPAM is asked to resync its instance, which puts the moved address \
         in its pool now, not at the next full resync minutes later (the pod's CNI ADD \
         waits for it)"
    );
    let fip = fips.get("web-0").await.expect("read");
    let s = fip.status.clone().unwrap_or_default();
    assert_eq!(
        (s.phase, s.node.as_deref(), s.pod_uid.as_deref()),
        (Some(FixedIPPhase::Bound), Some(new), Some("uid-new"))
    );
    assert_eq!(
        holders(&sim, ip),
        vec![eni2.clone()],
        "in the cloud: on n2 only"
    );
    let order = seen.await.expect("watch task");
    assert_eq!(
        order,
        vec!["new node names the pod", "old node lost it"],
        "the new node names the pod before the cloud move (no resync of it may pool the \
         address unguarded), the old node lets go after it (no resync of it may pool it again)"
    );
    clean_up(&fips, &nns, &[old, new]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_move_away_from_a_deleted_node_completes_and_the_new_node_names_its_pod() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let ns = c.namespace("fip-gone").await.expect("namespace");
    let nns: Api<NodeNetwork> = Api::all(admin.clone());
    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);
    let (gone, new) = ("fip-gone-old", "fip-gone-new");

    let (sim, subnet) = sim("10.0.3.0/24");
    let (_i1, eni1) = instance_with_eni(&sim, &subnet).await;
    let (i2, eni2) = instance_with_eni(&sim, &subnet).await;
    let ip = sim
        .assign_ips(&eni1, &AssignIps::Count(1))
        .await
        .expect("the fixed IP on n1")[0];
    // n1 is deleted: its instance's ENI is detached, its NodeNetwork gone.
    let e1 = sim
        .all_enis()
        .into_iter()
        .find(|e| e.id == eni1)
        .expect("n1's ENI");
    sim.detach_eni(&e1).await.expect("detach");
    let _ = nns.delete(gone, &DeleteParams::default()).await;
    put_node_network(&nns, new, &i2, eni_status(&eni2, &subnet, &[]), &[]).await;
    bound_fixed_ip(&fips, ip, &subnet, gone, &eni1).await;

    // As the loop would: each reconcile on fresh reads, until nothing is left to do.
    let subnets = sim.subnets(VPC).await.expect("subnets");
    let ctl = FixedIpController::new(admin.clone(), sim.clone(), "e2e", VPC);
    let mut errors = Vec::new();
    for _ in 0..3 {
        if let Err(e) = reconcile_web(&ctl, &ns, &nns, &fips, &[new], new, &subnets).await {
            errors.push(format!("{e}: {:?}", std::error::Error::source(&e)));
        }
    }

    let ip_s = ip.to_string();
    let new_status = status_of(&nns.get(new).await.expect("read"));
    assert_eq!(
        new_status.fixed_ips.get(&ip_s),
        Some(&format!("{ns}/web-0")),
        "after 3 reconciles the new node's fixedIps still does not name the pod, so its \
         CNI ADD waits forever and {ip} is unguarded in the node's pool; reconcile errors: \
         {errors:?}"
    );
    assert!(
        errors.is_empty(),
        "a missing old NodeNetwork is already gone, not an error: {errors:?}"
    );
    let s = fips
        .get("web-0")
        .await
        .expect("read")
        .status
        .unwrap_or_default();
    assert_eq!(
        (s.phase, s.node.as_deref(), s.eni.as_deref()),
        (Some(FixedIPPhase::Bound), Some(new), Some(eni2.as_str()))
    );
    assert_eq!(holders(&sim, ip), vec![eni2.clone()]);
    clean_up(&fips, &nns, &[new]).await;
}

/// Addresses on the cluster's parking ENIs in `sim`.
fn parked(sim: &SimCloud) -> BTreeSet<Ipv4Addr> {
    sim.all_enis()
        .into_iter()
        .filter(|e| e.tags.get(TAG_ROLE).map(String::as_str) == Some(ROLE_PARKING))
        .flat_map(|e| e.secondary_ips)
        .collect()
}

/// The addresses FixedIPs of namespace `ns` name.
async fn named(fips: &Api<FixedIP>) -> anyhow::Result<BTreeSet<Ipv4Addr>> {
    Ok(fips
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|f| f.spec.ip.parse().ok())
        .collect())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_parked_for_a_fixed_ip_whose_create_failed_is_swept_after_the_grace() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let ns = c.namespace("fip-leak").await.expect("namespace");
    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);

    // FixedIP creates in the namespace are refused: no FixedIP may exist.
    let quotas: Api<ResourceQuota> = Api::namespaced(admin.clone(), &ns);
    let quota: ResourceQuota = serde_json::from_value(json!({
        "metadata": { "name": "no-fixed-ips" },
        "spec": { "hard": { "count/fixedips.sextant.io": "0" } },
    }))
    .expect("quota");
    quotas
        .create(&PostParams::default(), &quota)
        .await
        .expect("quota");

    // A fixed-IP StatefulSet whose pod is never scheduled.
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "web", "annotations": { ANNOTATION_FIXED_IP: "true" } },
        "spec": {
            "replicas": 1,
            "serviceName": "web",
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": {
                    "nodeSelector": { "sextant.test/nowhere": "true" },
                    "containers": [{ "name": "c", "image": "registry.k8s.io/pause:3.10" }],
                },
            },
        },
    }))
    .expect("StatefulSet");
    Api::<StatefulSet>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await
        .expect("StatefulSet");

    let (sim, _subnet) = sim("10.0.5.0/24");
    let ctl = Arc::new(FixedIpController::new(
        admin.clone(),
        sim.clone(),
        "e2e",
        VPC,
    ));
    let tick = Duration::from_millis(200);
    let cloud: Arc<dyn EniCloud> = sim.clone();
    let running = tokio::spawn(watch::run(ctl, cloud, VPC.into(), tick));

    // Each pass reserves an address, parks it, and has the create refused.
    let leaked = eventually(Duration::from_secs(30), "refused reservations", || {
        let (sim, fips) = (sim.clone(), fips.clone());
        async move {
            let p = parked(&sim);
            let n = named(&fips).await?;
            Ok((p.len() >= 2 && n.is_empty()).then_some(p))
        }
    })
    .await
    .expect("the FixedIP creates are refused while parked addresses pile up");

    // The refusal ends: the next pass reserves again and creates the FixedIP.
    quotas
        .delete("no-fixed-ips", &DeleteParams::default())
        .await
        .expect("quota deleted");
    let kept = eventually(Duration::from_secs(30), "FixedIP web-0", || {
        let fips = fips.clone();
        async move { Ok(fips.get_opt("web-0").await?.map(|f| f.spec.ip)) }
    })
    .await
    .expect("the FixedIP is created once the quota is gone");
    let kept: Ipv4Addr = kept.parse().expect("spec.ip");

    // Well past the grace, only the address a FixedIP names is still parked.
    let settled = eventually(Duration::from_secs(20), "orphans swept", || {
        let sim = sim.clone();
        async move {
            let p = parked(&sim);
            Ok((p == BTreeSet::from([kept])).then_some(p))
        }
    })
    .await;
    let now_parked = parked(&sim);
    running.abort();
    let orphans: Vec<&Ipv4Addr> = now_parked.iter().filter(|ip| **ip != kept).collect();
    assert!(
        settled.is_ok(),
        "20 s after the FixedIP was created, addresses no FixedIP names are still on parking \
         ENIs: {orphans:?} (leaked while refused: {leaked:?})"
    );
    assert!(
        now_parked.contains(&kept),
        "the address FixedIP web-0 names ({kept}) is never swept"
    );
    assert_eq!(
        fips.get("web-0").await.expect("read").spec.ip,
        kept.to_string()
    );
    let leftover = Api::<StatefulSet>::namespaced(admin.clone(), &ns);
    let _ = leftover.delete("web", &DeleteParams::default()).await;
    let _ = fips.delete("web-0", &DeleteParams::default()).await;
}

/// A future of the [`EniCloud`] trait object's methods.
type CloudFuture<'f, T> = futures::future::BoxFuture<'f, sextant_cloud::Result<T>>;

/// The simulated cloud, with node IPAM's reconcile of one node run the
/// moment an address is assigned with reassignment onto that node's ENI:
/// the worst interleaving the operator's two controllers allow, since node
/// IPAM reconciles a node whenever its NodeNetwork changes (every agent
/// report) and resyncs it from the cloud, independently of the FixedIP
/// controller's writes.
struct ResyncOnMove {
    inner: Arc<SimCloud>,
    /// The ENI whose incoming moves trigger the reconcile.
    eni: String,
    /// The NodeNetwork of the node owning it.
    node: String,
    nns: Api<NodeNetwork>,
    ipam: Arc<sextant_operator::node_network::controller::Context>,
    /// Reconciles that ran, with their outcome.
    ran: std::sync::Mutex<Vec<String>>,
}

impl EniCloud for ResyncOnMove {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }
    fn instance_network<'a, 'b, 'f>(
        &'a self,
        instance_id: &'b str,
    ) -> CloudFuture<'f, sextant_cloud::InstanceNetwork>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.instance_network(instance_id)
    }
    fn list_enis<'a, 'b, 'f>(
        &'a self,
        vpc_id: &'b str,
        page: sextant_cloud::PageRequest,
    ) -> CloudFuture<'f, sextant_cloud::Page<sextant_cloud::Eni>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.list_enis(vpc_id, page)
    }
    fn subnets<'a, 'b, 'f>(&'a self, vpc_id: &'b str) -> CloudFuture<'f, Vec<sextant_cloud::Subnet>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.subnets(vpc_id)
    }
    fn security_groups<'a, 'b, 'f>(
        &'a self,
        vpc_id: &'b str,
    ) -> CloudFuture<'f, Vec<sextant_cloud::SecurityGroup>>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.security_groups(vpc_id)
    }
    fn instance_limits<'a, 'b, 'f>(
        &'a self,
        instance_type: &'b str,
    ) -> CloudFuture<'f, sextant_cloud::InstanceLimits>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.instance_limits(instance_type)
    }
    fn create_eni<'a, 'b, 'f>(
        &'a self,
        request: &'b CreateEni,
    ) -> CloudFuture<'f, sextant_cloud::Eni>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.create_eni(request)
    }
    fn attach_eni<'a, 'b, 'c, 'f>(
        &'a self,
        eni_id: &'b str,
        instance_id: &'c str,
        device_index: u32,
    ) -> CloudFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        self.inner.attach_eni(eni_id, instance_id, device_index)
    }
    fn assign_ips<'a, 'b, 'c, 'f>(
        &'a self,
        eni_id: &'b str,
        request: &'c AssignIps,
    ) -> CloudFuture<'f, Vec<Ipv4Addr>>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        Box::pin(async move {
            let assigned = self.inner.assign_ips(eni_id, request).await?;
            let moved_here = eni_id == self.eni
                && matches!(
                    request,
                    AssignIps::Specific {
                        allow_reassignment: true,
                        ..
                    }
                );
            if moved_here {
                let nn = self.nns.get(&self.node).await.expect("read the new node");
                let r = sextant_operator::node_network::controller::reconcile(
                    Arc::new(nn),
                    self.ipam.clone(),
                )
                .await;
                self.ran
                    .lock()
                    .expect("lock")
                    .push(format!("{:?}", r.map(|_| "reconciled")));
            }
            Ok(assigned)
        })
    }
    fn unassign_ips<'a, 'b, 'c, 'f>(
        &'a self,
        eni_id: &'b str,
        ips: &'c [Ipv4Addr],
    ) -> CloudFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        'c: 'f,
        Self: 'f,
    {
        self.inner.unassign_ips(eni_id, ips)
    }
    fn detach_eni<'a, 'b, 'f>(&'a self, eni: &'b sextant_cloud::Eni) -> CloudFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.detach_eni(eni)
    }
    fn delete_eni<'a, 'b, 'f>(&'a self, eni_id: &'b str) -> CloudFuture<'f, ()>
    where
        'a: 'f,
        'b: 'f,
        Self: 'f,
    {
        self.inner.delete_eni(eni_id)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn node_ipam_resyncing_the_new_node_mid_move_never_pools_the_address_before_fixed_ips_names_it()
 {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let admin = with_crds(c).await;
    let ns = c.namespace("fip-window").await.expect("namespace");
    let nns: Api<NodeNetwork> = Api::all(admin.clone());
    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);
    let (old, new) = ("fip-window-old", "fip-window-new");

    let (sim, subnet) = sim("10.0.6.0/24");
    let (i1, eni1) = instance_with_eni(&sim, &subnet).await;
    let (i2, eni2) = instance_with_eni(&sim, &subnet).await;
    let on_old = sim
        .assign_ips(&eni1, &AssignIps::Count(2))
        .await
        .expect("n1's addresses");
    let ip = on_old[0];
    let owner = format!("{ns}/web-0");
    put_node_network(
        &nns,
        old,
        &i1,
        eni_status(&eni1, &subnet, &on_old),
        &[(ip, &owner)],
    )
    .await;
    // Never resynced by node IPAM yet: its first reconcile describes the
    // instance, as after a restart of the operator.
    let from_rv = put_node_network(&nns, new, &i2, eni_status(&eni2, &subnet, &[]), &[])
        .await
        .metadata
        .resource_version
        .expect("resourceVersion");
    bound_fixed_ip(&fips, ip, &subnet, old, &eni1).await;

    // Every state of the new node's NodeNetwork, in the API server's order.
    let seen = {
        let nns = nns.clone();
        let (ip, owner) = (ip.to_string(), owner.clone());
        tokio::spawn(async move {
            let mut unguarded = Vec::new();
            let stream = nns
                .watch(&WatchParams::default().timeout(15), &from_rv)
                .await
                .expect("watch NodeNetworks");
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(ev)) = stream.try_next().await {
                let WatchEvent::Modified(nn) = ev else {
                    continue;
                };
                if nn.metadata.name.as_deref() != Some(new) {
                    continue;
                }
                let s = status_of(&nn);
                let pooled = s.pool.contains_key(&ip);
                let named = s.fixed_ips.get(&ip) == Some(&owner);
                if pooled && !named {
                    unguarded.push(format!(
                        "rv {}: pool {:?}, fixedIps {:?}",
                        nn.metadata.resource_version.unwrap_or_default(),
                        s.pool.keys().collect::<Vec<_>>(),
                        s.fixed_ips
                    ));
                }
                if pooled && named {
                    break;
                }
            }
            unguarded
        })
    };

    let node_ipam = Arc::new(sextant_operator::ipam::node::NodeIpam::new(
        sim.clone(),
        sextant_operator::ipam::node::IpamConfig {
            cluster: "e2e".into(),
            ..Default::default()
        },
        sextant_operator::ipam::metrics::IpamMetrics::default(),
    ));
    let hooked = Arc::new(ResyncOnMove {
        inner: sim.clone(),
        eni: eni2.clone(),
        node: new.into(),
        nns: nns.clone(),
        ipam: Arc::new(sextant_operator::node_network::controller::Context::new(
            admin.clone(),
            node_ipam,
            Default::default(),
        )),
        ran: std::sync::Mutex::default(),
    });
    let subnets = sim.subnets(VPC).await.expect("subnets");
    let ctl = FixedIpController::new(admin.clone(), hooked.clone(), "e2e", VPC);
    reconcile_web(&ctl, &ns, &nns, &fips, &[old, new], new, &subnets)
        .await
        .expect("the move is recorded");

    assert_eq!(
        *hooked.ran.lock().expect("lock"),
        vec!["Ok(\"reconciled\")".to_owned()],
        "node IPAM reconciled the new node once, between the cloud move and the record"
    );
    let new_status = status_of(&nns.get(new).await.expect("read"));
    let ip_s = ip.to_string();
    assert!(
        new_status.pool.contains_key(&ip_s),
        "node IPAM's resync put the moved address in the new node's pool: {:?}",
        new_status.pool.keys().collect::<Vec<_>>()
    );
    assert_eq!(new_status.fixed_ips.get(&ip_s), Some(&owner));
    let unguarded = seen.await.expect("watch task");
    assert!(
        unguarded.is_empty(),
        "node IPAM's resync put {ip} in the new node's pool before its fixedIps named \
         {owner}: its agent could hand it to any pod (one address, two pods): {unguarded:?}"
    );
    let s = fips
        .get("web-0")
        .await
        .expect("read")
        .status
        .unwrap_or_default();
    assert_eq!(
        (s.phase, s.node.as_deref()),
        (Some(FixedIPPhase::Bound), Some(new))
    );
    assert_eq!(holders(&sim, ip), vec![eni2.clone()]);
    clean_up(&fips, &nns, &[old, new]).await;
}
