use super::*;
use sextant_crds::testing::{mk_fixed_ip, mk_node_network};

use crate::fixtures::{mk_index, mk_pod};

fn pod(name: &str) -> PodRef {
    PodRef::from_pod(&mk_pod("db", name)).expect("named")
}

fn scores(list: &[HostPriority]) -> Vec<(&str, i64)> {
    list.iter().map(|h| (h.host.as_str(), h.score)).collect()
}

#[test]
fn the_node_holding_the_fixed_address_scores_highest() {
    let index = mk_index(
        &[
            mk_node_network("empty", "z1").build(),
            mk_node_network("holder", "z1")
                .fixed("10.1.7.7", "db/web-3")
                .usage(17, 0)
                .build(),
        ],
        &[mk_fixed_ip("db", "web-3", "10.1.7.7", "z1", "subnet-a")],
    );
    let out = prioritize(&index, &pod("web-3"), &["empty", "holder"]).expect("scores");
    assert_eq!(
        scores(&out),
        [("empty", 9), ("holder", MAX_EXTENDER_PRIORITY)]
    );
}

#[test]
fn other_nodes_rank_by_free_ip_headroom() {
    let index = mk_index(
        &[
            mk_node_network("empty", "z1").build(),
            mk_node_network("half", "z1").usage(8, 1).build(),
            mk_node_network("full", "z1").usage(18, 0).build(),
            mk_node_network("unknown", "z1").limits(0, 0, 0).build(),
        ],
        &[],
    );
    let out = prioritize(
        &index,
        &pod("client"),
        &["empty", "half", "full", "unknown", "no-nn"],
    )
    .expect("scores");
    assert_eq!(
        scores(&out),
        [
            ("empty", 9),
            ("half", 4),
            ("full", 0),
            ("unknown", 0),
            ("no-nn", 0)
        ]
    );
}

#[test]
fn prioritize_reports_an_unsynced_index() {
    let index = crate::index::Index::default();
    let err = prioritize(&index, &pod("client"), &["a"]).expect_err("not synced");
    assert_eq!(err.metric_label(), "not_synced");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn scores_stay_in_range_and_only_the_holder_gets_the_top(
            nodes in proptest::collection::vec((0usize..30, 0u32..5, 0u32..40, any::<bool>()), 1..10),
        ) {
            let objs: Vec<_> = nodes.iter().enumerate().map(|(i, &(used, pending, cap, holds))| {
                let mut b = mk_node_network(&format!("n{i}"), "z1").usage(used, pending).limits(3, 10, cap);
                if holds { b = b.fixed("10.1.7.7", "db/web-3"); }
                b.build()
            }).collect();
            let index = mk_index(&objs, &[mk_fixed_ip("db", "web-3", "10.1.7.7", "z1", "subnet-a")]);
            let names: Vec<String> = (0..nodes.len()).map(|i| format!("n{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let out = prioritize(&index, &pod("web-3"), &refs).expect("scores");
            for (h, &(_, _, _, holds)) in out.iter().zip(&nodes) {
                prop_assert!((MIN_EXTENDER_PRIORITY..=MAX_EXTENDER_PRIORITY).contains(&h.score));
                prop_assert_eq!(h.score == MAX_EXTENDER_PRIORITY, holds);
            }
        }
    }
}
