//! Policies as users write them, down to the verdicts the datapath reaches:
//! the issue's protected-db example, egress, CIDRs with holes, entities,
//! Kubernetes NetworkPolicy, and the rejections.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde_json::{Value, json};
use sextant_policy::*;

const DB: u32 = 1000;
const EMPLOYEE: u32 = 1001;
const GUEST: u32 = 1002;
const EMPLOYEE_OTHER_NS: u32 = 1003;
const PROD_API: u32 = 1004;

fn labels(ns: &str, pairs: &[(&str, &str)], ns_labels: &[(&str, &str)]) -> Labels {
    let map = |p: &[(&str, &str)]| -> BTreeMap<String, String> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    Labels::for_pod(ns, &map(pairs), &map(ns_labels))
}

/// Identities of a small cluster: namespace `default` (team=shop) and `prod` (env=prod).
fn identities() -> BTreeMap<u32, Labels> {
    let shop = [("team", "shop")];
    let prod = [("env", "prod")];
    BTreeMap::from([
        (DB, labels("default", &[("app", "protected-db")], &shop)),
        (EMPLOYEE, labels("default", &[("app", "employee")], &shop)),
        (GUEST, labels("default", &[("app", "guest")], &shop)),
        (
            EMPLOYEE_OTHER_NS,
            labels("prod", &[("app", "employee")], &prod),
        ),
        (PROD_API, labels("prod", &[("app", "api")], &prod)),
    ])
}

fn pods() -> BTreeMap<Ipv4Addr, u32> {
    BTreeMap::from([
        (Ipv4Addr::new(10, 1, 0, 10), DB),
        (Ipv4Addr::new(10, 1, 0, 11), EMPLOYEE),
        (Ipv4Addr::new(10, 1, 0, 12), GUEST),
        (Ipv4Addr::new(10, 2, 0, 13), EMPLOYEE_OTHER_NS),
        (Ipv4Addr::new(10, 2, 0, 14), PROD_API),
    ])
}

const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 1);
const REMOTE_NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 0, 2);

/// This node and one other, both in the node list as the API lists them.
fn nodes() -> Nodes {
    Nodes {
        host: [NODE].into(),
        remote: [NODE, REMOTE_NODE].into(),
    }
}

fn all_local() -> BTreeSet<u32> {
    identities().keys().copied().collect()
}

fn yaml(s: &str) -> Value {
    serde_yaml::from_str(s).expect("test YAML parses")
}

fn example() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/examples/protected-db-policy.yaml"
    );
    yaml(&std::fs::read_to_string(path).expect("example policy file"))
}

/// Runs the engine over the fixture so CIDR identities exist, then checks
/// it against `compute` from scratch.
fn engine(policies: &[Policy]) -> PolicyEngine {
    let mut e = PolicyEngine::new();
    for (id, l) in identities() {
        e.upsert_identity(id, l);
    }
    for (ip, id) in pods() {
        e.upsert_pod(ip, id);
    }
    e.upsert_host(NODE);
    e.upsert_node(NODE);
    e.upsert_node(REMOTE_NODE);
    for id in all_local() {
        e.add_local_identity(id);
    }
    for p in policies {
        e.upsert_policy(p.clone());
    }
    let from_scratch = compute(
        &e.policies().map(|(_, p)| p.clone()).collect::<Vec<_>>(),
        &e.identities(),
        e.pods(),
        e.nodes(),
        e.local_identities(),
    );
    assert_eq!(&from_scratch, e.contents());
    e
}

fn ingress_allowed(m: &MapContents, to: u32, from_ip: Ipv4Addr, proto: u8, port: u16) -> bool {
    let remote = m.identity_of(from_ip).expect("0.0.0.0/0 is always there");
    m.verdict(to, Direction::Ingress, proto, remote, port)
        .is_some()
}

fn egress_allowed(m: &MapContents, from: u32, to_ip: Ipv4Addr, proto: u8, port: u16) -> bool {
    let remote = m.identity_of(to_ip).expect("0.0.0.0/0 is always there");
    m.verdict(from, Direction::Egress, proto, remote, port)
        .is_some()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("test address")
}

#[test]
fn protected_db_example_admits_only_employees_on_tcp_6379() {
    let policy = parse_value(&example()).expect("the Cilium example loads as-is");
    assert_eq!(
        policy.id.to_string(),
        "SextantNetworkPolicy/default/protected-db"
    );
    let m = compute(
        std::slice::from_ref(&policy),
        &identities(),
        &pods(),
        &nodes(),
        &all_local(),
    );
    assert_eq!(m.enforced, BTreeMap::from([(DB, ENFORCE_INGRESS)]));
    assert_eq!(
        m.policy,
        BTreeMap::from([(
            PolicyKey {
                local_identity: DB,
                direction: Direction::Ingress,
                proto: PROTO_TCP,
                remote_identity: EMPLOYEE,
                port: 6379,
                port_prefix: 16,
            },
            PolicyValue { policy_index: 0 }
        )])
    );
    assert_eq!(
        m.policy_names[&0],
        "SextantNetworkPolicy/default/protected-db"
    );
    let employee = ip("10.1.0.11");
    assert!(ingress_allowed(&m, DB, employee, PROTO_TCP, 6379));
    assert!(!ingress_allowed(&m, DB, employee, PROTO_TCP, 6380));
    assert!(!ingress_allowed(&m, DB, employee, PROTO_UDP, 6379));
    assert!(
        !ingress_allowed(&m, DB, ip("10.1.0.12"), PROTO_TCP, 6379),
        "guest"
    );
    assert!(
        !ingress_allowed(&m, DB, ip("10.2.0.13"), PROTO_TCP, 6379),
        "employee of another namespace"
    );
    assert!(
        !ingress_allowed(&m, DB, ip("8.8.8.8"), PROTO_TCP, 6379),
        "world"
    );
    assert!(!ingress_allowed(&m, DB, NODE, PROTO_TCP, 6379), "host");
    // Unselected endpoints stay open, and egress is not enforced.
    assert!(ingress_allowed(&m, GUEST, ip("8.8.8.8"), PROTO_TCP, 22));
    assert!(egress_allowed(&m, DB, ip("8.8.8.8"), PROTO_TCP, 443));
}

#[test]
fn converted_example_is_the_same_policy_under_sextant_kind() {
    let converted = cilium_to_sextant(&example()).expect("the example converts");
    assert_eq!(converted["apiVersion"], "sextant.io/v1alpha1");
    assert_eq!(converted["kind"], "SextantNetworkPolicy");
    assert_eq!(converted["spec"], example()["spec"], "spec unchanged");
    assert_eq!(
        parse_value(&converted).unwrap(),
        parse_value(&example()).unwrap()
    );
}

#[test]
fn egress_rules_make_the_source_default_deny_for_egress_only() {
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: employee-out, namespace: default}
spec:
  endpointSelector: {matchLabels: {"k8s:app": employee}}
  egress:
  - toEndpoints:
    - matchLabels: {app: protected-db}
    toPorts:
    - ports: [{port: "6379", protocol: TCP}]
  - toEntities: [host]
  - toPorts:
    - ports: [{port: "53", protocol: ANY}]
"#,
    ))
    .unwrap();
    let e = engine(&[p]);
    let m = e.contents();
    assert_eq!(m.enforced.get(&EMPLOYEE), Some(&ENFORCE_EGRESS));
    assert!(egress_allowed(
        m,
        EMPLOYEE,
        ip("10.1.0.10"),
        PROTO_TCP,
        6379
    ));
    assert!(!egress_allowed(m, EMPLOYEE, ip("10.1.0.10"), PROTO_TCP, 22));
    assert!(!egress_allowed(
        m,
        EMPLOYEE,
        ip("10.1.0.12"),
        PROTO_TCP,
        6379
    ));
    assert!(
        egress_allowed(m, EMPLOYEE, NODE, PROTO_TCP, 10250),
        "host, any port"
    );
    // An L4-only rule allows every peer on its ports, each protocol of ANY.
    assert!(egress_allowed(m, EMPLOYEE, ip("1.1.1.1"), PROTO_UDP, 53));
    assert!(egress_allowed(m, EMPLOYEE, ip("1.1.1.1"), PROTO_TCP, 53));
    assert!(!egress_allowed(m, EMPLOYEE, ip("1.1.1.1"), PROTO_TCP, 443));
    // Ingress of the employee stays open.
    assert!(ingress_allowed(m, EMPLOYEE, ip("1.1.1.1"), PROTO_TCP, 22));
}

#[test]
fn cidr_rule_with_except_allows_the_range_but_not_the_hole() {
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-corp, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: employee}}
  egress:
  - toCIDRSet:
    - cidr: 172.16.0.0/12
      except: [172.20.0.0/16]
    toPorts:
    - ports: [{port: "8000", endPort: 8099, protocol: TCP}]
  - toCIDR: [9.9.9.9/32]
"#,
    ))
    .unwrap();
    // Another policy names a prefix inside the range: still allowed.
    let q = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: guest-lab, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: guest}}
  egress:
  - toCIDR: [172.16.5.0/24]
"#,
    ))
    .unwrap();
    let e = engine(&[p, q]);
    let m = e.contents();
    let e_ok = |dst: &str, port| egress_allowed(m, EMPLOYEE, ip(dst), PROTO_TCP, port);
    assert!(e_ok("172.16.0.1", 8000));
    assert!(e_ok("172.31.255.254", 8099));
    assert!(
        e_ok("172.16.5.7", 8050),
        "more specific prefix of another policy"
    );
    assert!(!e_ok("172.16.0.1", 8100), "outside the port range");
    assert!(!e_ok("172.20.1.1", 8000), "the hole");
    assert!(!e_ok("8.8.8.8", 8000), "world");
    assert!(!e_ok("10.1.0.10", 8000), "a pod is a pod, not a CIDR");
    assert!(e_ok("9.9.9.9", 443));
    assert!(!e_ok("9.9.9.8", 443));
    // The except and every named prefix are ipcache entries of their own.
    for prefix in [
        "172.16.0.0/12",
        "172.20.0.0/16",
        "172.16.5.0/24",
        "9.9.9.9/32",
    ] {
        let p: Prefix = prefix.parse().unwrap();
        let id = m.ipcache[&p.key()];
        assert!(identity::is_cidr_identity(id), "{prefix} -> {id}");
    }
    assert_eq!(
        m.ipcache[&(Ipv4Addr::UNSPECIFIED, 0)],
        identity::IDENTITY_WORLD
    );
    assert_eq!(m.ipcache[&(NODE, 32)], identity::IDENTITY_HOST);
    // 8000..=8099 as port prefixes: 8000/12 would pass 8015... check the count is minimal.
    let blocks = m
        .policy
        .keys()
        .filter(|k| k.local_identity == EMPLOYEE && k.proto == PROTO_TCP)
        .map(|k| (k.port, k.port_prefix))
        .collect::<BTreeSet<_>>();
    assert_eq!(blocks, ports::decompose(8000, 8099).into_iter().collect());
}

#[test]
fn entities_map_to_reserved_and_cluster_identities() {
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: entities, namespace: default}
specs:
- endpointSelector: {matchLabels: {app: protected-db}}
  ingress:
  - fromEntities: [cluster]
  egress:
  - toEntities: [world]
- endpointSelector: {matchLabels: {app: guest}}
  ingress:
  - fromEntities: [host]
  egress:
  - toEntities: [all]
"#,
    ))
    .unwrap();
    let e = engine(&[p]);
    let m = e.contents();
    for src in ["10.1.0.11", "10.2.0.14", "192.168.0.1", "192.168.0.2"] {
        assert!(
            ingress_allowed(m, DB, ip(src), PROTO_TCP, 1),
            "cluster admits {src} (pods, this node, the other nodes)"
        );
    }
    assert!(!ingress_allowed(m, DB, ip("8.8.8.8"), PROTO_TCP, 1));
    assert!(egress_allowed(m, DB, ip("8.8.8.8"), PROTO_UDP, 53));
    assert!(
        !egress_allowed(m, DB, ip("10.1.0.11"), PROTO_TCP, 1),
        "world is not pods"
    );
    assert!(ingress_allowed(m, GUEST, NODE, PROTO_TCP, 1));
    assert!(
        !ingress_allowed(m, GUEST, REMOTE_NODE, PROTO_TCP, 1),
        "host is this node only, not the other nodes"
    );
    assert!(!ingress_allowed(m, GUEST, ip("10.1.0.11"), PROTO_TCP, 1));
    assert!(egress_allowed(m, GUEST, ip("10.1.0.11"), PROTO_SCTP, 9));
    assert!(m.policy.keys().any(|k| k.local_identity == GUEST
        && k.direction == Direction::Egress
        && k.remote_identity == identity::IDENTITY_ANY
        && k.proto == 0));
}

#[test]
fn other_nodes_are_remote_node_and_need_a_rule_this_node_is_host() {
    let m = engine(&[]).contents().clone();
    assert_eq!(m.identity_of(NODE), Some(identity::IDENTITY_HOST));
    assert_eq!(
        m.identity_of(REMOTE_NODE),
        Some(identity::IDENTITY_REMOTE_NODE),
        "another node's InternalIP is remote-node, not host"
    );
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: nodes, namespace: default}
specs:
- endpointSelector: {matchLabels: {app: protected-db}}
  ingress:
  - fromEntities: [remote-node]
    toPorts: [{ports: [{port: "9100", protocol: TCP}]}]
- endpointSelector: {matchLabels: {app: guest}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: employee}}]
  egress:
  - toEntities: [remote-node]
"#,
    ))
    .expect("remote-node is a supported entity");
    let e = engine(&[p]);
    let m = e.contents();
    assert!(ingress_allowed(m, DB, REMOTE_NODE, PROTO_TCP, 9100));
    assert!(!ingress_allowed(m, DB, REMOTE_NODE, PROTO_TCP, 9101));
    assert!(
        !ingress_allowed(m, GUEST, REMOTE_NODE, PROTO_TCP, 1),
        "default deny holds against other nodes"
    );
    assert!(egress_allowed(m, GUEST, REMOTE_NODE, PROTO_TCP, 10250));
    assert!(!egress_allowed(m, GUEST, ip("8.8.8.8"), PROTO_TCP, 1));
}

#[test]
fn cilium_selectors_stay_in_the_policy_namespace_unless_they_name_one() {
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: protected-db}}
  ingress:
  - fromEndpoints:
    - {}
  - fromEndpoints:
    - matchLabels:
        k8s:io.kubernetes.pod.namespace: prod
        any:app: employee
    toPorts:
    - ports: [{port: 6379, protocol: TCP}]
"#,
    ))
    .unwrap();
    let m = engine(&[p]).contents().clone();
    assert!(
        ingress_allowed(&m, DB, ip("10.1.0.12"), PROTO_TCP, 1),
        "{{}} = this namespace"
    );
    assert!(
        ingress_allowed(&m, DB, ip("10.2.0.13"), PROTO_TCP, 6379),
        "named namespace"
    );
    assert!(!ingress_allowed(&m, DB, ip("10.2.0.13"), PROTO_TCP, 1));
    assert!(
        !ingress_allowed(&m, DB, ip("10.2.0.14"), PROTO_TCP, 6379),
        "prod api"
    );
}

#[test]
fn kubernetes_network_policy_converts_with_namespace_selectors_ip_blocks_and_tcp_default() {
    let p = parse_value(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": "default"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "protected-db"}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": {"app": "employee"}}}],
                 "ports": [{"port": 6379}]},
                {"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                           "podSelector": {"matchLabels": {"app": "api"}}}],
                 "ports": [{"port": 7000, "endPort": 7003, "protocol": "UDP"}]},
                {"from": [{"ipBlock": {"cidr": "100.64.0.0/10", "except": ["100.64.1.0/24"]}}]}
            ],
            "egress": []
        }
    }))
    .unwrap();
    assert_eq!(p.id.kind, PolicyKind::NetworkPolicy);
    let m = engine(&[p]).contents().clone();
    assert_eq!(m.enforced[&DB], ENFORCE_INGRESS | ENFORCE_EGRESS);
    assert!(ingress_allowed(&m, DB, ip("10.1.0.11"), PROTO_TCP, 6379));
    assert!(
        !ingress_allowed(&m, DB, ip("10.1.0.11"), PROTO_UDP, 6379),
        "TCP by default"
    );
    assert!(
        !ingress_allowed(&m, DB, ip("10.2.0.13"), PROTO_TCP, 6379),
        "other namespace"
    );
    assert!(ingress_allowed(&m, DB, ip("10.2.0.14"), PROTO_UDP, 7003));
    assert!(!ingress_allowed(&m, DB, ip("10.2.0.14"), PROTO_UDP, 7004));
    assert!(ingress_allowed(&m, DB, ip("100.65.0.1"), PROTO_TCP, 1));
    assert!(
        !ingress_allowed(&m, DB, ip("100.64.1.1"), PROTO_TCP, 1),
        "except"
    );
    assert!(
        !egress_allowed(&m, DB, ip("8.8.8.8"), PROTO_UDP, 53),
        "egress: [] denies all"
    );
}

#[test]
fn kubernetes_empty_ingress_rule_allows_all_and_default_policy_types_are_ingress() {
    let p = parse_value(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "open", "namespace": "default"},
        "spec": {"podSelector": {}, "ingress": [{}]}
    }))
    .unwrap();
    let m = engine(&[p]).contents().clone();
    assert_eq!(
        m.enforced[&GUEST], ENFORCE_INGRESS,
        "only Ingress by default"
    );
    assert!(
        !m.enforced.contains_key(&PROD_API),
        "other namespace untouched"
    );
    assert!(ingress_allowed(&m, GUEST, ip("8.8.8.8"), PROTO_UDP, 5));
    let deny = parse_value(&json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "prod"},
        "spec": {"podSelector": {}}
    }))
    .unwrap();
    let m = engine(&[deny]).contents().clone();
    assert!(!ingress_allowed(
        &m,
        PROD_API,
        ip("10.2.0.13"),
        PROTO_TCP,
        80
    ));
}

#[test]
fn unsupported_and_invalid_fields_are_rejected_with_every_path() {
    let doc = yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: api}
    matchExpressions: [{key: tier, operator: Near, values: [a]}]
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /}]
    - ports: [{port: http, protocol: TCP}]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [11.0.0.0/16]}]
    fromRequires: [{matchLabels: {env: prod}}]
  ingressDeny:
  - fromEntities: [world]
  egress:
  - toFQDNs: [{matchName: example.com}]
  - toCIDR: [10.0.0.0/40, "fd00::/8"]
    toEntities: [kube-apiserver]
    frobnicate: true
"#,
    );
    let err = parse_value(&doc).unwrap_err();
    let Error::Rejected { policy, problems } = &err else {
        panic!("not a rejection: {err}");
    };
    assert_eq!(policy, "SextantNetworkPolicy/shop/l7");
    let got: Vec<String> = problems.iter().map(ToString::to_string).collect();
    let want = [
        "spec.ingressDeny: deny rules are not supported",
        "spec.endpointSelector.matchExpressions[0].operator: unknown operator \"Near\" (In, NotIn, Exists, DoesNotExist)",
        "spec.ingress[0].toPorts[0].rules: L7 rules are not supported",
        "spec.ingress[0].toPorts[1].ports[0].port: named port \"http\" is not supported yet; use the port number",
        "spec.ingress[1].fromRequires: fromRequires is not supported",
        "spec.ingress[1].fromCIDRSet[0].except[0]: 11.0.0.0/16 is not inside 10.0.0.0/8",
        "spec.egress[0].toFQDNs: DNS-based rules (toFQDNs) are not supported",
        "spec.egress[1].frobnicate: unknown field",
        "spec.egress[1].toCIDR[0]: \"10.0.0.0/40\" is not an IPv4 CIDR",
        "spec.egress[1].toCIDR[1]: IPv6 CIDR \"fd00::/8\" is not supported",
        "spec.egress[1].toEntities[0]: entity \"kube-apiserver\" is not supported (all, world, cluster, host, remote-node are)",
    ];
    assert_eq!(got, want);
    assert_eq!(err.reason(), "Unsupported");
    let cond = accepted_condition(&Err(err), Some(3), k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    assert_eq!(
        (cond.type_.as_str(), cond.status.as_str()),
        ("Accepted", "False")
    );
    assert!(
        cond.message
            .contains("spec.ingress[0].toPorts[0].rules: L7 rules are not supported")
    );
    assert_eq!(cond.observed_generation, Some(3));
    // The converter refuses it for the same reasons.
    assert!(cilium_to_sextant(&doc).is_err());
}

#[test]
fn malformed_but_supported_policies_are_invalid_not_unsupported() {
    let err = parse_value(&yaml(
        r#"
apiVersion: sextant.io/v1alpha1
kind: SextantNetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "70000"}, {port: "90", endPort: 80}, {port: "1", protocol: XTP}]}]
"#,
    ))
    .unwrap_err();
    assert_eq!(err.reason(), "Invalid");
    assert_eq!(err.problems_text().lines().count(), 3, "{err}");
    assert!(matches!(
        parse_value(&json!({"apiVersion": "v1", "kind": "Pod"})),
        Err(Error::UnknownKind { .. })
    ));
    assert!(matches!(
        parse_value(
            &json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "spec": 5})
        ),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn a_policy_change_diff_touches_only_the_endpoints_it_selects() {
    let example = parse_value(&example()).unwrap();
    let mut e = engine(&[]);
    let before = e.contents().clone();
    let d = e.upsert_policy(example.clone());
    assert_eq!(d, diff(&before, e.contents()));
    assert_eq!(d.policy_upserts.len(), 1);
    assert_eq!(d.enforced_upserts, BTreeMap::from([(DB, ENFORCE_INGRESS)]));
    assert!(d.ipcache_upserts.is_empty() && d.policy_deletes.is_empty());
    // A second policy keeps the first one's index; removing the first frees it.
    let mut other = example.clone();
    other.id.name = "other".into();
    let idx_first = e.policy_index(&example.id);
    e.upsert_policy(other.clone());
    assert_eq!(e.policy_index(&example.id), idx_first);
    assert_eq!(e.policy_index(&other.id), Some(1));
    let d = e.remove_policy(&example.id);
    assert_eq!(d.policy_names_deletes, BTreeSet::from([0]));
    assert!(
        d.policy_upserts.values().all(|v| v.policy_index == 1),
        "the shared key now counts for the other policy"
    );
    assert!(d.enforced_deletes.is_empty(), "still selected by the other");
    // A new employee identity reaches the db: one entry added.
    let d = e.upsert_identity(
        2000,
        labels(
            "default",
            &[("app", "employee"), ("v", "2")],
            &[("team", "shop")],
        ),
    );
    assert_eq!(d.policy_upserts.len(), 1);
    assert_eq!(d.len(), 1);
    // A pod move touches one ipcache entry and nothing else.
    let d = e.upsert_pod(ip("10.1.0.99"), 2000);
    assert_eq!(d.len(), 1);
    assert_eq!(d.ipcache_upserts[&(ip("10.1.0.99"), 32)], 2000);
}

#[test]
fn identity_numbers_for_pods_are_deterministic_and_skip_taken_numbers() {
    let db = labels(
        "default",
        &[("app", "protected-db"), ("pod-template-hash", "abc")],
        &[],
    );
    assert_eq!(
        db.get("pod-template-hash"),
        None,
        "per-rollout labels are not identity"
    );
    let a = allocate(&db, &BTreeMap::new()).unwrap();
    let taken = BTreeMap::from([(a, labels("default", &[("app", "x")], &[]))]);
    let b = allocate(&db, &taken).unwrap();
    assert_ne!(a, b);
    assert!(identity::is_cluster_identity(a) && identity::is_cluster_identity(b));
}

#[test]
fn lists_of_policies_expand_into_their_items() {
    let list = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicyList", "items": [example(), example()]});
    assert_eq!(policy_documents(&list).len(), 2);
    assert_eq!(policy_documents(&example()).len(), 1);
    assert!(policy_documents(&Value::Null).is_empty());
}

#[test]
fn expansion_counts_the_entries_a_policy_would_add_before_it_is_applied() {
    let p = parse_value(&yaml(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: wide, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: protected-db}}
  ingress:
  - fromCIDR: [203.0.113.0/24, 198.51.100.7/32]
    toPorts: [{ports: [{port: "8000", endPort: 8099, protocol: TCP}]}]
  - fromEntities: [host, remote-node]
"#,
    ))
    .expect("valid");
    let before = engine(&[]);
    let predicted = before.expansion(&p, before.local_identities());
    let after = engine(std::slice::from_ref(&p));
    assert_eq!(predicted, after.contents().policy.len());
    assert!(predicted > 2, "{predicted}");
}
