//! Policy objects in, normalized `Policy` out, or every problem listed.
//!
//! Parse, don't validate: whatever reaches `compute` has passed here, and
//! nothing a policy says is dropped silently. A field Sextant does not
//! enforce rejects the whole policy, because enforcing part of a policy
//! can open what its author meant to close.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::networking::v1 as k8s,
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
};
use serde_json::Value;
use sextant_crds::{
    CidrRule, EgressRule, EndpointSelector, IngressRule, PolicyRule, PortRule,
    SextantNetworkPolicy, wellknown::API_VERSION,
};

use crate::{
    error::{Error, Problem, ProblemKind, Result},
    identity::{Prefix, PrefixError},
    labels::{NAMESPACE_LABELS_PREFIX, Operator, POD_NAMESPACE_LABEL, Requirement, Selector},
    model::{
        Entity, PROTO_SCTP, PROTO_TCP, PROTO_UDP, Peer, Peers, Policy, PolicyKind, PolicyRef,
        PolicySpec, PortRange, Rule,
    },
};

/// Namespace assumed for a namespaced policy without one (as `kubectl` would).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Fields Cilium knows that Sextant does not enforce, with the reason given.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("rules", "L7 rules are not supported"),
    ("terminatingTLS", "TLS interception is not supported"),
    ("originatingTLS", "TLS origination is not supported"),
    ("serverNames", "TLS SNI matching is not supported"),
    ("listener", "Envoy listeners are not supported"),
    ("toFQDNs", "DNS-based rules (toFQDNs) are not supported"),
    (
        "toServices",
        "service-based rules (toServices) are not supported",
    ),
    ("fromRequires", "fromRequires is not supported"),
    ("toRequires", "toRequires is not supported"),
    ("fromGroups", "cloud group rules are not supported"),
    ("toGroups", "cloud group rules are not supported"),
    ("fromNodes", "node selectors in rules are not supported"),
    ("toNodes", "node selectors in rules are not supported"),
    ("icmps", "ICMP rules are not supported"),
    ("authentication", "mutual authentication is not supported"),
    ("ingressDeny", "deny rules are not supported"),
    ("egressDeny", "deny rules are not supported"),
    (
        "nodeSelector",
        "host policies (nodeSelector) are not supported",
    ),
    (
        "enableDefaultDeny",
        "enableDefaultDeny is not supported: selected endpoints are always default-deny",
    ),
    ("log", "policy logging is not supported"),
    ("cidrGroupRef", "CIDR groups are not supported"),
    ("cidrGroupSelector", "CIDR groups are not supported"),
];

/// Collects problems while walking one object.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn unsupported(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), ProblemKind::Unsupported, message.into());
    }

    fn invalid(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(path.into(), ProblemKind::Invalid, message.into());
    }

    fn push(&mut self, path: String, kind: ProblemKind, message: String) {
        self.0.push(Problem {
            path,
            kind,
            message,
        });
    }

    /// Rejects every field left in a type's `extra` map.
    fn extra(&mut self, path: &str, extra: &BTreeMap<String, Value>, ignored: &[&str]) {
        for key in extra.keys() {
            if ignored.contains(&key.as_str()) {
                continue;
            }
            let at = format!("{path}.{key}");
            match UNSUPPORTED.iter().find(|(k, _)| k == key) {
                Some((_, why)) => self.unsupported(at, *why),
                None => self.unsupported(at, "unknown field"),
            }
        }
    }

    fn finish<T>(self, id: &PolicyRef, value: T) -> Result<T> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Error::Rejected {
                policy: id.to_string(),
                problems: self.0,
            })
        }
    }
}

/// Any policy document: `cilium.io/v2` CiliumNetworkPolicy,
/// `sextant.io/v1alpha1` SextantNetworkPolicy (the same shape) or
/// `networking.k8s.io/v1` NetworkPolicy.
pub fn parse_value(doc: &Value) -> Result<Policy> {
    let field = |k: &str| doc.get(k).and_then(Value::as_str).unwrap_or_default();
    match (field("apiVersion"), field("kind")) {
        ("cilium.io/v2", "CiliumNetworkPolicy") | (API_VERSION, "SextantNetworkPolicy") => {
            let p: SextantNetworkPolicy =
                serde_json::from_value(doc.clone()).map_err(|source| Error::Decode {
                    what: format!("{} {}", field("kind"), name_of(doc)),
                    source,
                })?;
            from_sextant(&p)
        }
        ("networking.k8s.io/v1", "NetworkPolicy") => {
            let p: k8s::NetworkPolicy =
                serde_json::from_value(doc.clone()).map_err(|source| Error::Decode {
                    what: format!("NetworkPolicy {}", name_of(doc)),
                    source,
                })?;
            from_network_policy(&p)
        }
        (api_version, kind) => Err(Error::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        }),
    }
}

fn name_of(doc: &Value) -> String {
    let meta = |k: &str| {
        doc.get("metadata")
            .and_then(|m| m.get(k))
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    format!("{}/{}", meta("namespace"), meta("name"))
}

/// A SextantNetworkPolicy (or a CiliumNetworkPolicy read into the same type).
pub fn from_sextant(p: &SextantNetworkPolicy) -> Result<Policy> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let id = PolicyRef {
        kind: PolicyKind::SextantNetworkPolicy,
        namespace: namespace.clone(),
        name: p.metadata.name.clone().unwrap_or_default(),
    };
    let mut probs = Problems::default();
    let rules = p.rules();
    if rules.is_empty() {
        probs.invalid("spec", "one of spec or specs is required");
    }
    let specs = rules
        .into_iter()
        .map(|(path, rule)| cilium_rule(&path, rule, &namespace, &mut probs))
        .collect();
    probs.finish(
        &id,
        Policy {
            id: id.clone(),
            specs,
        },
    )
}

fn cilium_rule(path: &str, r: &PolicyRule, ns: &str, probs: &mut Problems) -> PolicySpec {
    // Rule labels only name the rule; they change nothing enforced.
    probs.extra(path, &r.extra, &["labels"]);
    let subject = match &r.endpoint_selector {
        Some(sel) => cilium_selector(&format!("{path}.endpointSelector"), sel, Some(ns), probs),
        None => {
            probs.invalid(
                format!("{path}.endpointSelector"),
                "endpointSelector is required",
            );
            Selector::all()
        }
    };
    // As in Cilium, a direction is enforced when its list is non-empty.
    let ingress = r.ingress.as_ref().filter(|v| !v.is_empty()).map(|rules| {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| ingress_rule(&format!("{path}.ingress[{i}]"), rule, ns, probs))
            .collect()
    });
    let egress = r.egress.as_ref().filter(|v| !v.is_empty()).map(|rules| {
        rules
            .iter()
            .enumerate()
            .filter_map(|(i, rule)| egress_rule(&format!("{path}.egress[{i}]"), rule, ns, probs))
            .collect()
    });
    PolicySpec {
        subject,
        ingress,
        egress,
    }
}

/// The L3 fields of one Cilium rule, whichever direction.
struct CiliumPeers<'a> {
    endpoints: (&'a str, Option<&'a Vec<EndpointSelector>>),
    cidr: (&'a str, Option<&'a Vec<String>>),
    cidr_set: (&'a str, Option<&'a Vec<CidrRule>>),
    entities: (&'a str, Option<&'a Vec<String>>),
}

fn ingress_rule(path: &str, r: &IngressRule, ns: &str, probs: &mut Problems) -> Option<Rule> {
    probs.extra(path, &r.extra, &[]);
    let peers = CiliumPeers {
        endpoints: ("fromEndpoints", r.from_endpoints.as_ref()),
        cidr: ("fromCIDR", r.from_cidr.as_ref()),
        cidr_set: ("fromCIDRSet", r.from_cidr_set.as_ref()),
        entities: ("fromEntities", r.from_entities.as_ref()),
    };
    cilium_l3_l4(path, &peers, r.to_ports.as_ref(), ns, probs)
}

fn egress_rule(path: &str, r: &EgressRule, ns: &str, probs: &mut Problems) -> Option<Rule> {
    probs.extra(path, &r.extra, &[]);
    let peers = CiliumPeers {
        endpoints: ("toEndpoints", r.to_endpoints.as_ref()),
        cidr: ("toCIDR", r.to_cidr.as_ref()),
        cidr_set: ("toCIDRSet", r.to_cidr_set.as_ref()),
        entities: ("toEntities", r.to_entities.as_ref()),
    };
    cilium_l3_l4(path, &peers, r.to_ports.as_ref(), ns, probs)
}

fn cilium_l3_l4(
    path: &str,
    l3: &CiliumPeers<'_>,
    to_ports: Option<&Vec<PortRule>>,
    ns: &str,
    probs: &mut Problems,
) -> Option<Rule> {
    let mut peers = Vec::new();
    let mut has_l3 = false;
    if let (name, Some(list)) = l3.endpoints
        && !list.is_empty()
    {
        has_l3 = true;
        for (i, sel) in list.iter().enumerate() {
            let s = cilium_selector(&format!("{path}.{name}[{i}]"), sel, Some(ns), probs);
            peers.push(Peer::Endpoints(s));
        }
    }
    if let (name, Some(list)) = l3.cidr
        && !list.is_empty()
    {
        has_l3 = true;
        for (i, c) in list.iter().enumerate() {
            if let Some(cidr) = prefix(&format!("{path}.{name}[{i}]"), c, probs) {
                peers.push(Peer::Cidr {
                    cidr,
                    except: vec![],
                });
            }
        }
    }
    if let (name, Some(list)) = l3.cidr_set
        && !list.is_empty()
    {
        has_l3 = true;
        for (i, set) in list.iter().enumerate() {
            let at = format!("{path}.{name}[{i}]");
            probs.extra(&at, &set.extra, &[]);
            let Some(c) = &set.cidr else {
                if set.extra.is_empty() {
                    probs.invalid(format!("{at}.cidr"), "cidr is required");
                }
                continue;
            };
            if let Some(peer) = cidr_peer(&at, c, set.except.as_deref().unwrap_or_default(), probs)
            {
                peers.push(peer);
            }
        }
    }
    if let (name, Some(list)) = l3.entities
        && !list.is_empty()
    {
        has_l3 = true;
        for (i, e) in list.iter().enumerate() {
            let at = format!("{path}.{name}[{i}]");
            match e.as_str() {
                "all" => peers.push(Peer::Entity(Entity::All)),
                "world" | "world-ipv4" => peers.push(Peer::Entity(Entity::World)),
                "cluster" => peers.push(Peer::Entity(Entity::Cluster)),
                "host" => peers.push(Peer::Entity(Entity::Host)),
                "remote-node" => peers.push(Peer::Entity(Entity::RemoteNode)),
                "kube-apiserver" | "health" | "init" | "unmanaged" | "ingress"
                | "world-ipv6" => probs.unsupported(
                    at,
                    format!("entity {e:?} is not supported (all, world, cluster, host, remote-node are)"),
                ),
                _ => probs.invalid(at, format!("unknown entity {e:?}")),
            }
        }
    }
    let ports = match to_ports {
        Some(list) if !list.is_empty() => {
            let mut out = Vec::new();
            let mut any = false;
            for (i, pr) in list.iter().enumerate() {
                let at = format!("{path}.toPorts[{i}]");
                probs.extra(&at, &pr.extra, &[]);
                match pr.ports.as_ref().filter(|p| !p.is_empty()) {
                    None => any = true,
                    Some(ports) => {
                        for (j, pp) in ports.iter().enumerate() {
                            let at = format!("{at}.ports[{j}]");
                            probs.extra(&at, &pp.extra, &[]);
                            out.extend(port_ranges(
                                &at,
                                pp.port.as_ref(),
                                pp.end_port,
                                pp.protocol.as_deref(),
                                "ANY",
                                probs,
                            ));
                        }
                    }
                }
            }
            (!any).then_some(out)
        }
        _ => None,
    };
    match (has_l3, ports) {
        // `{}`: allows nothing, though it still makes the direction default-deny.
        (false, None) => None,
        (false, ports) => Some(Rule {
            peers: Peers::Any,
            ports,
        }),
        (true, ports) => Some(Rule {
            peers: Peers::Only(peers),
            ports,
        }),
    }
}

fn cidr_peer(path: &str, cidr: &str, except: &[String], probs: &mut Problems) -> Option<Peer> {
    let cidr = prefix(&format!("{path}.cidr"), cidr, probs)?;
    let mut holes = Vec::new();
    for (i, e) in except.iter().enumerate() {
        let at = format!("{path}.except[{i}]");
        if let Some(hole) = prefix(&at, e, probs) {
            if cidr.contains(&hole) {
                holes.push(hole);
            } else {
                probs.invalid(at, format!("{hole} is not inside {cidr}"));
            }
        }
    }
    Some(Peer::Cidr {
        cidr,
        except: holes,
    })
}

fn prefix(path: &str, s: &str, probs: &mut Problems) -> Option<Prefix> {
    match s.parse::<Prefix>() {
        Ok(p) => Some(p),
        Err(PrefixError::Ipv6) => {
            probs.unsupported(path, format!("IPv6 CIDR {s:?} is not supported"));
            None
        }
        Err(PrefixError::Malformed) => {
            probs.invalid(path, format!("{s:?} is not an IPv4 CIDR"));
            None
        }
    }
}

/// One `port`/`endPort`/`protocol` triple as ranges per protocol.
fn port_ranges(
    path: &str,
    port: Option<&IntOrString>,
    end_port: Option<i32>,
    protocol: Option<&str>,
    default_protocol: &str,
    probs: &mut Problems,
) -> Vec<PortRange> {
    let protos: &[u8] = match protocol
        .unwrap_or(default_protocol)
        .to_ascii_uppercase()
        .as_str()
    {
        "TCP" => &[PROTO_TCP],
        "UDP" => &[PROTO_UDP],
        "SCTP" => &[PROTO_SCTP],
        "ANY" => &[PROTO_TCP, PROTO_UDP, PROTO_SCTP],
        "ICMP" | "ICMPV6" => {
            probs.unsupported(format!("{path}.protocol"), "ICMP rules are not supported");
            return vec![];
        }
        other => {
            probs.invalid(
                format!("{path}.protocol"),
                format!("unknown protocol {other:?} (TCP, UDP, SCTP or ANY)"),
            );
            return vec![];
        }
    };
    let first: i64 = match port {
        None => 0,
        Some(IntOrString::Int(n)) => i64::from(*n),
        Some(IntOrString::String(s)) if s.is_empty() => 0,
        Some(IntOrString::String(s)) => match s.parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                probs.unsupported(
                    format!("{path}.port"),
                    format!("named port {s:?} is not supported yet; use the port number"),
                );
                return vec![];
            }
        },
    };
    if !(0..=65535).contains(&first) {
        probs.invalid(
            format!("{path}.port"),
            format!("port {first} is out of range 0-65535"),
        );
        return vec![];
    }
    let (first, last) = match end_port {
        None | Some(0) if first == 0 => (0, 65535),
        None => (first, first),
        Some(_) if first == 0 => {
            probs.invalid(
                format!("{path}.endPort"),
                "endPort needs a port to start at",
            );
            return vec![];
        }
        Some(end) if i64::from(end) < first || end > 65535 => {
            probs.invalid(
                format!("{path}.endPort"),
                format!("endPort {end} must be between port {first} and 65535"),
            );
            return vec![];
        }
        Some(end) => (first, i64::from(end)),
    };
    // Both are within 0..=65535 here.
    let (first, last) = (first as u16, last as u16);
    protos
        .iter()
        .map(|&proto| PortRange { proto, first, last })
        .collect()
}

/// A Cilium endpoint selector: keys lose their `k8s:`/`any:` source prefix;
/// confined to `namespace` (when given) unless it names the namespace itself.
fn cilium_selector(
    path: &str,
    sel: &EndpointSelector,
    namespace: Option<&str>,
    probs: &mut Problems,
) -> Selector {
    probs.extra(path, &sel.extra, &[]);
    let mut out = Selector::all();
    for (k, v) in sel.match_labels.iter().flatten() {
        if let Some(key) = label_key(&format!("{path}.matchLabels[{k}]"), k, probs) {
            out.requirements.push(Requirement {
                key,
                op: Operator::In(BTreeSet::from([v.clone()])),
            });
        }
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        let Some(key) = label_key(&format!("{at}.key"), &e.key, probs) else {
            continue;
        };
        if let Some(op) = operator(&at, &e.operator, e.values.as_deref(), probs) {
            out.requirements.push(Requirement { key, op });
        }
    }
    confine(out, namespace)
}

fn confine(mut sel: Selector, namespace: Option<&str>) -> Selector {
    if let Some(ns) = namespace
        && !sel.names_key(POD_NAMESPACE_LABEL)
    {
        sel = sel.with(POD_NAMESPACE_LABEL, ns);
    }
    sel
}

fn label_key(path: &str, key: &str, probs: &mut Problems) -> Option<String> {
    let bare = match key.split_once(':') {
        None => key,
        Some(("k8s" | "any", rest)) => rest,
        Some((source, _)) => {
            probs.unsupported(
                path,
                format!("label source {source:?} is not supported (only k8s: and any:)"),
            );
            return None;
        }
    };
    if bare.is_empty() {
        probs.invalid(path, "empty label key");
        return None;
    }
    Some(bare.to_owned())
}

fn operator(
    path: &str,
    op: &str,
    values: Option<&[String]>,
    probs: &mut Problems,
) -> Option<Operator> {
    let values: BTreeSet<String> = values.unwrap_or_default().iter().cloned().collect();
    let needs_values = matches!(op, "In" | "NotIn");
    if needs_values && values.is_empty() {
        probs.invalid(format!("{path}.values"), format!("{op} needs values"));
        return None;
    }
    if !needs_values && !values.is_empty() && matches!(op, "Exists" | "DoesNotExist") {
        probs.invalid(format!("{path}.values"), format!("{op} takes no values"));
        return None;
    }
    match op {
        "In" => Some(Operator::In(values)),
        "NotIn" => Some(Operator::NotIn(values)),
        "Exists" => Some(Operator::Exists),
        "DoesNotExist" => Some(Operator::DoesNotExist),
        other => {
            probs.invalid(
                format!("{path}.operator"),
                format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
            );
            None
        }
    }
}

/// A Kubernetes `networking.k8s.io/v1` NetworkPolicy, with its semantics:
/// `policyTypes` decide the enforced directions (default: Ingress, plus
/// Egress when egress rules exist), an empty `from`/`to` admits every peer,
/// protocols default to TCP.
pub fn from_network_policy(p: &k8s::NetworkPolicy) -> Result<Policy> {
    let namespace = p
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let id = PolicyRef {
        kind: PolicyKind::NetworkPolicy,
        namespace: namespace.clone(),
        name: p.metadata.name.clone().unwrap_or_default(),
    };
    let mut probs = Problems::default();
    let spec = p.spec.clone().unwrap_or_default();
    let subject = k8s_selector(
        "spec.podSelector",
        spec.pod_selector.as_ref(),
        "",
        Some(&namespace),
        &mut probs,
    );
    let types: Vec<String> = spec.policy_types.clone().unwrap_or_else(|| {
        let mut t = vec!["Ingress".to_owned()];
        if spec.egress.is_some() {
            t.push("Egress".to_owned());
        }
        t
    });
    for (i, t) in types.iter().enumerate() {
        if t != "Ingress" && t != "Egress" {
            probs.invalid(
                format!("spec.policyTypes[{i}]"),
                format!("unknown policy type {t:?} (Ingress or Egress)"),
            );
        }
    }
    let ingress = types.iter().any(|t| t == "Ingress").then(|| {
        spec.ingress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                k8s_rule(
                    &format!("spec.ingress[{i}]"),
                    ("from", r.from.as_deref()),
                    r.ports.as_deref(),
                    &namespace,
                    &mut probs,
                )
            })
            .collect()
    });
    let egress = types.iter().any(|t| t == "Egress").then(|| {
        spec.egress
            .iter()
            .flatten()
            .enumerate()
            .map(|(i, r)| {
                k8s_rule(
                    &format!("spec.egress[{i}]"),
                    ("to", r.to.as_deref()),
                    r.ports.as_deref(),
                    &namespace,
                    &mut probs,
                )
            })
            .collect()
    });
    let policy = Policy {
        id: id.clone(),
        specs: vec![PolicySpec {
            subject,
            ingress,
            egress,
        }],
    };
    probs.finish(&id, policy)
}

fn k8s_rule(
    path: &str,
    (name, peers): (&str, Option<&[k8s::NetworkPolicyPeer]>),
    ports: Option<&[k8s::NetworkPolicyPort]>,
    ns: &str,
    probs: &mut Problems,
) -> Rule {
    let peers = match peers.filter(|p| !p.is_empty()) {
        None => Peers::Any,
        Some(list) => Peers::Only(
            list.iter()
                .enumerate()
                .filter_map(|(i, peer)| k8s_peer(&format!("{path}.{name}[{i}]"), peer, ns, probs))
                .collect(),
        ),
    };
    let ports = ports.filter(|p| !p.is_empty()).map(|list| {
        list.iter()
            .enumerate()
            .flat_map(|(i, p)| {
                port_ranges(
                    &format!("{path}.ports[{i}]"),
                    p.port.as_ref(),
                    p.end_port,
                    p.protocol.as_deref(),
                    "TCP",
                    probs,
                )
            })
            .collect()
    });
    Rule { peers, ports }
}

fn k8s_peer(
    path: &str,
    peer: &k8s::NetworkPolicyPeer,
    ns: &str,
    probs: &mut Problems,
) -> Option<Peer> {
    if let Some(block) = &peer.ip_block {
        if peer.pod_selector.is_some() || peer.namespace_selector.is_some() {
            probs.invalid(path, "ipBlock cannot be combined with a selector");
            return None;
        }
        return cidr_peer(
            &format!("{path}.ipBlock"),
            &block.cidr,
            block.except.as_deref().unwrap_or_default(),
            probs,
        );
    }
    let mut sel = k8s_selector(
        &format!("{path}.podSelector"),
        peer.pod_selector.as_ref(),
        "",
        None,
        probs,
    );
    match &peer.namespace_selector {
        // Pods of the policy's namespace.
        None => sel = sel.with(POD_NAMESPACE_LABEL, ns),
        // Pods of the namespaces whose labels match, as identity labels.
        Some(ns_sel) => {
            let nss = k8s_selector(
                &format!("{path}.namespaceSelector"),
                Some(ns_sel),
                NAMESPACE_LABELS_PREFIX,
                None,
                probs,
            );
            sel.requirements.extend(nss.requirements);
        }
    }
    if peer.pod_selector.is_none() && peer.namespace_selector.is_none() {
        probs.invalid(
            path,
            "a peer needs podSelector, namespaceSelector or ipBlock",
        );
        return None;
    }
    Some(Peer::Endpoints(sel))
}

fn k8s_selector(
    path: &str,
    sel: Option<&LabelSelector>,
    key_prefix: &str,
    namespace: Option<&str>,
    probs: &mut Problems,
) -> Selector {
    let mut out = Selector::all();
    if let Some(sel) = sel {
        for (k, v) in sel.match_labels.iter().flatten() {
            out.requirements.push(Requirement {
                key: format!("{key_prefix}{k}"),
                op: Operator::In(BTreeSet::from([v.clone()])),
            });
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            if let Some(op) = operator(&at, &e.operator, e.values.as_deref(), probs) {
                out.requirements.push(Requirement {
                    key: format!("{key_prefix}{}", e.key),
                    op,
                });
            }
        }
    }
    // A NetworkPolicy's pod selectors are always about its own namespace.
    match namespace {
        Some(ns) => out.with(POD_NAMESPACE_LABEL, ns),
        None => out,
    }
}
