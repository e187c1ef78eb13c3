//! `FixedIP`: the sticky address of one StatefulSet pod, named after the pod
//! (`web-3`), living in the pod's namespace.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Default time a `Retain`ed address outlives its pod's ordinal.
pub const DEFAULT_RETAIN_TTL_SECONDS: u64 = 24 * 3600;

/// The address a StatefulSet pod keeps across restarts, reschedules and node loss.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sextant.io",
    version = "v1alpha1",
    kind = "FixedIP",
    plural = "fixedips",
    shortname = "fip",
    namespaced,
    status = "FixedIPStatus",
    cel,
    printcolumn(name = "IP", type_ = "string", json_path = ".spec.ip"),
    printcolumn(
        name = "StatefulSet",
        type_ = "string",
        json_path = ".spec.statefulSet"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Node", type_ = "string", json_path = ".status.node"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.reclaimPolicy == 'Retain' || !has(self.ttlSeconds)").message("ttlSeconds applies only to reclaimPolicy Retain"),
    validation = Rule::new("self.ip == oldSelf.ip").message("ip is immutable"),
    validation = Rule::new("isIP(self.ip) && ip(self.ip).family() == 4").message("ip must be an IPv4 address"),
)]
#[serde(rename_all = "camelCase")]
pub struct FixedIPSpec {
    /// The pod's IPv4 address.
    #[schemars(regex(pattern = r"^(\d{1,3}\.){3}\d{1,3}$"), length(max = 15))]
    pub ip: String,
    /// Name of the owning StatefulSet.
    pub stateful_set: String,
    /// The pod's ordinal in the StatefulSet.
    pub ordinal: u32,
    /// Zone the address lives in; the pod can only run on nodes of this zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Subnet (vSwitch) the address belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// What happens when the ordinal goes away: `Retain` keeps the address for `ttlSeconds`, `Delete` releases it at once.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
    /// How long a `Retain`ed address outlives its ordinal. Default 86400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
}

impl FixedIPSpec {
    /// TTL with its default applied; zero under `Delete`.
    pub fn retain_ttl_seconds(&self) -> u64 {
        match self.reclaim_policy {
            ReclaimPolicy::Retain => self.ttl_seconds.unwrap_or(DEFAULT_RETAIN_TTL_SECONDS),
            ReclaimPolicy::Delete => 0,
        }
    }
}

/// What happens to a fixed address when its ordinal disappears.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema,
)]
pub enum ReclaimPolicy {
    /// Keep the address for a TTL so a scale-up within it gets it back.
    #[default]
    Retain,
    /// Release the address as soon as the ordinal is gone.
    Delete,
}

/// Where the address is now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FixedIPStatus {
    /// Lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<FixedIPPhase>,
    /// Node whose ENI holds the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// ENI holding the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni: Option<String>,
    /// UID of the pod last bound; informational, a change is not a reason to release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When a `Retain`ed address will be released if no pod claims it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_after: Option<String>,
    /// Standard conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Lifecycle of a fixed address.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum FixedIPPhase {
    /// Held in its subnet, no pod running with it.
    Reserved,
    /// A running pod uses it.
    Bound,
    /// On its way back to the subnet.
    Releasing,
}
