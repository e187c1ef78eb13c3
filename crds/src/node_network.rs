//! `NodeNetwork`: one per Kubernetes node, named after it. The operator owns
//! the ENIs and the pool; the agent owns the usage report and its side of the
//! release handshake.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Cilium's default for `pre-allocate`, kept so migrations change nothing.
pub const DEFAULT_PRE_ALLOCATE: u32 = 8;

/// Desired network state of one node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sextant.io",
    version = "v1alpha1",
    kind = "NodeNetwork",
    plural = "nodenetworks",
    shortname = "nn",
    status = "NodeNetworkStatus",
    cel,
    printcolumn(name = "Provider", type_ = "string", json_path = ".spec.provider"),
    printcolumn(name = "Instance", type_ = "string", json_path = ".spec.instanceId"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.instanceType"),
    printcolumn(name = "ENIs", type_ = "integer", json_path = ".status.summary.enis"),
    printcolumn(
        name = "Pool",
        type_ = "integer",
        json_path = ".status.summary.poolSize"
    ),
    printcolumn(name = "Used", type_ = "integer", json_path = ".status.summary.used"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.provider == 'static' || (has(self.instanceId) && self.instanceId != '')").message("instanceId is required for cloud providers"),
    validation = Rule::new("self.provider != 'static' || (has(self.podCIDRs) && size(self.podCIDRs) > 0)").message("podCIDRs is required for the static provider"),
    validation = Rule::new("!has(self.podCIDRs) || self.podCIDRs.all(c, isCIDR(c) && cidr(c).ip().family() == 4)").message("podCIDRs must be IPv4 CIDRs (like 10.128.7.0/24)"),
)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkSpec {
    /// Where the node's pod IPs come from: `aws` or `alibaba` ENIs, or `static` pod CIDRs on bare metal.
    pub provider: Provider,
    /// Cloud instance id (`i-...` on AWS, `i-...` on Alibaba). Required for cloud providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Cloud instance type (`m5.large`, `ecs.g7.large`); decides the ENI and per-ENI address limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// Availability zone of the instance; ENIs are only created in subnets of this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// VPC of the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    /// Pool sizing and ENI placement knobs for this node (per-node overrides of the operator flags).
    #[serde(default)]
    pub ipam: IpamSpec,
    /// Pod CIDRs of a bare-metal node (`static` provider), IPv4, at most 16.
    #[serde(default, rename = "podCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 18)))]
    pub pod_cidrs: Vec<String>,
}

/// Source of a node's pod IPs.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// AWS EC2 ENIs with secondary private IPv4 addresses.
    #[default]
    Aws,
    /// Alibaba Cloud ECS ENIs with secondary private IPv4 addresses.
    Alibaba,
    /// Bare metal: pod IPs come from `podCIDRs`, no cloud calls.
    Static,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Aws => "aws",
            Provider::Alibaba => "alibaba",
            Provider::Static => "static",
        })
    }
}

/// Watermarks and ENI placement, named as Cilium's ENI mode names them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.minAllocate) || !has(self.maxAllocate) || self.maxAllocate == 0 || self.minAllocate <= self.maxAllocate").message("minAllocate must not exceed maxAllocate"),
    validation = Rule::new("!has(self.preAllocate) || !has(self.maxAllocate) || self.maxAllocate == 0 || self.preAllocate <= self.maxAllocate").message("preAllocate must not exceed maxAllocate"),
)]
#[serde(rename_all = "camelCase")]
pub struct IpamSpec {
    /// Free IPs to keep ready on the node (the low watermark). Default 8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1024))]
    pub pre_allocate: Option<u32>,
    /// IPs to hold at least, used or not, once the node is up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4096))]
    pub min_allocate: Option<u32>,
    /// Upper bound on IPs held by the node; 0 or unset means the instance's limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4096))]
    pub max_allocate: Option<u32>,
    /// Free IPs tolerated above `preAllocate` before excess ones are released. Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 4096))]
    pub max_above_watermark: Option<u32>,
    /// Subnets (vSwitches on Alibaba) new ENIs may be created in. Empty: any subnet matching `subnetTags`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,
    /// Tags a subnet must carry for new ENIs to be created in it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subnet_tags: BTreeMap<String, String>,
    /// Security groups attached to new ENIs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// Tags selecting further security groups for new ENIs.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub security_group_tags: BTreeMap<String, String>,
    /// Lowest device index used for pod ENIs; interfaces below it are left alone. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 64))]
    pub first_interface_index: Option<u32>,
    /// ENIs carrying any of these tags are never used for pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub exclude_interface_tags: BTreeMap<String, String>,
}

impl IpamSpec {
    /// `preAllocate` with its default applied.
    pub fn pre_allocate(&self) -> u32 {
        self.pre_allocate.unwrap_or(DEFAULT_PRE_ALLOCATE)
    }
    /// `minAllocate` with its default (0) applied.
    pub fn min_allocate(&self) -> u32 {
        self.min_allocate.unwrap_or(0)
    }
    /// `maxAllocate`, `None` when unbounded (unset or 0).
    pub fn max_allocate(&self) -> Option<u32> {
        self.max_allocate.filter(|m| *m > 0)
    }
    /// `maxAboveWatermark` with its default (0) applied.
    pub fn max_above_watermark(&self) -> u32 {
        self.max_above_watermark.unwrap_or(0)
    }
    /// `firstInterfaceIndex` with its default (1: device 0 is the primary ENI) applied.
    pub fn first_interface_index(&self) -> u32 {
        self.first_interface_index.unwrap_or(1)
    }
}

/// Observed network state of one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeNetworkStatus {
    /// ENIs attached to the instance, as last seen in the cloud.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enis: Vec<EniStatus>,
    /// Pod IPs the node may hand out, each mapped to the ENI that holds it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pool: BTreeMap<String, PoolEntry>,
    /// What the agent last reported as in use (written by the agent only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<AgentUsage>,
    /// Fixed IPs on this node's ENIs, each mapped to the pod it belongs to
    /// (`namespace/name`); written by the FixedIP controller. The agent hands
    /// them to that pod only, and node IPAM never counts or releases them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fixed_ips: BTreeMap<String, String>,
    /// Release handshake, per IP: the operator marks, the agent answers, the operator releases.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub release: BTreeMap<String, ReleaseState>,
    /// Counts for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<PoolSummary>,
    /// Standard conditions: `PoolReady`, `LimitReached`, `SpecValid`, `CloudReachable`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the operator last resynced this instance from the cloud (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resync: Option<String>,
}

/// One ENI attached to the node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EniStatus {
    /// ENI id (`eni-...`).
    pub id: String,
    /// Subnet (vSwitch) of the ENI.
    pub subnet_id: String,
    /// Device index on the instance; 0 is the primary interface.
    pub device_index: u32,
    /// MAC address, used by the agent to find the Linux interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The ENI's primary private IP (never a pod IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_ip: Option<String>,
    /// Secondary private IPs on the ENI (pod IPs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Security groups of the ENI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
    /// The ENI carries one of `excludeInterfaceTags`: its addresses are not pod IPs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub excluded: bool,
}

/// Where a pool IP lives.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolEntry {
    /// The ENI holding the address (empty for the `static` provider).
    #[serde(default)]
    pub eni: String,
}

/// The agent's usage report.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentUsage {
    /// IPs in use, each mapped to its owner (`namespace/pod` or a container id).
    #[serde(default)]
    pub used: BTreeMap<String, String>,
    /// IPs freed recently and still in cooldown; counted as used by the operator.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cooling: Vec<String>,
    /// Pod address requests (CNI ADDs) waiting because the pool had no free
    /// IP; the operator adds them to its target, so a burst of pods is met in
    /// one round instead of one `preAllocate` at a time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pending: u32,
    /// When the agent wrote this report (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_at: Option<String>,
}

/// One step of the per-IP release handshake.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseState {
    /// The operator wants to release this IP and waits for the agent.
    Marked,
    /// The agent agrees: the IP is free and out of cooldown; it will not hand it out.
    ReadyForRelease,
    /// The agent refuses: the IP is in use or about to be.
    DoNotRelease,
    /// The operator unassigned it from the ENI; the agent drops the entry.
    Released,
}

/// Counts shown as printer columns.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub struct PoolSummary {
    /// ENIs attached to the instance, the primary included.
    pub enis: u32,
    /// IPs in the pool.
    pub pool_size: u32,
    /// IPs the agent reports in use.
    pub used: u32,
    /// Pod IPs the node can ever hold: pod ENI slots x (IPv4 per ENI - 1),
    /// capped by `maxAllocate`; on bare metal the pod CIDRs' usable
    /// addresses. 0 until the operator has read the instance's limits.
    #[serde(default)]
    pub capacity: u32,
    /// ENIs the instance type allows, the primary included (0: unknown).
    #[serde(default)]
    pub max_enis: u32,
    /// IPv4 addresses per ENI the instance type allows, the primary included (0: unknown).
    #[serde(default)]
    pub ipv4_per_eni: u32,
}

/// A reason the spec cannot be acted on; surfaces as the `SpecValid` condition.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A cloud provider needs an instance to attach ENIs to.
    #[error("spec.instanceId is required for provider {0}")]
    MissingInstanceId(Provider),
    /// Bare metal needs CIDRs to hand out.
    #[error("spec.podCIDRs is required for provider static")]
    MissingPodCidrs,
    /// A pod CIDR that does not parse.
    #[error("spec.podCIDRs[{index}] {value:?} is not an IPv4 CIDR")]
    BadPodCidr { index: usize, value: String },
    /// Watermarks that contradict each other.
    #[error("spec.ipam.{low} ({low_value}) must not exceed spec.ipam.maxAllocate ({max})")]
    Watermarks {
        low: &'static str,
        low_value: u32,
        max: u32,
    },
}

impl NodeNetworkSpec {
    /// The same rules the CRD's CEL validations enforce, for objects that
    /// reached us without an API server checking them (older CRD, simulator).
    pub fn validate(&self) -> Result<(), SpecError> {
        match self.provider {
            Provider::Static => {
                if self.pod_cidrs.is_empty() {
                    return Err(SpecError::MissingPodCidrs);
                }
                for (index, value) in self.pod_cidrs.iter().enumerate() {
                    if crate::parse_ipv4_cidr(value).is_none() {
                        return Err(SpecError::BadPodCidr {
                            index,
                            value: value.clone(),
                        });
                    }
                }
            }
            p => {
                if self.instance_id.as_deref().is_none_or(str::is_empty) {
                    return Err(SpecError::MissingInstanceId(p));
                }
            }
        }
        if let Some(max) = self.ipam.max_allocate() {
            for (low, low_value) in [
                ("minAllocate", self.ipam.min_allocate()),
                ("preAllocate", self.ipam.pre_allocate.unwrap_or(0)),
            ] {
                if low_value > max {
                    return Err(SpecError::Watermarks {
                        low,
                        low_value,
                        max,
                    });
                }
            }
        }
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
