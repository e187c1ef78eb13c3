//! Fixed-IP plan tests: reservation, moves, retention and release by TTL,
//! reuse on scale-up, UID changes, bare metal; then the executor against the
//! simulated cloud.

use std::collections::BTreeMap;

use jiff::Timestamp;
use sextant_cloud::{Subnet, Tags};
use sextant_crds::{FixedIP, FixedIPPhase, FixedIPSpec, FixedIPStatus, Provider, ReclaimPolicy};

use super::plan::{FixedIpInput, NodeView, PodView, StatefulSetView, Step, in_cidrs, plan};

fn now() -> Timestamp {
    "2026-11-25T12:00:00Z".parse().unwrap()
}

fn sts(replicas: u32, reclaim: ReclaimPolicy) -> StatefulSetView {
    StatefulSetView {
        namespace: "db".into(),
        name: "web".into(),
        replicas,
        reclaim,
        ttl_seconds: Some(600),
        subnet_ids: vec![],
    }
}

fn subnets() -> Vec<Subnet> {
    vec![
        Subnet {
            id: "s-a".into(),
            vpc_id: "vpc".into(),
            zone: "a".into(),
            cidr: "10.1.0.0/16".into(),
            available_ips: 100,
            tags: Tags::new(),
        },
        Subnet {
            id: "s-b".into(),
            vpc_id: "vpc".into(),
            zone: "b".into(),
            cidr: "10.2.0.0/16".into(),
            available_ips: 500,
            tags: Tags::new(),
        },
    ]
}

fn node(zone: &str, enis: &[(&str, &str)], free_slot: bool) -> NodeView {
    NodeView {
        zone: Some(zone.into()),
        provider: Provider::Aws,
        instance_id: Some(format!("i-{zone}")),
        eni_by_subnet: enis
            .iter()
            .map(|(s, e)| (s.to_string(), e.to_string()))
            .collect(),
        free_device_index: free_slot.then_some(2),
        pod_cidrs: vec![],
    }
}

fn nodes() -> BTreeMap<String, NodeView> {
    BTreeMap::from([
        ("n1".to_string(), node("a", &[("s-a", "eni-n1")], true)),
        ("n2".to_string(), node("a", &[("s-a", "eni-n2")], false)),
        ("n3".to_string(), node("a", &[], true)),
        ("n4".to_string(), node("a", &[], false)),
        ("nb".to_string(), node("b", &[("s-b", "eni-nb")], true)),
    ])
}

fn fip(ordinal: u32, ip: &str, status: FixedIPStatus, reclaim: ReclaimPolicy) -> FixedIP {
    let mut f = FixedIP::new(
        &format!("web-{ordinal}"),
        FixedIPSpec {
            ip: ip.into(),
            stateful_set: "web".into(),
            ordinal,
            zone: Some("a".into()),
            subnet_id: Some("s-a".into()),
            reclaim_policy: reclaim,
            ttl_seconds: (reclaim == ReclaimPolicy::Retain).then_some(600),
        },
    );
    f.metadata.namespace = Some("db".into());
    f.status = Some(status);
    f
}

fn bound(node: &str, eni: &str, uid: &str) -> FixedIPStatus {
    FixedIPStatus {
        phase: Some(FixedIPPhase::Bound),
        node: Some(node.into()),
        eni: Some(eni.into()),
        pod_uid: Some(uid.into()),
        ..FixedIPStatus::default()
    }
}

fn pod(ordinal: u32, node: Option<&str>, uid: &str) -> PodView {
    PodView {
        name: format!("web-{ordinal}"),
        ordinal,
        node: node.map(str::to_owned),
        uid: uid.into(),
    }
}

/// Steps about one pod only.
fn about(pod: &str, steps: Vec<Step>) -> Vec<Step> {
    steps
        .into_iter()
        .filter(|s| match s {
            Step::Reserve { pod: p, .. }
            | Step::Move { pod: p, .. }
            | Step::Park { pod: p, .. }
            | Step::Release { pod: p, .. }
            | Step::Status { pod: p, .. }
            | Step::Blocked { pod: p, .. } => p == pod,
        })
        .collect()
}

fn run(
    sts: Option<&StatefulSetView>,
    fixed: &[FixedIP],
    pods: &[PodView],
    at: Timestamp,
) -> Vec<Step> {
    let nodes = nodes();
    let subnets = subnets();
    plan(&FixedIpInput {
        namespace: "db",
        name: "web",
        statefulset: sts,
        fixed,
        pods,
        nodes: &nodes,
        subnets: &subnets,
        now: at,
    })
}

#[test]
fn a_new_ordinal_reserves_in_the_zone_of_its_node_preferring_a_subnet_the_node_has_an_eni_in() {
    let s = sts(2, ReclaimPolicy::Retain);
    // web-0 already scheduled on n1 (zone a): s-a although s-b has more free.
    // web-1 not scheduled: the subnet with most free addresses.
    let steps = run(Some(&s), &[], &[pod(0, Some("n1"), "u0")], now());
    assert_eq!(
        steps,
        vec![
            Step::Reserve {
                pod: "web-0".into(),
                ordinal: 0,
                subnet_id: "s-a".into(),
                zone: "a".into()
            },
            Step::Reserve {
                pod: "web-1".into(),
                ordinal: 1,
                subnet_id: "s-b".into(),
                zone: "b".into()
            },
        ]
    );
}

#[test]
fn the_annotated_subnets_bound_the_reservation() {
    let mut s = sts(1, ReclaimPolicy::Retain);
    s.subnet_ids = vec!["s-a".into()];
    let steps = run(Some(&s), &[], &[], now());
    assert!(matches!(&steps[..], [Step::Reserve { subnet_id, .. }] if subnet_id == "s-a"));
}

#[test]
fn a_rescheduled_pod_takes_its_address_to_the_new_nodes_eni_in_the_subnet() {
    let s = sts(1, ReclaimPolicy::Retain);
    let f = fip(
        0,
        "10.1.0.7",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Retain,
    );
    let steps = run(Some(&s), &[f], &[pod(0, Some("n2"), "u1")], now());
    assert_eq!(
        steps,
        vec![Step::Move {
            pod: "web-0".into(),
            ip: "10.1.0.7".parse().unwrap(),
            subnet_id: "s-a".into(),
            node: "n2".into(),
            eni: Some("eni-n2".into()),
        }]
    );
}

#[test]
fn a_node_without_an_eni_in_the_subnet_gets_one_when_a_slot_is_free_else_the_pod_is_blocked() {
    let s = sts(1, ReclaimPolicy::Retain);
    let f = fip(
        0,
        "10.1.0.7",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Retain,
    );
    let steps = run(
        Some(&s),
        std::slice::from_ref(&f),
        &[pod(0, Some("n3"), "u1")],
        now(),
    );
    assert!(matches!(&steps[..], [Step::Move { node, eni: None, .. }] if node == "n3"));
    let steps = run(
        Some(&s),
        std::slice::from_ref(&f),
        &[pod(0, Some("n4"), "u1")],
        now(),
    );
    assert!(
        matches!(&steps[..], [Step::Blocked { message, .. }] if message.contains("no free ENI slot"))
    );
    // Another zone never takes it.
    let steps = run(Some(&s), &[f], &[pod(0, Some("nb"), "u1")], now());
    assert!(matches!(&steps[..], [Step::Blocked { message, .. }] if message.contains("zone")));
}

#[test]
fn a_restarted_pod_with_a_new_uid_on_the_same_node_keeps_its_address_and_only_records_the_uid() {
    let s = sts(1, ReclaimPolicy::Delete);
    let f = fip(
        0,
        "10.1.0.7",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Delete,
    );
    let steps = run(
        Some(&s),
        std::slice::from_ref(&f),
        &[pod(0, Some("n1"), "u-new")],
        now(),
    );
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(matches!(
        &steps[0],
        Step::Status { phase: FixedIPPhase::Bound, pod_uid: Some(uid), .. } if uid == "u-new"
    ));
    // Same UID, same node: nothing at all.
    assert!(run(Some(&s), &[f], &[pod(0, Some("n1"), "u0")], now()).is_empty());
}

#[test]
fn a_pod_between_incarnations_leaves_its_address_where_it_is() {
    let s = sts(1, ReclaimPolicy::Delete);
    let f = fip(
        0,
        "10.1.0.7",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Delete,
    );
    let steps = run(Some(&s), &[f], &[], now());
    // Reserved, still on n1's ENI: no cloud call, never released while wanted.
    assert!(matches!(
        &steps[..],
        [Step::Status {
            phase: FixedIPPhase::Reserved,
            release_after: None,
            ..
        }]
    ));
}

#[test]
fn the_address_of_a_lost_node_is_parked_so_garbage_collection_cannot_free_it() {
    let s = sts(1, ReclaimPolicy::Retain);
    let f = fip(
        0,
        "10.1.0.7",
        bound("gone", "eni-gone", "u0"),
        ReclaimPolicy::Retain,
    );
    let steps = run(Some(&s), &[f], &[], now());
    assert!(matches!(&steps[0], Step::Park { ip, .. } if ip.to_string() == "10.1.0.7"));
}

#[test]
fn scale_down_retains_for_the_ttl_then_releases_and_scale_up_within_it_reuses() {
    let one = sts(1, ReclaimPolicy::Retain);
    let f1 = fip(
        1,
        "10.1.0.8",
        bound("n1", "eni-n1", "u1"),
        ReclaimPolicy::Retain,
    );
    // Scaled to 1: web-1 is unwanted; its pod is gone.
    let steps = about(
        "web-1",
        run(Some(&one), std::slice::from_ref(&f1), &[], now()),
    );
    let release_at = match &steps[..] {
        [
            Step::Status {
                phase: FixedIPPhase::Reserved,
                release_after: Some(t),
                ..
            },
        ] => *t,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        release_at,
        "2026-11-25T12:10:00Z".parse::<Timestamp>().unwrap()
    );
    let mut retained = f1.clone();
    if let Some(st) = retained.status.as_mut() {
        st.phase = Some(FixedIPPhase::Reserved);
        st.release_after = Some(release_at.to_string());
    }
    // Before the TTL: nothing.
    let before: Timestamp = "2026-11-25T12:09:59Z".parse().unwrap();
    assert!(about("web-1", run(Some(&one), &[retained.clone()], &[], before)).is_empty());
    // Scale-up within it: same address, the timer cleared, no new reservation.
    let two = sts(2, ReclaimPolicy::Retain);
    let steps = about(
        "web-1",
        run(
            Some(&two),
            &[retained.clone()],
            &[pod(1, Some("n2"), "u9")],
            before,
        ),
    );
    assert!(
        steps
            .iter()
            .all(|s| !matches!(s, Step::Reserve { .. } | Step::Release { .. })),
        "{steps:?}"
    );
    assert!(
        matches!(&steps[0], Step::Move { ip, node, .. } if ip.to_string() == "10.1.0.8" && node == "n2")
    );
    // After the TTL, still scaled down: released from the ENI holding it.
    let after: Timestamp = "2026-11-25T12:10:00Z".parse().unwrap();
    assert_eq!(
        about("web-1", run(Some(&one), &[retained], &[], after)),
        vec![Step::Release {
            pod: "web-1".into(),
            ip: "10.1.0.8".parse().unwrap(),
            eni: Some("eni-n1".into())
        }]
    );
}

#[test]
fn delete_policy_releases_at_once_but_never_under_a_terminating_pod() {
    let one = sts(1, ReclaimPolicy::Delete);
    let f1 = fip(
        1,
        "10.1.0.8",
        bound("n1", "eni-n1", "u1"),
        ReclaimPolicy::Delete,
    );
    assert!(
        about(
            "web-1",
            run(
                Some(&one),
                std::slice::from_ref(&f1),
                &[pod(1, Some("n1"), "u1")],
                now()
            )
        )
        .is_empty()
    );
    assert!(matches!(
        &about("web-1", run(Some(&one), &[f1], &[], now()))[..],
        [Step::Release { .. }]
    ));
}

#[test]
fn deleting_the_statefulset_releases_retained_addresses_after_the_ttl() {
    let f0 = fip(
        0,
        "10.1.0.7",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Retain,
    );
    let steps = run(None, &[f0], &[], now());
    assert!(matches!(
        &steps[..],
        [Step::Status {
            release_after: Some(_),
            ..
        }]
    ));
}

#[test]
fn bare_metal_keeps_the_pod_on_the_node_whose_pod_cidr_holds_the_address() {
    let s = sts(1, ReclaimPolicy::Retain);
    let mut f = fip(
        0,
        "10.9.1.7",
        FixedIPStatus::default(),
        ReclaimPolicy::Retain,
    );
    f.spec.zone = None;
    let mut nodes = BTreeMap::new();
    for (name, cidr) in [("bm1", "10.9.1.0/24"), ("bm2", "10.9.2.0/24")] {
        nodes.insert(
            name.to_string(),
            NodeView {
                zone: None,
                provider: Provider::Static,
                instance_id: None,
                eni_by_subnet: BTreeMap::new(),
                free_device_index: None,
                pod_cidrs: vec![cidr.into()],
            },
        );
    }
    let plan_on = |n: &str| {
        plan(&FixedIpInput {
            namespace: "db",
            name: "web",
            statefulset: Some(&s),
            fixed: std::slice::from_ref(&f),
            pods: &[pod(0, Some(n), "u0")],
            nodes: &nodes,
            subnets: &[],
            now: now(),
        })
    };
    assert!(matches!(
        &plan_on("bm1")[..],
        [Step::Status { phase: FixedIPPhase::Bound, node: Some(n), .. }] if n == "bm1"
    ));
    assert!(
        matches!(&plan_on("bm2")[..], [Step::Blocked { message, .. }] if message.contains("pod CIDRs"))
    );
    assert!(in_cidrs(
        "10.9.1.7".parse().unwrap(),
        &["10.9.1.0/24".into()]
    ));
    assert!(!in_cidrs(
        "10.9.1.7".parse().unwrap(),
        &["bad".into(), "10.9.1.0/40".into()]
    ));
}

#[test]
fn malformed_annotations_are_clear_errors_and_absent_ones_mean_off() {
    use super::plan::AnnotationError;
    let ann = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    assert_eq!(
        StatefulSetView::from_annotations("ns", "web", 3, &ann(&[])),
        Ok(None)
    );
    let on = StatefulSetView::from_annotations(
        "ns",
        "web",
        3,
        &ann(&[
            ("sextant.io/fixed-ip", "true"),
            ("sextant.io/fixed-ip-subnets", "s-a, s-b,"),
            ("sextant.io/fixed-ip-reclaim-policy", "Delete"),
        ]),
    )
    .unwrap()
    .unwrap();
    assert_eq!(on.subnet_ids, vec!["s-a", "s-b"]);
    assert_eq!(on.reclaim, ReclaimPolicy::Delete);
    assert_eq!(
        StatefulSetView::from_annotations(
            "ns",
            "web",
            3,
            &ann(&[
                ("sextant.io/fixed-ip", "true"),
                ("sextant.io/fixed-ip-ttl-seconds", "1h")
            ])
        ),
        Err(AnnotationError::Ttl("1h".into()))
    );
}

#[test]
fn a_fixed_ip_with_a_damaged_address_is_reported_not_acted_on() {
    let s = sts(1, ReclaimPolicy::Retain);
    let f = fip(
        0,
        "not-an-ip",
        bound("n1", "eni-n1", "u0"),
        ReclaimPolicy::Retain,
    );
    assert!(matches!(
        &run(Some(&s), &[f], &[], now())[..],
        [Step::Blocked { .. }]
    ));
}
