use sextant_crds::wellknown::ANNOTATION_FIXED_IP;

use super::*;
use sextant_crds::testing::{mk_fixed_ip, mk_node_network, mk_static_node_network};

use crate::fixtures::{mk_index, mk_pod};

fn plain() -> PodRef {
    PodRef::from_pod(&mk_pod("db", "client-7f9c")).expect("pod has a name")
}

fn web3() -> PodRef {
    PodRef::from_pod(&mk_pod("db", "web-3")).expect("pod has a name")
}

fn why<'a>(out: &'a FilterOutcome, node: &str) -> &'a str {
    out.reason(node).unwrap_or("<passed>")
}

fn passed<'a>(out: &FilterOutcome, nodes: &[&'a str]) -> Vec<&'a str> {
    out.passed.iter().map(|&i| nodes[i]).collect()
}

const IP: &str = "10.1.7.7";

#[test]
fn plain_pods_pass_nodes_with_ip_headroom_and_nodes_without_node_network() {
    let index = mk_index(
        &[
            mk_node_network("a", "z1").usage(3, 0).build(),
            mk_node_network("b", "z2").build(),
        ],
        &[],
    );
    let nodes = ["a", "b", "no-nn"];
    let out = filter(&index, &plain(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["a", "b", "no-nn"]);
    assert!(out.failed.is_empty() && out.unresolvable.is_empty());
}

#[test]
fn plain_pods_stay_off_nodes_whose_ips_are_used_up_counting_pending_requests() {
    let index = mk_index(
        &[
            mk_node_network("full", "z1").usage(18, 0).build(),
            mk_node_network("pending", "z1").usage(16, 2).build(),
            mk_node_network("one-left", "z1").usage(16, 1).build(),
        ],
        &[],
    );
    let nodes = ["full", "pending", "one-left"];
    let out = filter(&index, &plain(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["one-left"]);
    assert_eq!(
        why(&out, "full"),
        "sextant: no pod IP left (18 used + 0 pending >= capacity 18)"
    );
    assert!(out.failed["pending"].contains("16 used + 2 pending"));
    // Preempting a pod frees its IP: kube-scheduler may still preempt here.
    assert!(out.unresolvable.is_empty());
}

#[test]
fn unknown_capacity_never_filters_a_plain_pod() {
    let index = mk_index(
        &[
            mk_node_network("new", "z1")
                .limits(0, 0, 0)
                .usage(40, 5)
                .build(),
            mk_node_network("fresh", "z1").no_status().build(),
        ],
        &[],
    );
    let nodes = ["new", "fresh"];
    let out = filter(&index, &plain(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["new", "fresh"]);
}

#[test]
fn summary_used_counts_when_the_agent_has_not_reported() {
    let mut nn = mk_node_network("a", "z1").build();
    if let Some(s) = nn.status.as_mut().and_then(|s| s.summary.as_mut()) {
        s.used = 18;
    }
    let index = mk_index(&[nn], &[]);
    let out = filter(&index, &plain(), &["a"]).expect("decides");
    assert!(out.passed.is_empty());
}

#[test]
fn fixed_ip_pod_goes_back_to_the_node_holding_its_address_even_when_that_node_is_full() {
    let index = mk_index(
        &[
            mk_node_network("holder", "z1")
                .eni("eni-h", "subnet-a", 1, &[IP, "10.1.7.8"])
                .usage(18, 0)
                .build(),
            mk_node_network("other-full", "z1").usage(18, 0).build(),
        ],
        &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")],
    );
    let nodes = ["holder", "other-full"];
    let out = filter(&index, &web3(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["holder"]);
    assert!(why(&out, "other-full").contains("no pod IP left"));
}

#[test]
fn an_address_in_the_fixed_ips_map_counts_as_held() {
    let index = mk_index(
        &[mk_node_network("a", "z1")
            .limits(3, 10, 18)
            .fixed(IP, "db/web-3")
            .usage(18, 0)
            .build()],
        &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")],
    );
    let out = filter(&index, &web3(), &["a"]).expect("decides");
    assert_eq!(out.passed, [0]);
}

#[test]
fn fixed_ip_pod_stays_in_its_zone_and_preemption_cannot_change_that() {
    let index = mk_index(
        &[
            mk_node_network("z1-node", "z1").build(),
            mk_node_network("z2-node", "z2").build(),
        ],
        &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")],
    );
    let nodes = ["z1-node", "z2-node"];
    let out = filter(&index, &web3(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["z1-node"]);
    let reason = "sextant: fixed IP 10.1.7.7 lives in zone z1, node is in zone z2";
    assert_eq!(out.unresolvable["z2-node"], reason);
    // One map per node: kube-scheduler reads the unresolvable one first.
    assert!(!out.failed.contains_key("z2-node"));
}

#[test]
fn a_node_of_unknown_zone_cannot_take_a_zoned_fixed_ip() {
    let mut nn = mk_node_network("a", "z1").build();
    nn.spec.zone = None;
    let index = mk_index(&[nn], &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")]);
    let out = filter(&index, &web3(), &["a"]).expect("decides");
    assert!(why(&out, "a").contains("node is in zone <unknown>"));
}

#[test]
fn fixed_ip_pod_needs_an_eni_of_its_subnet_with_room_or_a_free_eni_slot() {
    // 3 ENIs x 10 IPv4: a pod ENI takes 9 secondary addresses.
    let room = mk_node_network("room", "z1")
        .eni_with("eni-1", "subnet-a", 1, 8)
        .eni_with("eni-2", "subnet-b", 2, 9)
        .build();
    let eni_full = mk_node_network("eni-full", "z1")
        .eni_with("eni-1", "subnet-a", 1, 9)
        .eni_with("eni-2", "subnet-b", 2, 1)
        .build();
    let other_subnet = mk_node_network("other-subnet", "z1")
        .eni_with("eni-1", "subnet-b", 1, 1)
        .eni_with("eni-2", "subnet-c", 2, 1)
        .build();
    let free_slot = mk_node_network("free-slot", "z1")
        .eni_with("eni-1", "subnet-b", 1, 9)
        .build();
    let index = mk_index(
        &[room, eni_full, other_subnet, free_slot],
        &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")],
    );
    let nodes = ["room", "eni-full", "other-subnet", "free-slot"];
    let out = filter(&index, &web3(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["room", "free-slot"]);
    assert_eq!(
        why(&out, "eni-full"),
        "sextant: fixed IP 10.1.7.7 cannot be attached: no pod ENI in subnet subnet-a with a free address slot and no free ENI slot (2 pod ENIs, instance allows 3 ENIs x 10 IPv4)"
    );
    assert!(out.unresolvable.contains_key("other-subnet"));
}

#[test]
fn primary_and_excluded_enis_never_take_a_fixed_ip() {
    // The primary ENI (device 0) is in subnet-node; an excluded ENI in subnet-a.
    let index = mk_index(
        &[mk_node_network("a", "z1")
            .eni_with("eni-x", "subnet-a", 1, 1)
            .excluded()
            .eni_with("eni-2", "subnet-b", 2, 9)
            .build()],
        &[
            mk_fixed_ip("db", "web-3", IP, "z1", "subnet-node"),
            mk_fixed_ip("db", "web-4", "10.1.7.9", "z1", "subnet-a"),
        ],
    );
    for pod in ["web-3", "web-4"] {
        let pod = PodRef::from_pod(&mk_pod("db", pod)).expect("named");
        let out = filter(&index, &pod, &["a"]).expect("decides");
        assert!(why(&out, "a").contains("cannot be attached"), "{out:?}");
    }
}

#[test]
fn a_fixed_ip_needs_known_eni_limits_on_a_cloud_node() {
    let index = mk_index(
        &[mk_node_network("a", "z1").limits(0, 0, 0).build()],
        &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")],
    );
    let out = filter(&index, &web3(), &["a"]).expect("decides");
    assert!(why(&out, "a").contains("ENI limits are not known"));
}

#[test]
fn fixed_ip_pod_fails_nodes_without_node_network() {
    let index = mk_index(&[], &[mk_fixed_ip("db", "web-3", IP, "z1", "subnet-a")]);
    let out = filter(&index, &web3(), &["bare"]).expect("decides");
    assert_eq!(
        out.unresolvable["bare"],
        "sextant: fixed IP 10.1.7.7 cannot be attached: node has no NodeNetwork"
    );
}

#[test]
fn on_bare_metal_only_the_node_whose_pod_cidr_contains_the_address_passes() {
    let index = mk_index(
        &[
            mk_static_node_network("rack1-a", "10.1.7.0/24", 254).build(),
            mk_static_node_network("rack1-b", "10.1.8.0/24", 254).build(),
        ],
        &[mk_fixed_ip("db", "web-3", IP, "", "")],
    );
    let nodes = ["rack1-a", "rack1-b"];
    let out = filter(&index, &web3(), &nodes).expect("decides");
    assert_eq!(passed(&out, &nodes), ["rack1-a"]);
    assert_eq!(
        out.unresolvable["rack1-b"],
        "sextant: fixed IP 10.1.7.7 is not in this bare-metal node's pod CIDRs"
    );
}

#[test]
fn a_bare_metal_node_owning_the_address_but_out_of_ips_is_filtered() {
    let index = mk_index(
        &[mk_static_node_network("rack1-a", "10.1.7.0/24", 254)
            .usage(254, 0)
            .build()],
        &[mk_fixed_ip("db", "web-3", IP, "", "")],
    );
    let out = filter(&index, &web3(), &["rack1-a"]).expect("decides");
    assert!(why(&out, "rack1-a").contains("no pod IP left"));
}

#[test]
fn a_fixed_ip_of_another_namespace_does_not_apply() {
    let index = mk_index(
        &[mk_node_network("z2-node", "z2").build()],
        &[mk_fixed_ip("other", "web-3", IP, "z1", "subnet-a")],
    );
    let out = filter(&index, &web3(), &["z2-node"]).expect("decides");
    assert_eq!(out.passed, [0]);
}

#[test]
fn an_index_still_listing_answers_an_error_not_a_guess() {
    let mut index = crate::index::Index::default();
    index.reset_nodes(&[mk_node_network("a", "z1").build()]);
    let err = filter(&index, &plain(), &["a"]).expect_err("not synced");
    assert_eq!(
        err.to_string(),
        "index not synced yet: still listing FixedIPs (watches started, no full list yet)"
    );
}

#[test]
fn an_annotated_pod_without_fixed_ip_is_an_error_so_scheduling_retries() {
    let index = mk_index(&[mk_node_network("a", "z1").build()], &[]);
    let mut pod = mk_pod("db", "web-3");
    pod.metadata.annotations = Some([(ANNOTATION_FIXED_IP.to_owned(), "true".to_owned())].into());
    let pod = PodRef::from_pod(&pod).expect("named");
    let err = filter(&index, &pod, &["a"]).expect_err("lookup fails");
    assert_eq!(err.metric_label(), "fixed_ip_missing");
    assert!(
        err.to_string()
            .contains("FixedIP db/web-3 does not exist yet")
    );
}

#[test]
fn a_fixed_ip_with_a_bad_address_is_an_error() {
    let index = mk_index(
        &[mk_node_network("a", "z1").build()],
        &[mk_fixed_ip("db", "web-3", "10.1.7", "z1", "subnet-a")],
    );
    let err = filter(&index, &web3(), &["a"]).expect_err("bad ip");
    assert_eq!(
        err.to_string(),
        "FixedIP db/web-3: spec.ip \"10.1.7\" is not an IPv4 address"
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn node_strategy() -> impl Strategy<Value = (u32, u32, usize, u32, bool, bool)> {
        // (zone, enis in subnet-a fill, used, pending, holds, capacity known)
        (
            0u32..2,
            0u32..10,
            0usize..25,
            0u32..4,
            any::<bool>(),
            any::<bool>(),
        )
    }

    proptest! {
        #[test]
        fn every_candidate_is_either_passed_or_failed_with_a_reason(
            specs in proptest::collection::vec(node_strategy(), 1..12),
            fixed in any::<bool>(),
        ) {
            let nodes: Vec<_> = specs.iter().enumerate().map(|(i, &(zone, fill, used, pending, holds, known))| {
                let mut b = mk_node_network(&format!("n{i}"), &format!("z{zone}"))
                    .eni_with("eni-1", "subnet-a", 1, fill as usize)
                    .usage(used, pending);
                if holds { b = b.fixed(IP, "db/web-3"); }
                if !known { b = b.limits(3, 10, 0); }
                b.build()
            }).collect();
            let fips = if fixed { vec![mk_fixed_ip("db", "web-3", IP, "z0", "subnet-a")] } else { vec![] };
            let index = mk_index(&nodes, &fips);
            let names: Vec<String> = (0..specs.len()).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let out = filter(&index, &web3(), &refs).expect("decides");
            prop_assert_eq!(out.passed.len() + out.failed.len() + out.unresolvable.len(), refs.len());
            for name in out.unresolvable.keys() {
                prop_assert!(!out.failed.contains_key(name), "{} in both maps", name);
            }
            for &i in &out.passed {
                let (zone, _, used, pending, holds, known) = specs[i];
                if fixed {
                    prop_assert!(holds || zone == 0, "a fixed-IP pod left its zone");
                }
                if !(fixed && holds) && known {
                    prop_assert!((used as u32) + pending < 18, "a full node passed");
                }
            }
        }
    }
}
