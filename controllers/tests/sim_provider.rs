//! `--provider sim` end to end without a kube server: the operator's cloud
//! built from its flags, a kwok-style Node turned into a NodeNetwork by the
//! node watch's pure part, and node IPAM's plan/execute reconciling it to
//! `preAllocate` free addresses on an instance the simulator launched on
//! first sight.

use clap::Parser;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::runtime::{reflector, watcher};
use sextant_cloud::{Action, CloudMetrics};
use sextant_crds::{NodeNetwork, NodeNetworkStatus, Provider};
use sextant_operator::{
    args::{Args, CloudProvider},
    ipam::metrics::IpamMetrics,
    node_network::{
        directory::NodeNetworkDirectory,
        node_watch::{LABEL_INSTANCE_TYPE, LABEL_ZONE, node_network_for},
    },
};

/// What `kwok` nodes look like to the operator: an EC2 providerID and the
/// well-known labels.
fn kwok_node(name: &str, instance_id: &str, instance_type: &str, zone: &str) -> Node {
    let mut node = Node {
        spec: Some(NodeSpec {
            provider_id: Some(format!("aws:///{zone}/{instance_id}")),
            ..NodeSpec::default()
        }),
        ..Node::default()
    };
    node.metadata.name = Some(name.into());
    node.metadata.uid = Some(format!("uid-{name}"));
    node.metadata.labels = Some(
        [
            (LABEL_INSTANCE_TYPE.to_owned(), instance_type.to_owned()),
            (LABEL_ZONE.to_owned(), zone.to_owned()),
            ("type".to_owned(), "kwok".to_owned()),
        ]
        .into_iter()
        .collect(),
    );
    node
}

fn args(extra: &[&str]) -> Args {
    let mut argv = vec![
        "sextant-operator",
        "--cluster-name",
        "kind",
        "--provider",
        "sim",
        "--region",
        "us-east-1",
    ];
    argv.extend(extra);
    Args::try_parse_from(argv).expect("flags")
}

/// The NodeNetwork the operator creates for `node`, in the directory the
/// simulated cloud reads (as the NodeNetwork controller's cache is).
fn node_network(a: &Args, node: &Node, dir: &NodeNetworkDirectory) -> NodeNetwork {
    let mut nn = node_network_for(node, a.provider.into(), &a.node_network_defaults())
        .expect("a valid node")
        .expect("the node names its instance");
    nn.metadata.generation = Some(1);
    let (store, mut writer) = reflector::store::<NodeNetwork>();
    writer.apply_watcher_event(&watcher::Event::Apply(nn.clone()));
    dir.set(store);
    nn
}

fn free(status: &NodeNetworkStatus) -> usize {
    let used = status.usage.as_ref().map_or(0, |u| u.used.len());
    status.pool.len() - used
}

/// Reconciles until the plan is done; returns the rounds it took.
async fn reconcile_to_rest(
    ipam: &sextant_operator::ipam::node::NodeIpam,
    nn: &mut NodeNetwork,
) -> usize {
    for round in 1..=20 {
        let r = ipam
            .reconcile(nn, jiff::Timestamp::now())
            .await
            .expect("reconcile");
        assert!(r.error.is_none(), "round {round}: {:?}", r.error);
        let done = r.plan.steps.is_empty();
        nn.status = Some(r.status);
        if done {
            return round;
        }
    }
    panic!("node IPAM did not settle: {:?}", nn.status);
}

#[tokio::test(start_paused = true)]
async fn a_kwok_node_on_the_sim_provider_gets_pre_allocate_free_addresses() {
    // Realistic latencies and EC2's buckets (the default), under paused time.
    let a = args(&["--sim-seed", "7", "--pre-allocate", "8"]);
    assert_eq!(a.provider, CloudProvider::Sim);
    let dir = NodeNetworkDirectory::default();
    let metrics = CloudMetrics::default();
    let cloud = a.cloud(metrics.clone(), &dir).await.expect("sim cloud");
    assert_eq!(cloud.provider(), "sim");

    let node = kwok_node("kwok-node-1", "i-0kwok00000001", "m5.xlarge", "us-east-1b");
    let mut nn = node_network(&a, &node, &dir);
    assert_eq!(nn.spec.provider, Provider::Aws);
    assert_eq!(nn.spec.vpc_id.as_deref(), Some("vpc-sim"));
    assert_eq!(nn.spec.zone.as_deref(), Some("us-east-1b"));

    let ipam = a.node_ipam(cloud.clone(), IpamMetrics::default());
    reconcile_to_rest(&ipam, &mut nn).await;

    let status = nn.status.as_ref().expect("status");
    assert!(
        free(status) >= 8,
        "free {} of {:?}",
        free(status),
        status.pool
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "PoolReady")
        .expect("PoolReady");
    assert_eq!(ready.status, "True", "{}", ready.message);
    // The instance was launched as the node says: an m5.xlarge (4 ENIs of
    // 15) with its primary interface in the us-east-1b subnet.
    let summary = status.summary.expect("summary");
    assert_eq!((summary.max_enis, summary.ipv4_per_eni), (4, 15));
    let subnets = cloud.subnets("vpc-sim").await.expect("subnets");
    let zone_b: Vec<&str> = subnets
        .iter()
        .filter(|s| s.zone == "us-east-1b")
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(zone_b.len(), 1);
    assert!(status.enis.len() >= 2, "{:?}", status.enis);
    for eni in &status.enis {
        assert_eq!(eni.subnet_id, zone_b[0], "{eni:?}");
    }
    let net = cloud
        .instance_network("i-0kwok00000001")
        .await
        .expect("the node's instance");
    assert_eq!(net.enis.len(), status.enis.len());
    // Every call went through the operator's Cloud wrapper.
    let describes = metrics.totals("sim", Action::DescribeInstanceNetwork);
    assert!(describes.attempts >= 2, "{describes:?}");
    assert!(
        metrics.totals("sim", Action::AssignIps).attempts
            + metrics.totals("sim", Action::CreateEni).attempts
            >= 1
    );
}

#[tokio::test]
async fn an_unsimulated_instance_type_on_a_node_is_a_clear_error() {
    let a = args(&["--sim-latency", "instant"]);
    let dir = NodeNetworkDirectory::default();
    let cloud = a
        .cloud(CloudMetrics::default(), &dir)
        .await
        .expect("sim cloud");
    let node = kwok_node("kwok-node-2", "i-0kwok00000002", "t3.nano", "us-east-1a");
    let nn = node_network(&a, &node, &dir);
    let ipam = a.node_ipam(cloud, IpamMetrics::default());
    let err = ipam
        .reconcile(&nn, jiff::Timestamp::now())
        .await
        .expect_err("t3.nano is not simulated");
    let chain = format!("{}", sextant_kit::ErrorChain(&err));
    assert!(
        chain.contains("t3.nano") && chain.contains("m5.large"),
        "{chain}"
    );
}

#[tokio::test]
async fn a_node_in_a_zone_without_a_simulated_subnet_is_a_clear_error() {
    let a = args(&["--sim-latency", "instant", "--sim-zones", "us-east-1a"]);
    let dir = NodeNetworkDirectory::default();
    let cloud = a
        .cloud(CloudMetrics::default(), &dir)
        .await
        .expect("sim cloud");
    let node = kwok_node("kwok-node-3", "i-0kwok00000003", "m5.large", "us-east-1c");
    let nn = node_network(&a, &node, &dir);
    let ipam = a.node_ipam(cloud, IpamMetrics::default());
    let err = ipam
        .reconcile(&nn, jiff::Timestamp::now())
        .await
        .expect_err("no subnet in us-east-1c");
    let chain = format!("{}", sextant_kit::ErrorChain(&err));
    assert!(chain.contains("us-east-1c"), "{chain}");
}
