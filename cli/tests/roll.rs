//! The fixed-IP roll of issue 6: a 50-replica StatefulSet rolled three times
//! across 200 nodes with node failures, through the real FixedIP plan and
//! executor on the simulated cloud.

use sextantctl::roll::{RollConfig, run};

#[test]
fn a_fifty_replica_statefulset_rolled_three_times_with_node_failures_keeps_every_address() {
    let r = run(RollConfig::default(), None).expect("roll runs");
    // The scenario really happened.
    assert_eq!(r.node_failures, 15);
    assert!(r.incarnations >= 50 * 4, "incarnations {}", r.incarnations);
    assert!(
        r.steps.get("move").copied().unwrap_or(0) >= 150,
        "{:?}",
        r.steps
    );
    assert!(
        r.steps.get("park").copied().unwrap_or(0) > 0,
        "node loss parks addresses: {:?}",
        r.steps
    );
    // And every promise held.
    assert_eq!(r.address_changes, 0, "every pod kept its ordinal's address");
    assert_eq!(r.owned_twice, 0, "no address owned twice");
    assert_eq!(
        r.not_on_node, 0,
        "every running pod's address on its node's ENI"
    );
    assert_eq!(r.lost, 0, "no reserved address dropped to the subnet");
    assert_eq!(r.leaked, 0, "nothing leaked");
    assert_eq!(r.reused_after_scale_up, 5, "scale-up within the TTL reuses");
    assert_eq!(r.released_after_ttl, 5, "the TTL releases");
}

#[test]
fn other_seeds_hold_too() {
    for seed in [2, 3] {
        let r = run(
            RollConfig {
                seed,
                nodes: 60,
                replicas: 20,
                ..RollConfig::default()
            },
            None,
        )
        .expect("roll runs");
        assert!(r.is_clean(), "seed {seed}: {r:?}");
    }
}
