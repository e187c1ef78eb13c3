//! Invariants under arbitrary input: parsing never panics, `compute` never
//! panics, and the incremental engine always equals `compute` from scratch
//! with each returned diff exactly the change it made.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use proptest::prelude::*;
use serde_json::{Value, json};
use sextant_policy::*;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("TCP".to_owned()),
            Just("6379".to_owned()),
            Just("10.0.0.0/8".to_owned()),
            Just("world".to_owned()),
            Just("In".to_owned()),
            Just("k8s:app".to_owned()),
            "[a-z:/.0-9]{0,12}",
        ]
        .prop_map(Value::from),
    ];
    let keys = prop_oneof![
        Just("spec"),
        Just("specs"),
        Just("endpointSelector"),
        Just("podSelector"),
        Just("matchLabels"),
        Just("matchExpressions"),
        Just("ingress"),
        Just("egress"),
        Just("fromEndpoints"),
        Just("toEndpoints"),
        Just("from"),
        Just("to"),
        Just("toPorts"),
        Just("ports"),
        Just("port"),
        Just("endPort"),
        Just("protocol"),
        Just("fromCIDR"),
        Just("toCIDRSet"),
        Just("cidr"),
        Just("except"),
        Just("ipBlock"),
        Just("namespaceSelector"),
        Just("toEntities"),
        Just("policyTypes"),
        Just("rules"),
        Just("key"),
        Just("operator"),
        Just("values"),
        Just("metadata"),
        Just("namespace"),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| {
                Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

fn kinds() -> impl Strategy<Value = (&'static str, &'static str)> {
    prop_oneof![
        Just(("cilium.io/v2", "CiliumNetworkPolicy")),
        Just(("sextant.io/v1alpha1", "SextantNetworkPolicy")),
        Just(("networking.k8s.io/v1", "NetworkPolicy")),
        Just(("v1", "ConfigMap")),
    ]
}

const APPS: &[&str] = &["a", "b", "c"];
const NAMESPACES: &[&str] = &["x", "y"];
const CIDRS: &[&str] = &[
    "0.0.0.0/0",
    "10.0.0.0/8",
    "10.1.0.0/16",
    "10.1.2.0/24",
    "10.1.2.3/32",
    "192.168.0.0/16",
];

fn arb_labels() -> impl Strategy<Value = Labels> {
    (prop::sample::select(APPS), prop::sample::select(NAMESPACES)).prop_map(|(app, ns)| {
        Labels::for_pod(
            ns,
            &BTreeMap::from([("app".to_owned(), app.to_owned())]),
            &BTreeMap::from([("env".to_owned(), ns.to_owned())]),
        )
    })
}

fn arb_selector() -> impl Strategy<Value = Selector> {
    (
        prop::option::of(prop::sample::select(APPS)),
        prop::option::of(prop::sample::select(NAMESPACES)),
    )
        .prop_map(|(app, ns)| {
            let mut s = Selector::all();
            if let Some(app) = app {
                s = s.with("app", app);
            }
            if let Some(ns) = ns {
                s = s.with(POD_NAMESPACE_LABEL, ns);
            }
            s
        })
}

fn arb_prefix() -> impl Strategy<Value = Prefix> {
    prop::sample::select(CIDRS).prop_map(|c| c.parse().expect("fixture CIDR"))
}

fn arb_peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        arb_selector().prop_map(Peer::Endpoints),
        (arb_prefix(), prop::collection::vec(arb_prefix(), 0..2)).prop_map(|(cidr, except)| {
            let except = except.into_iter().filter(|e| cidr.contains(e)).collect();
            Peer::Cidr { cidr, except }
        }),
        prop::sample::select(vec![
            Entity::All,
            Entity::World,
            Entity::Cluster,
            Entity::Host
        ])
        .prop_map(Peer::Entity),
    ]
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    let ports = prop::option::of(prop::collection::vec(
        (
            prop::sample::select(vec![PROTO_TCP, PROTO_UDP]),
            0u16..100,
            0u16..40,
        )
            .prop_map(|(proto, first, len)| PortRange {
                proto,
                first,
                last: first + len,
            }),
        0..3,
    ));
    let peers = prop_oneof![
        1 => Just(Peers::Any),
        4 => prop::collection::vec(arb_peer(), 0..3).prop_map(Peers::Only),
    ];
    (peers, ports).prop_map(|(peers, ports)| Rule { peers, ports })
}

fn arb_policy(name: u8) -> impl Strategy<Value = Policy> {
    let spec = (
        arb_selector(),
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
        prop::option::of(prop::collection::vec(arb_rule(), 0..3)),
    )
        .prop_map(|(subject, ingress, egress)| PolicySpec {
            subject,
            ingress,
            egress,
        });
    prop::collection::vec(spec, 1..3).prop_map(move |specs| Policy {
        id: PolicyRef {
            kind: PolicyKind::SextantNetworkPolicy,
            namespace: "x".into(),
            name: format!("p{name}"),
        },
        specs,
    })
}

#[derive(Clone, Debug)]
enum Change {
    UpsertPolicy(Policy),
    RemovePolicy(u8),
    UpsertIdentity(u32, Labels),
    RemoveIdentity(u32),
    UpsertPod(u8, u32),
    RemovePod(u8),
    UpsertNode(u8),
    RemoveNode(u8),
    UpsertHost(u8),
    RemoveHost(u8),
    AddLocal(u32),
    RemoveLocal(u32),
}

fn arb_identity() -> impl Strategy<Value = u32> {
    prop_oneof![9 => 256u32..262, 1 => Just(1u32)]
}

fn arb_change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => (0u8..4).prop_flat_map(arb_policy).prop_map(Change::UpsertPolicy),
        1 => (0u8..4).prop_map(Change::RemovePolicy),
        3 => (arb_identity(), arb_labels()).prop_map(|(id, l)| Change::UpsertIdentity(id, l)),
        1 => arb_identity().prop_map(Change::RemoveIdentity),
        2 => (0u8..6, arb_identity()).prop_map(|(ip, id)| Change::UpsertPod(ip, id)),
        1 => (0u8..6).prop_map(Change::RemovePod),
        1 => (0u8..3).prop_map(Change::UpsertNode),
        1 => (0u8..3).prop_map(Change::RemoveNode),
        1 => (0u8..3).prop_map(Change::UpsertHost),
        1 => (0u8..3).prop_map(Change::RemoveHost),
        2 => arb_identity().prop_map(Change::AddLocal),
        1 => arb_identity().prop_map(Change::RemoveLocal),
    ]
}

/// Pods and nodes share addresses with policy CIDRs on purpose (10.1.2.3).
fn pod_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 2, n)
}

fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, 2, n + 2)
}

fn apply(e: &mut PolicyEngine, c: &Change) -> MapDiff {
    let id = |n: u8| PolicyRef {
        kind: PolicyKind::SextantNetworkPolicy,
        namespace: "x".into(),
        name: format!("p{n}"),
    };
    match c.clone() {
        Change::UpsertPolicy(p) => e.upsert_policy(p),
        Change::RemovePolicy(n) => e.remove_policy(&id(n)),
        Change::UpsertIdentity(i, l) => e.upsert_identity(i, l),
        Change::RemoveIdentity(i) => e.remove_identity(i),
        Change::UpsertPod(n, i) => e.upsert_pod(pod_ip(n), i),
        Change::RemovePod(n) => e.remove_pod(pod_ip(n)),
        Change::UpsertNode(n) => e.upsert_node(node_ip(n)),
        Change::RemoveNode(n) => e.remove_node(node_ip(n)),
        Change::UpsertHost(n) => e.upsert_host(node_ip(n)),
        Change::RemoveHost(n) => e.remove_host(node_ip(n)),
        Change::AddLocal(i) => e.add_local_identity(i),
        Change::RemoveLocal(i) => e.remove_local_identity(i),
    }
}

type ByName = (
    BTreeMap<PolicyKey, String>,
    BTreeMap<u32, u8>,
    BTreeMap<(Ipv4Addr, u8), u32>,
    BTreeSet<String>,
);

/// Contents with policy indices replaced by policy names, so the engine's
/// slots (with holes) compare with `compute`'s positions.
fn by_name(m: &MapContents) -> ByName {
    (
        m.policy
            .iter()
            .map(|(k, v)| {
                (
                    *k,
                    m.policy_names
                        .get(&v.policy_index)
                        .cloned()
                        .unwrap_or_default(),
                )
            })
            .collect(),
        m.enforced.clone(),
        m.ipcache.clone(),
        m.policy_names.values().cloned().collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn parsing_arbitrary_json_never_panics(body in arb_json(), (api, kind) in kinds()) {
        let mut doc = body;
        if let Value::Object(m) = &mut doc {
            m.insert("apiVersion".into(), api.into());
            m.insert("kind".into(), kind.into());
        }
        let _ = parse_value(&doc);
        let _ = cilium_to_sextant(&doc);
        for d in policy_documents(&json!({"kind": "List", "items": [doc]})) {
            let _ = parse_value(&d);
        }
    }

    #[test]
    fn parsing_arbitrary_yaml_text_never_panics(text in "[ -~\n]{0,200}") {
        // serde_yaml's document iterator can repeat an error forever: stop at the first.
        for doc in serde_yaml::Deserializer::from_str(&text).take(16) {
            let Ok(v) = <Value as serde::Deserialize>::deserialize(doc) else { break };
            let _ = parse_value(&v);
            let _ = cilium_to_sextant(&v);
        }
    }

    #[test]
    fn compute_never_panics_and_enforces_only_local_identities(
        policies in prop::collection::vec((0u8..8).prop_flat_map(arb_policy), 0..5),
        ids in prop::collection::btree_map(arb_identity(), arb_labels(), 0..6),
        locals in prop::collection::btree_set(arb_identity(), 0..6),
        pods in prop::collection::btree_map((0u8..6).prop_map(pod_ip), arb_identity(), 0..6),
    ) {
        let m = compute(&policies, &ids, &pods, &Nodes { host: [node_ip(0)].into(), remote: [node_ip(1)].into() }, &locals);
        prop_assert!(m.enforced.keys().all(|id| locals.contains(id)));
        prop_assert!(m.policy.keys().all(|k| locals.contains(&k.local_identity)));
        prop_assert!(m.policy.keys().all(|k| k.proto != 0 || (k.port == 0 && k.port_prefix == 0)));
        prop_assert!(m.policy.values().all(|v| m.policy_names.contains_key(&v.policy_index)));
        prop_assert_eq!(m.ipcache.get(&(Ipv4Addr::UNSPECIFIED, 0)), Some(&identity::IDENTITY_WORLD));
    }

    #[test]
    fn incremental_engine_equals_compute_from_scratch_after_any_changes(
        changes in prop::collection::vec(arb_change(), 1..40),
    ) {
        let mut e = PolicyEngine::new();
        for c in &changes {
            let before = e.contents().clone();
            let d = apply(&mut e, c);
            prop_assert_eq!(&d, &diff(&before, e.contents()), "diff of {:?}", c);
            let mut replayed = before;
            d.apply(&mut replayed);
            prop_assert_eq!(&replayed, e.contents());
        }
        let policies: Vec<Policy> = e.policies().map(|(_, p)| p.clone()).collect();
        let scratch = compute(&policies, &e.identities(), e.pods(), e.nodes(), e.local_identities());
        prop_assert_eq!(by_name(&scratch), by_name(e.contents()));
    }
}
