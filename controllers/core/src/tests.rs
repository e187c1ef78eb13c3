//! Plan-level tests: small builders, then the behaviours one by one, then
//! the invariants as properties.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use proptest::prelude::*;
use sextant_cloud::{InstanceLimits, SecurityGroup, Subnet, Tags};
use sextant_crds::{
    AgentUsage, EniStatus, IpamSpec, NodeNetworkSpec, NodeNetworkStatus, Provider, ReleaseState,
};

use super::{
    plan::{Limit, Plan, PlanInput, ReleasedBound, Step, plan},
    resync::apply_enis,
    watermark::Watermarks,
};

fn m5_large() -> InstanceLimits {
    InstanceLimits {
        instance_type: "m5.large".into(),
        max_enis: 3,
        ipv4_per_eni: 10,
    }
}

fn mk_spec() -> NodeNetworkSpec {
    NodeNetworkSpec {
        provider: Provider::Aws,
        instance_id: Some("i-1".into()),
        instance_type: Some("m5.large".into()),
        zone: Some("a".into()),
        vpc_id: Some("vpc".into()),
        ipam: IpamSpec::default(),
        pod_cidrs: vec![],
    }
}

fn mk_subnet(id: &str, zone: &str, free: u32, tags: &[(&str, &str)]) -> Subnet {
    Subnet {
        id: id.into(),
        vpc_id: "vpc".into(),
        zone: zone.into(),
        cidr: "10.0.0.0/16".into(),
        available_ips: free,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn mk_eni(id: &str, device_index: u32, first_ip: u8, n: u8) -> EniStatus {
    EniStatus {
        id: id.into(),
        subnet_id: "s1".into(),
        device_index,
        mac: None,
        primary_ip: Some(format!("10.0.{device_index}.250")),
        addresses: (0..n)
            .map(|i| format!("10.0.{device_index}.{}", first_ip + i))
            .collect(),
        security_groups: vec!["sg-primary".into()],
        excluded: false,
    }
}

/// A status with a primary ENI and the given pod ENIs, pool derived from them.
fn mk_status(pod_enis: Vec<EniStatus>, used: &[&str]) -> NodeNetworkStatus {
    let mut st = NodeNetworkStatus::default();
    let mut enis = vec![mk_eni("eni-primary", 0, 1, 0)];
    enis.extend(pod_enis);
    apply_enis(&mut st, enis, 1);
    st.usage = Some(AgentUsage {
        used: used
            .iter()
            .map(|ip| (ip.to_string(), "pod".to_string()))
            .collect(),
        cooling: vec![],
        pending: 0,
        reported_at: None,
    });
    st
}

fn wm(pre: u32, min: u32, max: Option<u32>, above: u32) -> Watermarks {
    Watermarks {
        pre_allocate: pre,
        min_allocate: min,
        max_allocate: max,
        max_above_watermark: above,
    }
}

fn run(
    spec: &NodeNetworkSpec,
    status: &NodeNetworkStatus,
    w: Watermarks,
    subnets: &[Subnet],
) -> Plan {
    let limits = m5_large();
    let sgs = vec![SecurityGroup {
        id: "sg-tagged".into(),
        vpc_id: "vpc".into(),
        name: "pods".into(),
        tags: Tags::from([("role".into(), "pods".into())]),
    }];
    plan(&PlanInput {
        spec,
        status,
        watermarks: w,
        limits: &limits,
        subnets,
        security_groups: &sgs,
        now: now(),
        released_since: &BTreeMap::new(),
        released_bound: ReleasedBound::default(),
    })
}

fn now() -> Timestamp {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn default_subnets() -> Vec<Subnet> {
    vec![mk_subnet("s1", "a", 100, &[])]
}

#[test]
fn empty_node_creates_an_eni_with_pre_allocate_ips_in_its_zone() {
    let subnets = vec![
        mk_subnet("s-other-zone", "b", 5000, &[]),
        mk_subnet("s-small", "a", 50, &[]),
        mk_subnet("s-big", "a", 500, &[]),
    ];
    let p = run(
        &mk_spec(),
        &mk_status(vec![], &[]),
        wm(8, 0, None, 0),
        &subnets,
    );
    assert_eq!(
        p.steps,
        vec![Step::CreateEni {
            subnet_id: "s-big".into(),
            security_groups: vec!["sg-primary".into()],
            device_index: 1,
            ips: 8,
        }]
    );
    assert_eq!(p.limit, None);
}

#[test]
fn pods_waiting_on_an_empty_pool_are_added_to_the_target_in_one_round() {
    // eni-1 holds 4 addresses, all used; 6 more pods wait. Want 8 free + 6.
    let used = ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"];
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 4)], &used);
    if let Some(u) = status.usage.as_mut() {
        u.pending = 6;
    }
    let p = run(&mk_spec(), &status, wm(8, 0, None, 0), &default_subnets());
    // eni-1 has room for 9 - 4 = 5; the new ENI takes the other 9.
    assert_eq!(
        p.steps,
        vec![
            Step::AssignIps {
                eni_id: "eni-1".into(),
                count: 5
            },
            Step::CreateEni {
                subnet_id: "s1".into(),
                security_groups: vec!["sg-primary".into()],
                device_index: 2,
                ips: 9,
            },
        ]
    );
}

#[test]
fn free_ips_owed_to_waiting_pods_are_not_marked_as_excess() {
    // 9 free on eni-1, preAllocate 2 with nothing above: excess 7 without
    // demand; 5 pods waiting for the agent's next allocation keep 5 of them.
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    if let Some(u) = status.usage.as_mut() {
        u.pending = 5;
    }
    let p = run(&mk_spec(), &status, wm(2, 0, None, 0), &default_subnets());
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(
        p.release
            .values()
            .filter(|s| **s == Some(ReleaseState::Marked))
            .count(),
        2
    );
}

#[test]
fn subnet_and_security_group_tags_select_where_the_eni_goes() {
    let mut spec = mk_spec();
    spec.ipam.subnet_tags = BTreeMap::from([("tier".into(), "pods".into())]);
    spec.ipam.security_group_tags = BTreeMap::from([("role".into(), "pods".into())]);
    let subnets = vec![
        mk_subnet("s-untagged", "a", 900, &[]),
        mk_subnet("s-pods", "a", 100, &[("tier", "pods")]),
    ];
    let p = run(&spec, &mk_status(vec![], &[]), wm(8, 0, None, 0), &subnets);
    match &p.steps[..] {
        [
            Step::CreateEni {
                subnet_id,
                security_groups,
                ..
            },
        ] => {
            assert_eq!(subnet_id, "s-pods");
            assert_eq!(security_groups, &vec!["sg-tagged".to_string()]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fills_attached_enis_before_creating_new_ones() {
    // 3 of 9 used on eni-1, 0 free elsewhere: want 8 available -> 2 more fit eni-1... it has 9 already.
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 4)], &["10.0.1.10", "10.0.1.11"]);
    // available 2, want 8: eni-1 has room for 5, then a new ENI for 1.
    let p = run(&mk_spec(), &status, wm(8, 0, None, 0), &default_subnets());
    assert_eq!(
        p.steps,
        vec![
            Step::AssignIps {
                eni_id: "eni-1".into(),
                count: 5
            },
            Step::CreateEni {
                subnet_id: "s1".into(),
                security_groups: vec!["sg-primary".into()],
                device_index: 2,
                ips: 1
            },
        ]
    );
}

#[test]
fn reports_instance_limit_when_every_slot_is_full() {
    // m5.large: 2 pod ENIs x 9 = 18, all used.
    let a = mk_eni("eni-1", 1, 10, 9);
    let b = mk_eni("eni-2", 2, 10, 9);
    let used: Vec<String> = a.addresses.iter().chain(&b.addresses).cloned().collect();
    let used: Vec<&str> = used.iter().map(String::as_str).collect();
    let p = run(
        &mk_spec(),
        &mk_status(vec![a, b], &used),
        wm(8, 0, None, 0),
        &default_subnets(),
    );
    assert!(p.steps.is_empty());
    assert_eq!(
        p.limit,
        Some(Limit::InstanceLimit {
            max_enis: 3,
            ipv4_per_eni: 10
        })
    );
    assert_eq!(p.counts.unmet, 8);
}

#[test]
fn max_allocate_caps_the_pool_and_says_so() {
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 4)], &[]);
    let p = run(
        &mk_spec(),
        &status,
        wm(8, 0, Some(6), 0),
        &default_subnets(),
    );
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-1".into(),
            count: 2
        }]
    );
    assert_eq!(p.limit, Some(Limit::MaxAllocate(6)));
}

#[test]
fn no_matching_subnet_blocks_creation_with_a_reason() {
    let p = run(
        &mk_spec(),
        &mk_status(vec![], &[]),
        wm(8, 0, None, 0),
        &[
            mk_subnet("s-full", "a", 3, &[]),
            mk_subnet("s-b", "b", 900, &[]),
        ],
    );
    assert!(p.steps.is_empty());
    assert_eq!(p.limit, Some(Limit::NoSubnet));
}

#[test]
fn min_allocate_holds_ips_even_when_free_ones_suffice() {
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 2)], &[]);
    let p = run(&mk_spec(), &status, wm(2, 6, None, 0), &default_subnets());
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-1".into(),
            count: 4
        }]
    );
}

#[test]
fn excess_ips_are_marked_not_released() {
    // 9 free, want 2 + 3 above: 4 excess.
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    let p = run(&mk_spec(), &status, wm(2, 0, None, 3), &default_subnets());
    assert!(
        p.steps.is_empty(),
        "nothing unassigned before the agent answers"
    );
    let marked: Vec<_> = p
        .release
        .iter()
        .filter(|(_, s)| **s == Some(ReleaseState::Marked))
        .map(|(ip, _)| ip.as_str())
        .collect();
    assert_eq!(marked, ["10.0.1.15", "10.0.1.16", "10.0.1.17", "10.0.1.18"]);
}

#[test]
fn releases_excess_ips_only_after_agent_ack() {
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    status.release = BTreeMap::from([
        ("10.0.1.18".into(), ReleaseState::ReadyForRelease),
        ("10.0.1.17".into(), ReleaseState::Marked),
        ("10.0.1.16".into(), ReleaseState::DoNotRelease),
    ]);
    let p = run(&mk_spec(), &status, wm(2, 0, None, 3), &default_subnets());
    assert_eq!(
        p.steps,
        vec![Step::UnassignIps {
            eni_id: "eni-1".into(),
            ips: vec!["10.0.1.18".parse().unwrap()]
        }]
    );
    // The refusal is cleared so the IP can be chosen again later.
    assert_eq!(p.release.get("10.0.1.16"), Some(&None));
    // The marked one waits for the agent.
    assert!(!p.release.contains_key("10.0.1.17"));
}

#[test]
fn never_releases_an_ip_the_agent_reports_in_use() {
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &["10.0.1.18"]);
    status.release = BTreeMap::from([("10.0.1.18".into(), ReleaseState::ReadyForRelease)]);
    let p = run(&mk_spec(), &status, wm(2, 0, None, 0), &default_subnets());
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::UnassignIps { ips, .. } if ips.contains(&"10.0.1.18".parse().unwrap())))
    );
    assert_eq!(p.release.get("10.0.1.18"), Some(&None));
}

#[test]
fn demand_cancels_pending_releases_before_asking_the_cloud() {
    let mut status = mk_status(
        vec![mk_eni("eni-1", 1, 10, 9)],
        &[
            "10.0.1.10",
            "10.0.1.11",
            "10.0.1.12",
            "10.0.1.13",
            "10.0.1.14",
        ],
    );
    status.release = BTreeMap::from([
        ("10.0.1.17".into(), ReleaseState::Marked),
        ("10.0.1.18".into(), ReleaseState::ReadyForRelease),
    ]);
    // 2 free + 2 releasing; want 4 -> cancel both, nothing from the cloud.
    let p = run(&mk_spec(), &status, wm(4, 0, None, 0), &default_subnets());
    assert!(p.steps.is_empty(), "{:?}", p.steps);
    assert_eq!(p.release.get("10.0.1.17"), Some(&None));
    assert_eq!(p.release.get("10.0.1.18"), Some(&None));
}

#[test]
fn excluded_and_low_index_enis_are_not_pod_enis() {
    let mut spec = mk_spec();
    spec.ipam.first_interface_index = Some(2);
    let mut excluded = mk_eni("eni-ex", 2, 10, 9);
    excluded.excluded = true;
    let mut status = NodeNetworkStatus::default();
    apply_enis(
        &mut status,
        vec![
            mk_eni("eni-primary", 0, 1, 0),
            mk_eni("eni-1", 1, 10, 9),
            excluded,
        ],
        2,
    );
    assert!(status.pool.is_empty());
    let p = run(&spec, &status, wm(4, 0, None, 0), &default_subnets());
    // m5.large has slots 0..3: 0, 1, 2 taken -> no slot left.
    assert!(p.steps.is_empty());
    assert!(matches!(p.limit, Some(Limit::InstanceLimit { .. })));
}

#[test]
fn a_steady_pool_plans_nothing() {
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 8)], &["10.0.1.10", "10.0.1.11"]);
    let p = run(&mk_spec(), &status, wm(6, 0, None, 2), &default_subnets());
    assert_eq!(
        p,
        Plan {
            counts: p.counts,
            ..Plan::default()
        }
    );
    assert_eq!(p.counts.available, 6);
}

// ---- properties ----

/// A random node: up to 2 pod ENIs with random fill, a random used set, a
/// random handshake map.
fn arb_node() -> impl Strategy<Value = (NodeNetworkStatus, Watermarks)> {
    (
        0u8..=9,
        0u8..=9,
        proptest::collection::vec(any::<bool>(), 18),
        proptest::collection::vec(0u8..5, 18),
        0u32..20,
        0u32..20,
        proptest::option::of(0u32..30),
        0u32..6,
    )
        .prop_map(|(a, b, used_bits, rel, pre, min, max, above)| {
            let mut enis = vec![];
            if a > 0 {
                enis.push(mk_eni("eni-1", 1, 10, a));
            }
            if b > 0 {
                enis.push(mk_eni("eni-2", 2, 10, b));
            }
            let ips: Vec<String> = enis.iter().flat_map(|e| e.addresses.clone()).collect();
            let used: Vec<&str> = ips
                .iter()
                .zip(&used_bits)
                .filter(|(_, u)| **u)
                .map(|(ip, _)| ip.as_str())
                .collect();
            let mut st = mk_status(enis, &used);
            for (ip, r) in ips.iter().zip(&rel) {
                let state = match r {
                    1 => ReleaseState::Marked,
                    2 => ReleaseState::ReadyForRelease,
                    3 => ReleaseState::DoNotRelease,
                    _ => continue,
                };
                st.release.insert(ip.clone(), state);
            }
            (st, wm(pre, min, max, above))
        })
}

/// Applies a plan as the cloud and the operator would (every step succeeds),
/// then lets the agent answer: the real agent's node IPAM
/// (`sextant_agent_core::node::LocalIpam`) holding the addresses the status
/// lists as used, its status merge patch applied as the API server would.
fn apply(status: &NodeNetworkStatus, p: &Plan, next_ip: &mut u32) -> NodeNetworkStatus {
    let mut st = status.clone();
    for (ip, change) in &p.release {
        match change {
            Some(s) => st.release.insert(ip.clone(), *s),
            None => st.release.remove(ip),
        };
    }
    let mut enis = st.enis.clone();
    for step in &p.steps {
        match step {
            Step::CreateEni {
                subnet_id,
                device_index,
                ips,
                ..
            } => {
                let mut e = mk_eni(&format!("eni-{device_index}"), *device_index, 0, 0);
                e.subnet_id = subnet_id.clone();
                for _ in 0..*ips {
                    *next_ip += 1;
                    e.addresses
                        .push(format!("10.9.{}.{}", *next_ip / 250, *next_ip % 250));
                }
                enis.push(e);
            }
            Step::AssignIps { eni_id, count } => {
                let e = enis.iter_mut().find(|e| &e.id == eni_id).unwrap();
                for _ in 0..*count {
                    *next_ip += 1;
                    e.addresses
                        .push(format!("10.9.{}.{}", *next_ip / 250, *next_ip % 250));
                }
            }
            Step::UnassignIps { eni_id, ips } => {
                let e = enis.iter_mut().find(|e| &e.id == eni_id).unwrap();
                let gone: BTreeSet<String> = ips.iter().map(|i| i.to_string()).collect();
                e.addresses.retain(|a| !gone.contains(a));
                for ip in gone {
                    st.release.insert(ip, ReleaseState::Released);
                }
            }
        }
    }
    apply_enis(&mut st, enis, 1);
    agent_answers(st)
}

/// The agent's turn on `status`: the real node IPAM, long past any cooldown.
fn agent_answers(status: NodeNetworkStatus) -> NodeNetworkStatus {
    use sextant_agent_core::{
        node::LocalIpam,
        pool::{Allocation, DEFAULT_COOLDOWN_MS, Pool},
    };
    const NOW_MS: u64 = 10 * DEFAULT_COOLDOWN_MS;
    let mut pool = Pool::new(DEFAULT_COOLDOWN_MS);
    let used = status.usage.iter().flat_map(|u| u.used.keys());
    pool.restore(
        used.filter_map(|ip| {
            Some(Allocation {
                ip: ip.parse().ok()?,
                container_id: format!("c-{ip}"),
                ifname: "eth0".into(),
                netns: String::new(),
                pod_namespace: "default".into(),
                pod_name: format!("pod-{ip}"),
                since: String::new(),
            })
        }),
        [],
        [],
    );
    let mut agent = LocalIpam::new(pool);
    let mut nn = sextant_crds::NodeNetwork::new("node-a", mk_spec());
    nn.status = Some(status);
    let answers = agent.apply(&nn, NOW_MS);
    let mut doc = serde_json::to_value(&nn).expect("NodeNetwork serialises");
    if let Some(patch) = agent.report(&answers, NOW_MS, 0, "t") {
        json_patch::merge(&mut doc, &patch);
    }
    let nn: sextant_crds::NodeNetwork = serde_json::from_value(doc).expect("patched NodeNetwork");
    nn.status.unwrap_or_default()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plan_never_unassigns_a_used_or_unacknowledged_ip((status, w) in arb_node()) {
        let p = run(&mk_spec(), &status, w, &default_subnets());
        let used: BTreeSet<String> = status.usage.iter().flat_map(|u| u.used.keys().cloned()).collect();
        for step in &p.steps {
            if let Step::UnassignIps { ips, .. } = step {
                for ip in ips {
                    let ip = ip.to_string();
                    prop_assert!(!used.contains(&ip), "released used {ip}");
                    prop_assert_eq!(status.release.get(&ip), Some(&ReleaseState::ReadyForRelease));
                    prop_assert!(!matches!(p.release.get(&ip), Some(None)), "unassigning a cancelled {}", ip);
                }
            }
        }
    }

    #[test]
    fn plan_never_exceeds_instance_or_max_allocate((status, w) in arb_node()) {
        let p = run(&mk_spec(), &status, w, &default_subnets());
        let limits = m5_large();
        let mut per_eni: BTreeMap<String, u32> = status.enis.iter().map(|e| (e.id.clone(), e.addresses.len() as u32)).collect();
        let mut enis = status.enis.len() as u32;
        let mut added = 0;
        for step in &p.steps {
            match step {
                Step::CreateEni { ips, device_index, .. } => {
                    enis += 1;
                    prop_assert!(*device_index < limits.max_enis);
                    prop_assert!(*ips <= limits.secondary_per_eni());
                    added += ips;
                }
                Step::AssignIps { eni_id, count } => {
                    let n = per_eni.get_mut(eni_id).unwrap();
                    *n += count;
                    prop_assert!(*n <= limits.secondary_per_eni());
                    added += count;
                }
                Step::UnassignIps { .. } => {}
            }
        }
        prop_assert!(enis <= limits.max_enis);
        let pool = status.pool.len() as u32;
        if let Some(max) = w.max_allocate {
            prop_assert!(added == 0 || pool + added <= max, "pool {pool} + {added} > max {max}");
        }
    }

    #[test]
    fn plan_reaches_a_fixed_point_within_watermarks((status, w) in arb_node()) {
        let spec = mk_spec();
        let mut st = status;
        let mut next_ip = 0;
        let mut quiet = 0;
        for _ in 0..20 {
            let p = run(&spec, &st, w, &default_subnets());
            if p.steps.is_empty() && p.release.is_empty() {
                quiet += 1;
                if quiet == 2 { break; }
            } else {
                quiet = 0;
            }
            st = apply(&st, &p, &mut next_ip);
        }
        prop_assert_eq!(quiet, 2, "no fixed point in 20 rounds");
        // At the fixed point, unless a limit holds, the pool is within its watermarks.
        let p = run(&spec, &st, w, &default_subnets());
        let c = p.counts;
        if p.limit.is_none() {
            prop_assert!(c.available >= w.pre_allocate, "{c:?} {w:?}");
            prop_assert!(c.pool >= w.min_allocate);
        }
        let high = w.pre_allocate + w.max_above_watermark;
        prop_assert!(c.available <= high.max(w.min_allocate.saturating_sub(c.used)) || c.pool <= w.min_allocate, "{c:?} {w:?}");
    }
}

#[test]
fn capacity_counts_pod_eni_slots_and_bare_metal_cidrs() {
    use super::plan::{instance_capacity, pod_cidr_capacity};
    // m5.large: 3 ENIs of 10; device 0 is the node's: 2 x 9.
    assert_eq!(instance_capacity(&m5_large(), 1), 18);
    assert_eq!(instance_capacity(&m5_large(), 0), 27);
    assert_eq!(instance_capacity(&m5_large(), 5), 0);
    assert_eq!(
        pod_cidr_capacity(&[
            "10.1.0.0/24".into(),
            "10.2.0.0/26".into(),
            "bad".into(),
            "10.3.0.0/40".into()
        ]),
        254 + 62
    );
}

#[test]
fn fixed_ips_on_the_node_are_never_counted_free_or_marked_for_release() {
    // 9 addresses on eni-1, none used by the agent, 4 of them fixed IPs of
    // StatefulSet pods: with preAllocate 2 and nothing above, only the 5
    // ordinary ones are candidates, 3 of them excess.
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    for ip in ["10.0.1.10", "10.0.1.11", "10.0.1.12", "10.0.1.13"] {
        status.fixed_ips.insert(ip.into(), "db/web-0".into());
    }
    let p = run(&mk_spec(), &status, wm(2, 0, None, 0), &default_subnets());
    let marked: BTreeSet<&str> = p
        .release
        .iter()
        .filter(|(_, s)| **s == Some(ReleaseState::Marked))
        .map(|(ip, _)| ip.as_str())
        .collect();
    assert_eq!(marked.len(), 3, "{marked:?}");
    assert!(marked.iter().all(|ip| !status.fixed_ips.contains_key(*ip)));
    // And an agent's ready-for-release on a fixed IP is cancelled, not unassigned.
    status
        .release
        .insert("10.0.1.10".into(), ReleaseState::ReadyForRelease);
    let p = run(&mk_spec(), &status, wm(2, 0, None, 0), &default_subnets());
    assert_eq!(p.release.get("10.0.1.10"), Some(&None));
    assert!(
        !p.steps
            .iter()
            .any(|s| matches!(s, Step::UnassignIps { .. }))
    );
}

// ---- the release handshake stays bounded (issue 14, defect 1) ----

fn run_with_released(
    status: &NodeNetworkStatus,
    w: Watermarks,
    released_since: &BTreeMap<String, Timestamp>,
    bound: ReleasedBound,
) -> Plan {
    let limits = m5_large();
    plan(&PlanInput {
        spec: &mk_spec(),
        status,
        watermarks: w,
        limits: &limits,
        subnets: &default_subnets(),
        security_groups: &[],
        now: now(),
        released_since,
        released_bound: bound,
    })
}

#[test]
fn a_released_entry_for_an_address_back_in_the_pool_is_cleared_and_not_counted_available() {
    // The cloud gave 10.0.1.18 back to this node's ENI; its old `released`
    // entry makes the agent withhold it.
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    status
        .release
        .insert("10.0.1.18".into(), ReleaseState::Released);
    let p = run(&mk_spec(), &status, wm(8, 0, None, 8), &default_subnets());
    assert_eq!(
        p.release.get("10.0.1.18"),
        Some(&None),
        "the stale entry is removed in this plan's write: {:?}",
        p.release
    );
    assert_eq!(
        p.counts.available, 8,
        "withheld by the agent while the entry exists, so not available: {:?}",
        p.counts
    );
    assert_eq!(p.cleanup.returned, 1);
}

#[test]
fn an_address_assigned_again_clears_its_stale_release_entry_in_the_same_write() {
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 8)], &[]);
    // 10.0.1.18 was unassigned and recorded released; 10.0.1.19 ready but gone.
    status
        .release
        .insert("10.0.1.18".into(), ReleaseState::Released);
    status
        .release
        .insert("10.0.1.19".into(), ReleaseState::ReadyForRelease);
    status
        .release
        .insert("10.0.1.12".into(), ReleaseState::ReadyForRelease);
    // An assign hands both back to the same ENI.
    let again = mk_eni("eni-1", 1, 10, 10);
    apply_enis(&mut status, vec![mk_eni("eni-primary", 0, 1, 0), again], 1);
    assert!(status.pool.contains_key("10.0.1.18"));
    assert_eq!(
        status.release.get("10.0.1.18"),
        None,
        "an address back in the pool keeps no released entry: {:?}",
        status.release
    );
    assert_eq!(status.release.get("10.0.1.19"), None);
    assert_eq!(
        status.release.get("10.0.1.12"),
        Some(&ReleaseState::ReadyForRelease),
        "an address that never left the pool keeps its handshake"
    );
}

#[test]
fn released_entries_the_agent_never_removes_are_dropped_after_the_ttl() {
    let status = {
        let mut st = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
        for i in 1..=3 {
            st.release
                .insert(format!("10.0.9.{i}"), ReleaseState::Released);
        }
        st
    };
    let bound = ReleasedBound {
        ttl: std::time::Duration::from_secs(600),
        max: 64,
    };
    let seen: BTreeMap<String, Timestamp> = [
        ("10.0.9.1", "2026-11-25T11:40:00Z"), // 20 minutes: stale
        ("10.0.9.2", "2026-11-25T11:50:00Z"), // exactly the TTL: stale
        ("10.0.9.3", "2026-11-25T11:59:00Z"), // a minute: the agent may still answer
    ]
    .into_iter()
    .map(|(ip, t)| (ip.to_string(), t.parse().unwrap()))
    .collect();
    let p = run_with_released(&status, wm(2, 0, None, 7), &seen, bound);
    assert_eq!(p.release.get("10.0.9.1"), Some(&None), "{:?}", p.release);
    assert_eq!(p.release.get("10.0.9.2"), Some(&None), "{:?}", p.release);
    assert!(!p.release.contains_key("10.0.9.3"), "{:?}", p.release);
    assert_eq!(p.cleanup.stale, 2);
}

#[test]
fn released_entries_beyond_the_count_bound_are_dropped_oldest_first() {
    let mut status = mk_status(vec![mk_eni("eni-1", 1, 10, 9)], &[]);
    let mut seen = BTreeMap::new();
    for i in 1..=10u8 {
        let ip = format!("10.0.9.{i}");
        status.release.insert(ip.clone(), ReleaseState::Released);
        // .1 is the oldest, all within the TTL.
        let t: Timestamp = format!("2026-11-25T11:59:{i:02}Z").parse().unwrap();
        seen.insert(ip, t);
    }
    let bound = ReleasedBound {
        ttl: std::time::Duration::from_secs(600),
        max: 4,
    };
    let p = run_with_released(&status, wm(2, 0, None, 7), &seen, bound);
    let dropped: Vec<&str> = p
        .release
        .iter()
        .filter(|(_, c)| c.is_none())
        .map(|(ip, _)| ip.as_str())
        .collect();
    assert_eq!(
        dropped,
        [
            "10.0.9.1", "10.0.9.2", "10.0.9.3", "10.0.9.4", "10.0.9.5", "10.0.9.6"
        ]
    );
    assert_eq!(p.cleanup.stale, 6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the handshake holds, an address the agent withholds
    /// (`marked`, `ready-for-release`, `released`) is never counted
    /// available, and after a plan no `released` entry of a pooled address
    /// survives.
    #[test]
    fn withheld_addresses_are_never_counted_available((mut status, w) in arb_node(), rel in proptest::collection::vec(0u8..3, 18)) {
        let ips: Vec<String> = status.pool.keys().cloned().collect();
        for (ip, r) in ips.iter().zip(&rel) {
            if *r == 1 {
                status.release.insert(ip.clone(), ReleaseState::Released);
            }
        }
        let p = run(&mk_spec(), &status, w, &default_subnets());
        let held: BTreeSet<&String> = status.usage.iter().flat_map(|u| u.used.keys()).collect();
        let free = status.pool.keys().filter(|ip| {
            !held.contains(ip) && !status.fixed_ips.contains_key(*ip)
                && !matches!(status.release.get(*ip), Some(ReleaseState::Marked | ReleaseState::ReadyForRelease | ReleaseState::Released))
        }).count() as u32;
        prop_assert_eq!(p.counts.available, free);
        for (ip, st) in &status.release {
            if *st == ReleaseState::Released && status.pool.contains_key(ip) {
                prop_assert_eq!(p.release.get(ip), Some(&None));
            }
        }
    }
}

#[test]
fn a_call_made_anyway_fills_the_pool_to_the_high_watermark() {
    // 2 addresses, both used; preAllocate 2, maxAboveWatermark 4: 2 are
    // owed, and the same call takes 4 more (before: exactly 2, and the next
    // pods or cooling addresses cost another call).
    let status = mk_status(vec![mk_eni("eni-1", 1, 10, 2)], &["10.0.1.10", "10.0.1.11"]);
    let p = run(&mk_spec(), &status, wm(2, 0, None, 4), &default_subnets());
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-1".into(),
            count: 6
        }]
    );
    assert_eq!((p.limit, p.counts.unmet), (None, 0));
}

#[test]
fn a_new_nodes_first_eni_carries_the_headroom_up_to_the_eni_limit() {
    // m5.large: 9 secondaries per ENI; 8 owed + 8 headroom -> one full ENI
    // (before: 8, then an assign of one more on the next deficit).
    let p = run(
        &mk_spec(),
        &mk_status(vec![], &[]),
        wm(8, 0, None, 8),
        &default_subnets(),
    );
    assert_eq!(
        p.steps,
        vec![Step::CreateEni {
            subnet_id: "s1".into(),
            security_groups: vec!["sg-primary".into()],
            device_index: 1,
            ips: 9,
        }]
    );
    assert_eq!((p.limit, p.counts.unmet), (None, 0));
}

#[test]
fn headroom_alone_never_creates_an_eni_nor_reports_a_limit() {
    // eni-1 has room for 3; 2 are owed, 4 would be headroom: one assign of
    // 3, no second ENI for headroom, no limit.
    let status = mk_status(
        vec![mk_eni("eni-1", 1, 10, 6)],
        &[
            "10.0.1.10",
            "10.0.1.11",
            "10.0.1.12",
            "10.0.1.13",
            "10.0.1.14",
            "10.0.1.15",
        ],
    );
    let p = run(&mk_spec(), &status, wm(2, 0, None, 4), &default_subnets());
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-1".into(),
            count: 3
        }]
    );
    assert_eq!((p.limit, p.counts.unmet), (None, 0));
    // With maxAllocate 8 the headroom stops at the cap, silently.
    let p = run(
        &mk_spec(),
        &status,
        wm(2, 0, Some(8), 4),
        &default_subnets(),
    );
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-1".into(),
            count: 2
        }]
    );
    assert_eq!((p.limit, p.counts.unmet), (None, 0));
}

#[test]
fn first_interface_index_zero_fills_the_primary_eni_before_creating_one() {
    let mut spec = mk_spec();
    spec.ipam.first_interface_index = Some(0);
    let p = run(
        &spec,
        &mk_status(vec![], &[]),
        wm(8, 0, None, 0),
        &default_subnets(),
    );
    assert_eq!(
        p.steps,
        vec![Step::AssignIps {
            eni_id: "eni-primary".into(),
            count: 8
        }]
    );
    // Past the primary's 9 secondaries, a pod ENI at index 1 takes the rest.
    let p = run(
        &spec,
        &mk_status(vec![], &[]),
        wm(12, 0, None, 0),
        &default_subnets(),
    );
    assert_eq!(
        p.steps,
        vec![
            Step::AssignIps {
                eni_id: "eni-primary".into(),
                count: 9
            },
            Step::CreateEni {
                subnet_id: "s1".into(),
                security_groups: vec!["sg-primary".into()],
                device_index: 1,
                ips: 3,
            },
        ]
    );
}
