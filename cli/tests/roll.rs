//! The fixed-IP roll of issue 6: a 50-replica StatefulSet rolled three times
//! across 200 nodes with node failures, through the real code end to end:
//! the FixedIP plan, executor and record, node IPAM on every node, and on
//! every node the real agent's node IPAM serving the pods (issue 14).

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
    // Node IPAM and the agents really ran, with ordinary pods beside.
    assert!(r.node_ipam_reconciles > 200, "{r:?}");
    assert!(r.agent_patches > 200, "{r:?}");
    assert!(r.ordinary_pods > 0, "{r:?}");
    assert!(
        r.sts_pods_checked >= 50 * 150,
        "every audit checked the running pods against their agents: {}",
        r.sts_pods_checked
    );
    // And every promise held.
    assert_eq!(r.address_changes, 0, "every pod kept its ordinal's address");
    assert_eq!(
        r.without_address, 0,
        "every StatefulSet pod got its address from its agent"
    );
    assert_eq!(r.owned_twice, 0, "no address on two ENIs");
    assert_eq!(r.held_twice, 0, "no address held by two pods");
    assert_eq!(r.in_two_pools, 0, "no address in two nodes' pools at once");
    assert_eq!(
        r.unguarded, 0,
        "no pool lists a fixed address without its fixedIps entry"
    );
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
