//! Every name two Sextant components (or Sextant and Kubernetes) must agree
//! on: the extended resource, labels, annotations and field managers (cloud
//! tags are the cloud crate's, in `sextant_cloud::tags`). A contract string is written once, here; code everywhere else
//! names the constant.

/// API group and version of every Sextant CRD.
pub const API_VERSION: &str = "sextant.io/v1alpha1";

/// The extended resource a pod asks for to get a pod IP: the device plugin
/// advertises it, the webhook adds it, the scheduler extender counts it.
pub const IP_RESOURCE: &str = "sextant.io/ip";

/// Namespace label (set by an administrator) that exempts the namespace's
/// pods from [`IP_RESOURCE`] accounting. As a pod annotation or label it
/// counts only in a namespace labelled [`LABEL_ALLOW_POD_IP_OPT_OUT`].
pub const ANNOTATION_SKIP_IP_RESOURCE: &str = "sextant.io/skip-ip-resource";
/// Namespace label (set by an administrator): pods in the namespace may opt
/// out of [`IP_RESOURCE`] accounting with [`ANNOTATION_SKIP_IP_RESOURCE`].
pub const LABEL_ALLOW_POD_IP_OPT_OUT: &str = "sextant.io/allow-pod-ip-opt-out";

/// StatefulSet annotation: `"true"` gives each pod a sticky IP (a FixedIP).
pub const ANNOTATION_FIXED_IP: &str = "sextant.io/fixed-ip";
/// StatefulSet annotation: comma-separated subnet ids fixed IPs come from.
pub const ANNOTATION_FIXED_IP_SUBNETS: &str = "sextant.io/fixed-ip-subnets";
/// StatefulSet annotation: what happens to a fixed IP when its pod goes.
pub const ANNOTATION_FIXED_IP_RECLAIM: &str = "sextant.io/fixed-ip-reclaim-policy";
/// StatefulSet annotation: how long a released fixed IP is kept.
pub const ANNOTATION_FIXED_IP_TTL: &str = "sextant.io/fixed-ip-ttl-seconds";

/// FixedIP label: the StatefulSet the address belongs to.
pub const LABEL_STATEFULSET: &str = "sextant.io/statefulset";
/// Identity label carrying a CIDR (node-local CIDR identities).
pub const LABEL_CIDR: &str = "sextant.io/cidr";
/// Standard label saying which tool manages an object.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Standard label saying which application an object belongs to; the
/// webhook skips pods `part-of: sextant` (its own and the agent's).
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";

/// Field manager of the operator's NodeNetwork and Lease writes.
pub const FIELD_MANAGER_OPERATOR: &str = "sextant-operator";
/// Field manager of the FixedIP controller's writes.
pub const FIELD_MANAGER_FIXED_IP: &str = "sextant-fixed-ip";
/// Reporting controller of the agent's Events and its field manager.
pub const FIELD_MANAGER_AGENT: &str = "sextant-agent";
