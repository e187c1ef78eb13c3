//! Node watch: every Kubernetes `Node` of a cloud gets its `NodeNetwork`,
//! named after it, owned by it (so the garbage collector deletes it with the
//! node), and filled from what the cloud controller wrote on the node: the
//! instance from `spec.providerID`, the type and zone from the well-known
//! labels.
//!
//! ```text
//!  watch Node ─▶ strip status ─▶ fingerprint changed? ─▶ node_network_for (pure) ─▶ POST unless the NodeNetwork cache has it
//! ```
//!
//! Existing NodeNetworks are never rewritten here: their spec belongs to the
//! platform team once created (per-node overrides).

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PostParams,
    runtime::{
        PredicateConfig, WatchStreamExt,
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use sextant_cloud::Backoff;
use sextant_crds::{IpamSpec, NodeNetwork, NodeNetworkSpec, Provider};
use tokio::time::Instant;
use tracing::{debug, info, instrument, warn};

use super::pod_cidr::{Allocations, Cidr, PodCidrPool};

use sextant_crds::wellknown::{FIELD_MANAGER_OPERATOR, LABEL_MANAGED_BY};
use sextant_kit::ErrorChain;

/// Label with the instance type, set by the kubelet or cloud controller.
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Deprecated spelling of [`LABEL_INSTANCE_TYPE`] that older nodes still carry.
pub(crate) const LABEL_INSTANCE_TYPE_BETA: &str = "beta.kubernetes.io/instance-type";
/// Label with the availability zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";

/// What a NodeNetwork created for a node starts with, besides what the node says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeNetworkDefaults {
    /// VPC written into new specs; `None` lets the reconciler learn it from the
    /// instance's ENIs.
    pub(crate) vpc_id: Option<String>,
    /// IPAM knobs written into new specs (subnet and security-group
    /// selection). Watermarks are better left unset here: unset knobs follow
    /// the operator's flags even after they change.
    pub(crate) ipam: IpamSpec,
}

/// A cloud instance as a node's `spec.providerID` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProviderId {
    /// Instance id (`i-...`).
    pub(crate) instance_id: String,
    /// Zone, where the provider id carries one (AWS).
    pub(crate) zone: Option<String>,
}

/// Why a node cannot get a NodeNetwork.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeWatchError {
    /// `spec.providerID` is not of the shape the provider's cloud controller writes.
    #[error(
        "node {node}: providerID {provider_id:?} is not an {provider} provider id ({expected})"
    )]
    BadProviderId {
        /// Node name.
        node: String,
        /// The value found.
        provider_id: String,
        /// The operator's provider.
        provider: Provider,
        /// The shape expected.
        expected: &'static str,
    },
    /// The node has no name or uid (not read from the API server).
    #[error("node without metadata.name or metadata.uid")]
    MissingIdentity,
}

impl NodeWatchError {
    /// Label for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            NodeWatchError::BadProviderId { .. } => "bad_provider_id",
            NodeWatchError::MissingIdentity => "node_without_identity",
        }
    }
}

fn valid_instance_id(id: &str) -> bool {
    id.len() > 2
        && id.starts_with("i-")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn valid_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Parses a provider id: AWS `aws:///us-east-1a/i-0abc123` (the zone may be
/// empty), Alibaba `cn-hangzhou.i-xxxx` (optionally `alicloud://`-prefixed).
/// `None` when it does not have that shape.
pub(crate) fn parse_provider_id(provider: Provider, provider_id: &str) -> Option<ProviderId> {
    match provider {
        Provider::Aws => {
            let rest = provider_id.strip_prefix("aws:///")?;
            let (zone, instance_id) = rest.split_once('/').unwrap_or(("", rest));
            if !valid_instance_id(instance_id) || !(zone.is_empty() || valid_zone(zone)) {
                return None;
            }
            Some(ProviderId {
                instance_id: instance_id.to_owned(),
                zone: (!zone.is_empty()).then(|| zone.to_owned()),
            })
        }
        Provider::Alibaba => {
            let rest = provider_id
                .strip_prefix("alicloud://")
                .unwrap_or(provider_id);
            let (region, instance_id) = rest.split_once('.')?;
            if !valid_zone(region) || !valid_instance_id(instance_id) {
                return None;
            }
            Some(ProviderId {
                instance_id: instance_id.to_owned(),
                zone: None,
            })
        }
        Provider::Static => None,
    }
}

fn expected_shape(provider: Provider) -> &'static str {
    match provider {
        Provider::Aws => "aws:///<zone>/i-<id>",
        Provider::Alibaba => "<region>.i-<id>",
        Provider::Static => "none",
    }
}

/// The NodeNetwork a node should have, or `None` while the node does not say
/// enough yet (no `providerID` or instance-type label: the cloud controller
/// sets them shortly after the node registers, and that update brings the
/// node back here). A provider id of the wrong shape is an error, never a
/// panic.
pub fn node_network_for(
    node: &Node,
    provider: Provider,
    defaults: &NodeNetworkDefaults,
) -> Result<Option<NodeNetwork>, NodeWatchError> {
    let (Some(name), Some(_uid)) = (node.metadata.name.as_deref(), node.metadata.uid.as_deref())
    else {
        return Err(NodeWatchError::MissingIdentity);
    };
    let labels = node.labels();
    let zone_label = labels.get(LABEL_ZONE).filter(|z| !z.is_empty()).cloned();
    let spec = match provider {
        Provider::Static => {
            let cidrs = node_pod_cidrs(node);
            if cidrs.is_empty() {
                return Ok(None);
            }
            NodeNetworkSpec {
                provider,
                instance_id: None,
                instance_type: None,
                zone: zone_label,
                vpc_id: None,
                ipam: defaults.ipam.clone(),
                pod_cidrs: cidrs,
            }
        }
        Provider::Aws | Provider::Alibaba => {
            let Some(provider_id) = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .filter(|p| !p.is_empty())
            else {
                return Ok(None);
            };
            let parsed = parse_provider_id(provider, provider_id).ok_or_else(|| {
                NodeWatchError::BadProviderId {
                    node: name.to_owned(),
                    provider_id: provider_id.to_owned(),
                    provider,
                    expected: expected_shape(provider),
                }
            })?;
            let Some(instance_type) = labels
                .get(LABEL_INSTANCE_TYPE)
                .or_else(|| labels.get(LABEL_INSTANCE_TYPE_BETA))
                .filter(|t| !t.is_empty())
            else {
                return Ok(None);
            };
            NodeNetworkSpec {
                provider,
                instance_id: Some(parsed.instance_id),
                instance_type: Some(instance_type.clone()),
                zone: zone_label.or(parsed.zone),
                vpc_id: defaults.vpc_id.clone(),
                ipam: defaults.ipam.clone(),
                pod_cidrs: vec![],
            }
        }
    };
    let mut nn = NodeNetwork::new(name, spec);
    nn.metadata.owner_references = node.controller_owner_ref(&()).map(|o| vec![o]);
    nn.metadata.labels = Some(
        [(
            LABEL_MANAGED_BY.to_owned(),
            FIELD_MANAGER_OPERATOR.to_owned(),
        )]
        .into_iter()
        .collect(),
    );
    Ok(Some(nn))
}

/// A fingerprint of what [`node_network_for`] reads, so node heartbeats do
/// not wake the node controller.
pub(crate) fn node_fingerprint(node: &Node) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    node.metadata.uid.hash(&mut h);
    node.spec.as_ref().map(|s| &s.provider_id).hash(&mut h);
    node.spec.as_ref().map(|s| &s.pod_cidrs).hash(&mut h);
    for key in [LABEL_INSTANCE_TYPE, LABEL_INSTANCE_TYPE_BETA, LABEL_ZONE] {
        node.labels().get(key).hash(&mut h);
    }
    Some(h.finish())
}

/// Node watch metrics (`sextant_operator_node_networks_created`, `sextant_operator_node_watch_errors`).
#[derive(Clone, Default)]
pub(crate) struct NodeWatchMetrics {
    created: Counter,
    errors: Family<ErrorLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

impl NodeWatchMetrics {
    /// Registers under `registry` (the `sextant_operator` one).
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "node_networks_created",
            "NodeNetworks created for new nodes",
            self.created.clone(),
        );
        registry.register(
            "node_watch_errors",
            "Nodes that could not get a NodeNetwork, by error",
            self.errors.clone(),
        );
    }
}

/// What the node watch works with.
pub(crate) struct NodeContext {
    /// Kubernetes client.
    pub(crate) client: Client,
    /// The operator's provider.
    pub(crate) provider: Provider,
    /// What new NodeNetworks start with.
    pub(crate) defaults: NodeNetworkDefaults,
    /// NodeNetworks known to the NodeNetwork controller, so existing ones
    /// cost no API call.
    pub(crate) node_networks: Store<NodeNetwork>,
    /// Retries of a failed create.
    pub(crate) retry: Backoff,
    /// Metrics.
    pub(crate) metrics: NodeWatchMetrics,
    /// Sextant's pod CIDR pool for bare-metal nodes the controller-manager
    /// gives no `podCIDR` (`--pod-cidr-pool`); `None`: such nodes wait.
    pub(crate) pod_cidrs: Option<Arc<PodCidrAllocator>>,
}

/// Hands out pod CIDR blocks to bare-metal nodes, one at a time.
pub(crate) struct PodCidrAllocator {
    pool: PodCidrPool,
    quarantine: Duration,
    /// Held across choosing a block and creating the NodeNetwork that
    /// records it: two nodes never get the same block.
    state: tokio::sync::Mutex<Allocations>,
}

impl PodCidrAllocator {
    /// An allocator over `pool`; a freed block waits `quarantine`.
    pub(crate) fn new(pool: PodCidrPool, quarantine: Duration) -> Self {
        PodCidrAllocator {
            pool,
            quarantine,
            state: tokio::sync::Mutex::default(),
        }
    }
}

/// Why a node did not get its NodeNetwork.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NodeReconcileError {
    /// The node cannot be turned into a NodeNetwork.
    #[error(transparent)]
    Node(#[from] NodeWatchError),
    /// Every block of the pod CIDR pool is taken.
    #[error(
        "node {node}: the pod CIDR pool has no free /{mask} block ({blocks} blocks, all taken or in quarantine); add a CIDR to --pod-cidr-pool"
    )]
    PodCidrPoolFull {
        /// Node name.
        node: String,
        /// The node block size.
        mask: u8,
        /// Blocks in the pool.
        blocks: u64,
    },
    /// Creating the NodeNetwork failed.
    #[error("node {node}: creating its NodeNetwork")]
    Create {
        /// Node name.
        node: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl NodeReconcileError {
    /// Label for metrics.
    pub(crate) fn metric_label(&self) -> &'static str {
        match self {
            NodeReconcileError::Node(e) => e.metric_label(),
            NodeReconcileError::PodCidrPoolFull { .. } => "pod_cidr_pool_full",
            NodeReconcileError::Create { .. } => "kube_create",
        }
    }
}

/// What [`ensure_node_network`] found or did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeOutcome {
    /// The node already has its NodeNetwork.
    Exists,
    /// The node does not name its instance yet.
    Waiting,
    /// The NodeNetwork was created now.
    Created,
}

/// Creates the node's NodeNetwork when it has none.
#[instrument(skip_all, fields(node = %node.name_any()))]
pub(crate) async fn ensure_node_network(
    node: &Node,
    ctx: &NodeContext,
) -> Result<NodeOutcome, NodeReconcileError> {
    let name = node.name_any();
    if ctx
        .node_networks
        .get(&ObjectRef::<NodeNetwork>::new(&name))
        .is_some()
    {
        return Ok(NodeOutcome::Exists);
    }
    if let Some(pool) = ctx
        .pod_cidrs
        .as_ref()
        .filter(|_| ctx.provider == Provider::Static)
        && node_pod_cidrs(node).is_empty()
    {
        return create_with_pool_cidr(node, ctx, pool).await;
    }
    let Some(nn) = node_network_for(node, ctx.provider, &ctx.defaults)? else {
        debug!("node does not name its instance yet; waiting for its next update");
        return Ok(NodeOutcome::Waiting);
    };
    let api: Api<NodeNetwork> = Api::all(ctx.client.clone());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
        ..PostParams::default()
    };
    match api.create(&pp, &nn).await {
        Ok(_) => {
            info!(
                instance = nn.spec.instance_id.as_deref().unwrap_or_default(),
                instance_type = nn.spec.instance_type.as_deref().unwrap_or_default(),
                "created NodeNetwork"
            );
            ctx.metrics.created.inc();
            Ok(NodeOutcome::Created)
        }
        // Created meanwhile (a former leader, or our cache lagging).
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(NodeOutcome::Exists),
        Err(source) => Err(NodeReconcileError::Create { node: name, source }),
    }
}

/// `Node.spec.podCIDRs`, or its `podCIDR`.
fn node_pod_cidrs(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    let cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    if cidrs.is_empty() {
        spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect()
    } else {
        cidrs
    }
}

/// Creates a bare-metal node's NodeNetwork with a block of the pool,
/// choosing the block and creating under the allocator's lock.
async fn create_with_pool_cidr(
    node: &Node,
    ctx: &NodeContext,
    pool: &PodCidrAllocator,
) -> Result<NodeOutcome, NodeReconcileError> {
    let name = node.name_any();
    let mut state = pool.state.lock().await;
    let cached: BTreeMap<String, Vec<Cidr>> = ctx
        .node_networks
        .state()
        .iter()
        .map(|nn| {
            let cidrs = nn
                .spec
                .pod_cidrs
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect();
            (nn.name_any(), cidrs)
        })
        .collect();
    let Some(block) = state.allocate(&pool.pool, &name, &cached, Instant::now(), pool.quarantine)
    else {
        return Err(NodeReconcileError::PodCidrPoolFull {
            node: name,
            mask: pool.pool.node_len(),
            blocks: pool.pool.blocks(),
        });
    };
    let mut with_cidr = node.clone();
    with_cidr.spec.get_or_insert_default().pod_cidrs = Some(vec![block.to_string()]);
    let Some(nn) = node_network_for(&with_cidr, ctx.provider, &ctx.defaults)? else {
        state.abandon(&name);
        return Ok(NodeOutcome::Waiting);
    };
    let api: Api<NodeNetwork> = Api::all(ctx.client.clone());
    let pp = PostParams {
        field_manager: Some(FIELD_MANAGER_OPERATOR.to_owned()),
        ..PostParams::default()
    };
    match api.create(&pp, &nn).await {
        Ok(_) => {
            info!(pod_cidr = %block, "created NodeNetwork with a pod CIDR from the pool");
            ctx.metrics.created.inc();
            Ok(NodeOutcome::Created)
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => {
            state.abandon(&name);
            Ok(NodeOutcome::Exists)
        }
        Err(source) => {
            state.abandon(&name);
            Err(NodeReconcileError::Create { node: name, source })
        }
    }
}

/// [`ensure_node_network`] with retries of failed creates (jittered
/// backoff); a node that cannot be turned into a NodeNetwork is reported
/// and left until it changes.
pub(crate) async fn handle_node(node: &Node, ctx: &NodeContext) {
    let mut attempt = 0;
    loop {
        let err = match ensure_node_network(node, ctx).await {
            Ok(_) => return,
            Err(e) => e,
        };
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabels {
                error: err.metric_label(),
            })
            .inc();
        attempt += 1;
        // A full pod CIDR pool may drain (a node deleted, a quarantine over).
        let retry = matches!(
            err,
            NodeReconcileError::Create { .. } | NodeReconcileError::PodCidrPoolFull { .. }
        ) && attempt < ctx.retry.max_attempts;
        warn!(node = %node.name_any(), error = %ErrorChain(&err), attempt, retry, "node without NodeNetwork");
        if !retry {
            return;
        }
        let delay = ctx
            .retry
            .delay(attempt - 1, Some(ctx.retry.base), &mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

/// Watches Nodes and gives each its NodeNetwork, a few nodes at a time.
/// Nodes are not cached (their status is large and unused): only a
/// fingerprint of what matters is kept, so heartbeats do nothing. Ends only
/// if the watch ends.
pub(crate) async fn watch_nodes(ctx: Arc<NodeContext>, concurrency: usize) {
    if ctx.node_networks.wait_until_ready().await.is_err() {
        return;
    }
    let nodes = watcher(
        Api::<Node>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .modify(|n: &mut Node| {
        n.status = None;
        n.metadata.managed_fields = None;
    })
    .applied_objects()
    .predicate_filter(node_fingerprint, PredicateConfig::default());
    nodes
        .for_each_concurrent(concurrency, |r| {
            let ctx = ctx.clone();
            async move {
                match r {
                    Ok(node) => handle_node(&node, &ctx).await,
                    Err(e) => warn!(error = %ErrorChain(&e), "node watch"),
                }
            }
        })
        .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::NodeSpec;
    use kube::api::ObjectMeta;

    fn mk_node(name: &str, provider_id: Option<&str>, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: provider_id.map(str::to_owned),
                ..NodeSpec::default()
            }),
            status: None,
        }
    }

    const TYPE_AND_ZONE: [(&str, &str); 2] = [
        (LABEL_INSTANCE_TYPE, "m5.large"),
        (LABEL_ZONE, "us-east-1a"),
    ];

    #[test]
    fn aws_provider_id_gives_zone_and_instance() {
        assert_eq!(
            parse_provider_id(Provider::Aws, "aws:///us-east-1a/i-0abc123"),
            Some(ProviderId {
                instance_id: "i-0abc123".into(),
                zone: Some("us-east-1a".into())
            })
        );
        assert_eq!(
            parse_provider_id(Provider::Aws, "aws:////i-0abc123"),
            Some(ProviderId {
                instance_id: "i-0abc123".into(),
                zone: None
            })
        );
    }

    #[test]
    fn alibaba_provider_id_gives_instance() {
        for id in ["cn-hangzhou.i-bp1abc", "alicloud://cn-hangzhou.i-bp1abc"] {
            assert_eq!(
                parse_provider_id(Provider::Alibaba, id),
                Some(ProviderId {
                    instance_id: "i-bp1abc".into(),
                    zone: None
                }),
                "{id}"
            );
        }
    }

    #[test]
    fn malformed_provider_ids_do_not_parse() {
        for (provider, id) in [
            (Provider::Aws, "gce://project/zone/vm"),
            (Provider::Aws, "aws:///us-east-1a/"),
            (Provider::Aws, "aws:///us-east-1a/vol-123"),
            (Provider::Aws, "aws:///us east/i-1"),
            (Provider::Aws, "aws://"),
            (Provider::Aws, "cn-hangzhou.i-bp1abc"),
            (Provider::Alibaba, "aws:///us-east-1a/i-0abc123"),
            (Provider::Alibaba, "i-bp1abc"),
            (Provider::Alibaba, "cn-hangzhou."),
            (Provider::Alibaba, "."),
            (Provider::Alibaba, "cn-hangzhou.i-ü"),
        ] {
            assert_eq!(parse_provider_id(provider, id), None, "{provider} {id}");
        }
    }

    #[test]
    fn aws_node_becomes_a_node_network_owned_by_the_node() {
        let node = mk_node(
            "ip-10-0-0-1",
            Some("aws:///us-east-1a/i-0abc123"),
            &TYPE_AND_ZONE,
        );
        let defaults = NodeNetworkDefaults {
            vpc_id: Some("vpc-1".into()),
            ..NodeNetworkDefaults::default()
        };
        let nn = node_network_for(&node, Provider::Aws, &defaults)
            .unwrap()
            .unwrap();
        assert_eq!(nn.metadata.name.as_deref(), Some("ip-10-0-0-1"));
        assert_eq!(nn.spec.provider, Provider::Aws);
        assert_eq!(nn.spec.instance_id.as_deref(), Some("i-0abc123"));
        assert_eq!(nn.spec.instance_type.as_deref(), Some("m5.large"));
        assert_eq!(nn.spec.zone.as_deref(), Some("us-east-1a"));
        assert_eq!(nn.spec.vpc_id.as_deref(), Some("vpc-1"));
        let owners = nn.metadata.owner_references.unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "Node");
        assert_eq!(owners[0].api_version, "v1");
        assert_eq!(owners[0].name, "ip-10-0-0-1");
        assert_eq!(owners[0].uid, "uid-ip-10-0-0-1");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn zone_falls_back_to_the_provider_id_and_type_to_the_beta_label() {
        let node = mk_node(
            "n",
            Some("aws:///eu-west-1b/i-1"),
            &[(LABEL_INSTANCE_TYPE_BETA, "c5.xlarge")],
        );
        let nn = node_network_for(&node, Provider::Aws, &NodeNetworkDefaults::default())
            .unwrap()
            .unwrap();
        assert_eq!(nn.spec.zone.as_deref(), Some("eu-west-1b"));
        assert_eq!(nn.spec.instance_type.as_deref(), Some("c5.xlarge"));
        assert_eq!(nn.spec.vpc_id, None);
    }

    #[test]
    fn alibaba_node_takes_the_zone_from_its_label() {
        let node = mk_node(
            "cn-hangzhou.192.168.0.1",
            Some("cn-hangzhou.i-bp1abc"),
            &[
                (LABEL_INSTANCE_TYPE, "ecs.g7.large"),
                (LABEL_ZONE, "cn-hangzhou-h"),
            ],
        );
        let nn = node_network_for(&node, Provider::Alibaba, &NodeNetworkDefaults::default())
            .unwrap()
            .unwrap();
        assert_eq!(nn.spec.provider, Provider::Alibaba);
        assert_eq!(nn.spec.instance_id.as_deref(), Some("i-bp1abc"));
        assert_eq!(nn.spec.zone.as_deref(), Some("cn-hangzhou-h"));
        assert!(nn.spec.validate().is_ok());
    }

    #[test]
    fn unknown_provider_id_shape_is_a_clear_error() {
        let node = mk_node("n", Some("gce://proj/us-central1-a/vm-1"), &TYPE_AND_ZONE);
        let err =
            node_network_for(&node, Provider::Aws, &NodeNetworkDefaults::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "node n: providerID \"gce://proj/us-central1-a/vm-1\" is not an aws provider id (aws:///<zone>/i-<id>)"
        );
        assert_eq!(err.metric_label(), "bad_provider_id");
    }

    #[test]
    fn nodes_that_do_not_name_their_instance_yet_wait() {
        let defaults = NodeNetworkDefaults::default();
        for node in [
            mk_node("n", None, &TYPE_AND_ZONE),
            mk_node("n", Some(""), &TYPE_AND_ZONE),
            mk_node("n", Some("aws:///us-east-1a/i-1"), &[(LABEL_ZONE, "a")]),
        ] {
            assert!(matches!(
                node_network_for(&node, Provider::Aws, &defaults),
                Ok(None)
            ));
        }
    }

    #[test]
    fn a_node_without_uid_cannot_own_anything() {
        let mut node = mk_node("n", Some("aws:///us-east-1a/i-1"), &TYPE_AND_ZONE);
        node.metadata.uid = None;
        assert!(matches!(
            node_network_for(&node, Provider::Aws, &NodeNetworkDefaults::default()),
            Err(NodeWatchError::MissingIdentity)
        ));
    }

    #[test]
    fn static_nodes_take_their_pod_cidrs() {
        let mut node = mk_node("bm-1", None, &[]);
        assert!(matches!(
            node_network_for(&node, Provider::Static, &NodeNetworkDefaults::default()),
            Ok(None)
        ));
        if let Some(spec) = node.spec.as_mut() {
            spec.pod_cidrs = Some(vec!["10.1.0.0/24".into()]);
        }
        let nn = node_network_for(&node, Provider::Static, &NodeNetworkDefaults::default())
            .unwrap()
            .unwrap();
        assert_eq!(nn.spec.pod_cidrs, ["10.1.0.0/24"]);
        assert!(nn.spec.validate().is_ok());
    }

    /// A node with only the singular `spec.podCIDR` is as good as one with
    /// `podCIDRs`: the pool allocator skips it as having a CIDR, so the
    /// NodeNetwork must take it (it waited forever before).
    #[test]
    fn a_static_node_with_only_pod_cidr_takes_it() {
        let mut node = mk_node("bm-2", None, &[]);
        if let Some(spec) = node.spec.as_mut() {
            spec.pod_cidr = Some("10.2.0.0/24".into());
        }
        let nn = node_network_for(&node, Provider::Static, &NodeNetworkDefaults::default())
            .unwrap()
            .expect("a NodeNetwork for a node with spec.podCIDR");
        assert_eq!(nn.spec.pod_cidrs, ["10.2.0.0/24"]);
    }

    #[test]
    fn heartbeats_do_not_change_the_fingerprint() {
        let a = mk_node("n", Some("aws:///us-east-1a/i-1"), &TYPE_AND_ZONE);
        let mut b = a.clone();
        b.metadata.resource_version = Some("42".into());
        b.status = Some(Default::default());
        assert_eq!(node_fingerprint(&a), node_fingerprint(&b));
        let mut c = a.clone();
        c.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(LABEL_INSTANCE_TYPE.into(), "m5.xlarge".into());
        assert_ne!(node_fingerprint(&a), node_fingerprint(&c));
    }

    // The node watch's kube calls, against a mocked API server.

    use std::time::Duration;

    use http::Method;
    use kube::runtime::{reflector, watcher};
    use serde_json::{Value, json};

    use sextant_kit::testing::{ApiServerVerifier, mock_client, status_failure};

    const NODE_NETWORKS: &str =
        "/apis/sextant.io/v1alpha1/nodenetworks?&fieldManager=sextant-operator";

    /// A node watch context whose client talks to the returned verifier and
    /// whose NodeNetwork cache holds `known`.
    fn node_ctx(known: &[NodeNetwork]) -> (NodeContext, ApiServerVerifier) {
        let (client, server) = mock_client();
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for nn in known {
            writer.apply_watcher_event(&watcher::Event::InitApply(nn.clone()));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let ctx = NodeContext {
            client,
            provider: Provider::Aws,
            defaults: NodeNetworkDefaults {
                vpc_id: Some("vpc-1".into()),
                ..NodeNetworkDefaults::default()
            },
            node_networks: store,
            retry: Backoff {
                base: Duration::from_millis(1),
                cap: Duration::from_millis(5),
                max_attempts: 3,
                ..Backoff::default()
            },
            metrics: NodeWatchMetrics::default(),
            pod_cidrs: None,
        };
        (ctx, server)
    }

    fn new_node() -> Node {
        mk_node(
            "ip-10-0-0-1",
            Some("aws:///us-east-1a/i-0abc123"),
            &TYPE_AND_ZONE,
        )
    }

    /// The NodeNetwork the API server should receive for [`new_node`].
    fn expected_body() -> Value {
        json!({
            "apiVersion": "sextant.io/v1alpha1",
            "kind": "NodeNetwork",
            "metadata": {
                "name": "ip-10-0-0-1",
                "labels": { "app.kubernetes.io/managed-by": "sextant-operator" },
                "ownerReferences": [{
                    "apiVersion": "v1",
                    "kind": "Node",
                    "name": "ip-10-0-0-1",
                    "uid": "uid-ip-10-0-0-1",
                    "controller": true,
                }],
            },
            "spec": {
                "provider": "aws",
                "instanceId": "i-0abc123",
                "instanceType": "m5.large",
                "zone": "us-east-1a",
                "vpcId": "vpc-1",
                "ipam": {},
            },
        })
    }

    fn errors(ctx: &NodeContext, error: &'static str) -> u64 {
        ctx.metrics
            .errors
            .get_or_create(&ErrorLabels { error })
            .get()
    }

    #[tokio::test]
    async fn a_new_node_gets_exactly_one_post_of_its_node_network() {
        let (ctx, mut server) = node_ctx(&[]);
        let node = new_node();
        let (outcome, seen) = tokio::join!(
            ensure_node_network(&node, &ctx),
            server.expect(Method::POST, NODE_NETWORKS, 201, expected_body()),
        );
        assert_eq!(outcome.unwrap(), NodeOutcome::Created);
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert_eq!(seen.body, expected_body());
        assert_eq!(ctx.metrics.created.get(), 1);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_node_network_created_meanwhile_is_not_an_error() {
        let (ctx, mut server) = node_ctx(&[]);
        let node = new_node();
        let ((), _) = tokio::join!(
            handle_node(&node, &ctx),
            server.expect(
                Method::POST,
                NODE_NETWORKS,
                409,
                status_failure(409, "AlreadyExists")
            ),
        );
        assert_eq!(ctx.metrics.created.get(), 0);
        assert_eq!(errors(&ctx, "kube_create"), 0, "not an error, not retried");
        let (again, _) = tokio::join!(
            ensure_node_network(&node, &ctx),
            server.expect(
                Method::POST,
                NODE_NETWORKS,
                409,
                status_failure(409, "AlreadyExists")
            ),
        );
        assert_eq!(again.unwrap(), NodeOutcome::Exists);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_node_network_in_the_cache_costs_no_request() {
        let node = new_node();
        let known = node_network_for(&node, Provider::Aws, &NodeNetworkDefaults::default())
            .unwrap()
            .unwrap();
        let (ctx, server) = node_ctx(&[known]);
        assert_eq!(
            ensure_node_network(&node, &ctx).await.unwrap(),
            NodeOutcome::Exists
        );
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn nodes_that_cannot_have_a_node_network_yet_send_nothing() {
        let (ctx, server) = node_ctx(&[]);
        let waiting = mk_node("n", None, &TYPE_AND_ZONE);
        assert_eq!(
            ensure_node_network(&waiting, &ctx).await.unwrap(),
            NodeOutcome::Waiting
        );
        let foreign = mk_node("g", Some("gce://p/us-central1-a/vm-1"), &TYPE_AND_ZONE);
        handle_node(&foreign, &ctx).await;
        assert_eq!(
            errors(&ctx, "bad_provider_id"),
            1,
            "reported once, not retried"
        );
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_failed_create_is_retried_until_it_succeeds() {
        let (ctx, mut server) = node_ctx(&[]);
        let node = new_node();
        let script = async {
            let failed = server
                .expect(
                    Method::POST,
                    NODE_NETWORKS,
                    500,
                    status_failure(500, "InternalError"),
                )
                .await;
            let retried = server
                .expect(Method::POST, NODE_NETWORKS, 201, expected_body())
                .await;
            assert_eq!(failed.body, retried.body, "the same object again");
        };
        tokio::join!(handle_node(&node, &ctx), script);
        assert_eq!(errors(&ctx, "kube_create"), 1);
        assert_eq!(ctx.metrics.created.get(), 1);
        drop(ctx);
        server.expect_no_more().await;
    }

    #[tokio::test]
    async fn a_create_that_keeps_failing_stops_after_the_retry_budget() {
        let (ctx, mut server) = node_ctx(&[]);
        let node = new_node();
        let script = async {
            for _ in 0..3 {
                server
                    .expect(
                        Method::POST,
                        NODE_NETWORKS,
                        503,
                        status_failure(503, "ServiceUnavailable"),
                    )
                    .await;
            }
        };
        tokio::join!(handle_node(&node, &ctx), script);
        assert_eq!(errors(&ctx, "kube_create"), 3);
        assert_eq!(ctx.metrics.created.get(), 0);
        drop(ctx);
        server.expect_no_more().await;
    }

    /// Bare metal with Sextant's pool: nodes without a podCIDR get distinct
    /// blocks, also when the cache has not shown the first create yet; a
    /// full pool is a clear error; a node with its own podCIDR keeps it.
    #[tokio::test]
    async fn bare_metal_nodes_get_distinct_blocks_from_the_pool() {
        let (mut ctx, mut server) = node_ctx(&[]);
        ctx.provider = Provider::Static;
        let pool = PodCidrPool::new(&["10.244.0.0/24".to_owned()], 25).unwrap();
        ctx.pod_cidrs = Some(Arc::new(PodCidrAllocator::new(
            pool,
            Duration::from_secs(300),
        )));
        let created = serde_json::json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
            "metadata": { "name": "metal" }, "spec": { "provider": "static" },
        });
        let mut got = Vec::new();
        for name in ["metal-1", "metal-2"] {
            let node = mk_node(name, None, &[]);
            let (outcome, seen) = tokio::join!(
                ensure_node_network(&node, &ctx),
                server.expect(Method::POST, NODE_NETWORKS, 201, created.clone()),
            );
            assert_eq!(outcome.unwrap(), NodeOutcome::Created);
            assert_eq!(seen.body["spec"]["provider"], "static");
            got.push(
                seen.body["spec"]["podCIDRs"][0]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
        assert_eq!(got, ["10.244.0.0/25", "10.244.0.128/25"]);
        let full = ensure_node_network(&mk_node("metal-3", None, &[]), &ctx)
            .await
            .unwrap_err();
        assert_eq!(full.metric_label(), "pod_cidr_pool_full");
        assert!(full.to_string().contains("--pod-cidr-pool"), "{full}");
        // The controller-manager's podCIDR wins over the pool.
        let mut own = mk_node("metal-4", None, &[]);
        own.spec.as_mut().unwrap().pod_cidrs = Some(vec!["10.9.0.0/24".into()]);
        let (outcome, seen) = tokio::join!(
            ensure_node_network(&own, &ctx),
            server.expect(Method::POST, NODE_NETWORKS, 201, created.clone()),
        );
        assert_eq!(outcome.unwrap(), NodeOutcome::Created);
        assert_eq!(
            seen.body["spec"]["podCIDRs"],
            serde_json::json!(["10.9.0.0/24"])
        );
        drop(ctx);
        server.expect_no_more().await;
    }
}
