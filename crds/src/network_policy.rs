//! `SextantNetworkPolicy`: the `cilium.io/v2` CiliumNetworkPolicy shape under
//! Sextant's group, and `SextantIdentity`: one cluster-wide numeric security
//! identity bound to its label set.
//!
//! The policy types keep every field they do not model in `extra` maps (and
//! the schema keeps them with `x-kubernetes-preserve-unknown-fields`), so a
//! policy using something Sextant does not enforce (L7 rules, `toFQDNs`,
//! deny rules, ...) still reaches the agent intact and is *rejected* with an
//! `Accepted=False` condition instead of being enforced partially. The checks
//! themselves live in `sextant-policy`.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
        CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
        CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
    },
    apimachinery::pkg::{
        apis::meta::v1::{Condition, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{CustomResource, CustomResourceExt, KubeSchema, Resource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Condition type saying whether the agent enforces the policy.
pub const POLICY_ACCEPTED: &str = "Accepted";
/// `Accepted=False` reason: the policy uses a field Sextant does not enforce.
pub const REASON_UNSUPPORTED: &str = "Unsupported";
/// `Accepted=False` reason: the policy is malformed (bad CIDR, port, operator, ...).
pub const REASON_INVALID: &str = "Invalid";
/// `Accepted=True` reason.
pub const REASON_ENFORCED: &str = "Enforced";

/// A network policy in the CiliumNetworkPolicy shape: a CiliumNetworkPolicy
/// with `apiVersion: sextant.io/v1alpha1` and `kind: SextantNetworkPolicy`
/// is one of these, field for field (`spec` and/or `specs` at the top level).
#[derive(KubeSchema, Deserialize, Clone, Debug, PartialEq, Default)]
#[x_kube(
    validation = Rule::new("has(self.spec) || (has(self.specs) && size(self.specs) > 0)").message("one of spec or specs is required"),
)]
#[serde(rename_all = "camelCase")]
pub struct SextantNetworkPolicy {
    /// Standard object metadata.
    #[schemars(skip)]
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PolicyRule>,
    /// More policy rules, each with its own endpoint selector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specs: Option<Vec<PolicyRule>>,
    /// Whether the agent enforces the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<SextantNetworkPolicyStatus>,
}

impl Serialize for SextantNetworkPolicy {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut obj = ser.serialize_struct("SextantNetworkPolicy", 6)?;
        obj.serialize_field("apiVersion", &Self::api_version(&()))?;
        obj.serialize_field("kind", &Self::kind(&()))?;
        obj.serialize_field("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            obj.serialize_field("spec", spec)?;
        }
        if let Some(specs) = &self.specs {
            obj.serialize_field("specs", specs)?;
        }
        if let Some(status) = &self.status {
            obj.serialize_field("status", status)?;
        }
        obj.end()
    }
}

impl SextantNetworkPolicy {
    /// A policy with one rule.
    pub fn new(namespace: &str, name: &str, spec: PolicyRule) -> Self {
        Self {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            specs: None,
            status: None,
        }
    }

    /// `spec` followed by `specs`, each with its path in the object.
    pub fn rules(&self) -> Vec<(String, &PolicyRule)> {
        let mut out: Vec<(String, &PolicyRule)> =
            self.spec.iter().map(|r| ("spec".to_owned(), r)).collect();
        for (i, r) in self.specs.iter().flatten().enumerate() {
            out.push((format!("specs[{i}]"), r));
        }
        out
    }
}

impl Resource for SextantNetworkPolicy {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn group(_: &()) -> Cow<'_, str> {
        "sextant.io".into()
    }
    fn kind(_: &()) -> Cow<'_, str> {
        "SextantNetworkPolicy".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1alpha1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        crate::wellknown::API_VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "sextantnetworkpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

// Written by hand because the CiliumNetworkPolicy shape has `spec` *and*
// `specs` at the top level, which `#[derive(CustomResource)]` cannot express;
// the schema goes through the same transforms the derive uses.
impl CustomResourceExt for SextantNetworkPolicy {
    fn crd() -> CustomResourceDefinition {
        let generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .with_transform(schemars::transform::AddNullable::default())
            .with_transform(kube::core::schema::StructuralSchemaRewriter)
            .with_transform(kube::core::schema::OptionalEnum)
            .with_transform(kube::core::schema::OptionalIntOrString)
            .into_generator();
        let schema = serde_json::to_value(generator.into_root_schema_for::<Self>())
            .and_then(serde_json::from_value)
            .ok();
        let column = |name: &str, type_: &str, json_path: &str| CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            ..CustomResourceColumnDefinition::default()
        };
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(Self::crd_name().into()),
                ..ObjectMeta::default()
            },
            spec: CustomResourceDefinitionSpec {
                group: Self::group(&()).into(),
                names: CustomResourceDefinitionNames {
                    kind: Self::kind(&()).into(),
                    plural: Self::plural(&()).into(),
                    singular: Some("sextantnetworkpolicy".into()),
                    short_names: Some(vec!["snp".into()]),
                    ..CustomResourceDefinitionNames::default()
                },
                scope: "Namespaced".into(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: Self::version(&()).into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation {
                        open_api_v3_schema: schema,
                    }),
                    subresources: Some(CustomResourceSubresources {
                        status: Some(CustomResourceSubresourceStatus(
                            serde_json::Map::new().into(),
                        )),
                        scale: None,
                    }),
                    additional_printer_columns: Some(vec![
                        column(
                            "Accepted",
                            "string",
                            r#".status.conditions[?(@.type=="Accepted")].status"#,
                        ),
                        column(
                            "Reason",
                            "string",
                            r#".status.conditions[?(@.type=="Accepted")].reason"#,
                        ),
                        column("Age", "date", ".metadata.creationTimestamp"),
                    ]),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        }
    }

    fn crd_name() -> &'static str {
        "sextantnetworkpolicies.sextant.io"
    }

    fn api_resource() -> kube::core::ApiResource {
        kube::core::ApiResource::erase::<Self>(&())
    }

    fn shortnames() -> &'static [&'static str] {
        &["snp"]
    }
}

/// One policy rule (Cilium `api.Rule`): the endpoints it applies to and
/// what they may receive and send.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// The local endpoints (pods) this rule applies to, in the policy's namespace
    /// unless the selector names `io.kubernetes.pod.namespace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_selector: Option<EndpointSelector>,
    /// What may reach the selected endpoints. A non-empty list makes them default-deny for ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// What the selected endpoints may reach. A non-empty list makes them default-deny for egress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
    /// Free text for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Fields Sextant does not enforce (`nodeSelector`, `ingressDeny`, `egressDeny`,
    /// `enableDefaultDeny`, ...): kept so the policy is rejected, not enforced partially.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// A label selector over endpoint identity labels; keys may carry Cilium's
/// `k8s:` or `any:` source prefix. An empty selector selects every endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSelector {
    /// Labels that must all be present with these values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Requirements that must all hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelRequirement>>,
    /// Fields Sextant does not understand; their presence rejects the policy.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// One `matchExpressions` entry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelRequirement {
    /// Label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists` or `DoesNotExist`.
    pub operator: String,
    /// Values for `In` / `NotIn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// One ingress rule: its peers (`from*`, all of them OR-ed) and ports. A rule
/// with ports but no `from*` field admits every peer on those ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// Endpoints allowed to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_endpoints: Option<Vec<EndpointSelector>>,
    /// IPv4 CIDRs allowed to connect (addresses outside the cluster's pods).
    #[serde(rename = "fromCIDR", default, skip_serializing_if = "Option::is_none")]
    pub from_cidr: Option<Vec<String>>,
    /// IPv4 CIDRs with exceptions allowed to connect.
    #[serde(
        rename = "fromCIDRSet",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    /// Entities allowed to connect: `all`, `world`, `cluster`, `host` (this node), `remote-node` (other nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_entities: Option<Vec<String>>,
    /// Ports the peers may connect to; absent or empty: every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// Fields Sextant does not enforce (`fromRequires`, `icmps`, `fromGroups`, ...).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// One egress rule: its peers (`to*`, all of them OR-ed) and ports. A rule
/// with ports but no `to*` field allows every peer on those ports.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// Endpoints the selected endpoints may connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_endpoints: Option<Vec<EndpointSelector>>,
    /// IPv4 CIDRs the selected endpoints may connect to.
    #[serde(rename = "toCIDR", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr: Option<Vec<String>>,
    /// IPv4 CIDRs with exceptions the selected endpoints may connect to.
    #[serde(rename = "toCIDRSet", default, skip_serializing_if = "Option::is_none")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    /// Entities the selected endpoints may connect to: `all`, `world`, `cluster`, `host` (this node), `remote-node` (other nodes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_entities: Option<Vec<String>>,
    /// Ports that may be connected to; absent or empty: every port and protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_ports: Option<Vec<PortRule>>,
    /// Fields Sextant does not enforce (`toFQDNs`, `toServices`, `toRequires`, `icmps`, ...).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// A CIDR with holes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CidrRule {
    /// IPv4 CIDR, e.g. `10.0.0.0/8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// CIDRs inside `cidr` that are not included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
    /// Fields Sextant does not enforce (`cidrGroupRef`, ...).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// Layer-4 part of a rule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// Ports and protocols; absent or empty: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<PortProtocol>>,
    /// Fields Sextant does not enforce (L7 `rules`, `terminatingTLS`, `serverNames`, ...).
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// A port or port range and its protocol.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortProtocol {
    /// Port number (as a number or a numeric string; `0` or absent: every port).
    /// Named ports are not supported yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// `TCP`, `UDP`, `SCTP` or `ANY` (default `ANY`: TCP, UDP and SCTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Fields Sextant does not understand.
    #[serde(flatten, default, skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Value>,
}

/// Whether the agent enforces the policy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SextantNetworkPolicyStatus {
    /// `Accepted`: `True` when enforced; `False` with reason `Unsupported` or
    /// `Invalid` and a message listing every offending field by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// A cluster-wide security identity: the object's name is the identity
/// number in decimal (`70012`), its spec the canonical label set the number
/// stands for. Nodes create these with create-if-absent: the API server's
/// `AlreadyExists` decides which label set owns a number, so one number never
/// means two label sets. Numbers 0..256 are reserved (0 any, 1 host, 2 world)
/// and node-local CIDR identities (0x0100_0000 and up) are never stored here.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "sextant.io",
    version = "v1alpha1",
    kind = "SextantIdentity",
    plural = "sextantidentities",
    shortname = "sid",
    doc = "A cluster-wide security identity; its name is the number (see `SextantIdentitySpec`).",
    cel,
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".spec.labels['io\\.kubernetes\\.pod\\.namespace']"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.labels == oldSelf.labels").message("labels are immutable: an identity number never changes meaning"),
)]
#[serde(rename_all = "camelCase")]
pub struct SextantIdentitySpec {
    /// The canonical identity labels: the pod's labels, `io.kubernetes.pod.namespace`,
    /// and the namespace's labels as `io.cilium.k8s.namespace.labels.<key>`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl SextantIdentity {
    /// An identity object binding `id` to `labels`.
    pub fn bind(id: u32, labels: BTreeMap<String, String>) -> Self {
        Self::new(&id.to_string(), SextantIdentitySpec { labels })
    }

    /// The identity number, from the object name (`70012`, also `id-70012`).
    pub fn id(&self) -> Option<u32> {
        let name = self.metadata.name.as_deref()?;
        name.strip_prefix("id-").unwrap_or(name).parse().ok()
    }
}
