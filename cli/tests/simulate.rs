//! Whole flows through the simulator: the operator's real plan/execute code,
//! the simulated cloud and simulated agents.

use std::time::Duration;

use sextant_cloud::{RateLimit, RateLimits};
use sextantctl::simulate::{self, SimulateConfig, Strategy};

#[test]
fn five_hundred_nodes_with_30_percent_throttled_replies_converge_with_no_ip_owned_twice_or_leaked()
{
    let report = simulate::run(
        SimulateConfig {
            nodes: 500,
            burst: 100,
            throttle_ratio: 0.3,
            run_for: Duration::from_secs(600),
            seed: 11,
            ..SimulateConfig::default()
        },
        None,
    )
    .expect("simulation runs");
    // The faults were real: the cloud refused many calls and the client retried.
    assert!(report.throttled > 1_000, "throttled {}", report.throttled);
    assert!(report.retries > 0);
    assert_eq!(report.nodes_ready, 500, "every node reached its target");
    assert_eq!(report.pods, 500 * 30, "every pod got an address");
    assert_eq!(report.double_allocations, 0, "no IP owned twice");
    assert_eq!(report.used_ips_lost, 0, "no used IP released");
    assert_eq!(
        (report.leaked_ips, report.leaked_enis),
        (0, 0),
        "nothing leaked"
    );
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let config = SimulateConfig {
        nodes: 40,
        burst: 20,
        throttle_ratio: 0.2,
        run_for: Duration::from_secs(120),
        seed: 5,
        ..SimulateConfig::default()
    };
    let a = simulate::run(config.clone(), None).expect("first run");
    let b = simulate::run(config, None).expect("second run");
    assert_eq!(a.api_calls, b.api_calls);
    assert_eq!(a.by_action, b.by_action);
    assert_eq!(a.all_ready_after, b.all_ready_after);
}

#[test]
fn instance_scoped_resync_sends_fewer_describes_than_per_subnet_on_the_same_seed() {
    let base = SimulateConfig {
        nodes: 60,
        burst: 60,
        subnets: 10,
        run_for: Duration::from_secs(120),
        seed: 3,
        ..SimulateConfig::default()
    };
    let ours = simulate::run(
        SimulateConfig {
            strategy: Strategy::InstanceScoped,
            ..base.clone()
        },
        None,
    )
    .expect("sextant run");
    let theirs = simulate::run(
        SimulateConfig {
            strategy: Strategy::PerSubnet,
            ..base
        },
        None,
    )
    .expect("baseline run");
    let describes = |r: &simulate::Report| -> u64 {
        r.by_action
            .iter()
            .filter(|(a, _)| {
                matches!(
                    a,
                    sextant_cloud::Action::ListEnis
                        | sextant_cloud::Action::DescribeInstanceNetwork
                )
            })
            .map(|(_, n)| n)
            .sum()
    };
    assert!(ours.is_clean() && theirs.is_clean());
    assert!(
        describes(&ours) * 5 < describes(&theirs),
        "instance-scoped {} vs per-subnet {}",
        describes(&ours),
        describes(&theirs)
    );
}

/// Attaches queued behind a slow client-side limiter (as 6,000 nodes queue
/// behind EC2's 5 mutations a second): ENIs wait created-but-unattached for
/// longer than the GC's grace. The collector must not take them from under
/// the attach, and the simulation must not end with them stranded.
#[test]
fn enis_waiting_long_for_their_attach_are_neither_collected_nor_leaked() {
    let mut limits = RateLimits::aws();
    limits.mutate_other = RateLimit {
        per_second: 0.1,
        burst: 1,
    };
    let report = simulate::run(
        SimulateConfig {
            nodes: 40,
            burst: 40,
            run_for: Duration::from_secs(900),
            seed: 7,
            client_limits: Some(limits),
            ..SimulateConfig::default()
        },
        None,
    )
    .expect("simulation runs");
    assert_eq!(
        report.surfaced.get("not_found"),
        None,
        "an attach found its ENI deleted: {:?}",
        report.surfaced
    );
    assert_eq!(
        (report.leaked_ips, report.leaked_enis),
        (0, 0),
        "nothing leaked"
    );
    assert_eq!(report.double_allocations, 0);
}

/// ENI mutations (create, attach, assign) per node of a run.
fn mutations_per_node(r: &simulate::Report) -> f64 {
    use sextant_cloud::Action;
    let n: u64 = [Action::CreateEni, Action::AttachEni, Action::AssignIps]
        .iter()
        .map(|a| r.by_action.get(a).copied().unwrap_or(0))
        .sum();
    n as f64 / r.nodes as f64
}

#[test]
fn the_primary_enis_slots_save_a_create_and_an_attach_per_node() {
    let base = SimulateConfig {
        nodes: 100,
        burst: 100,
        run_for: Duration::from_secs(300),
        seed: 7,
        ..SimulateConfig::default()
    };
    let pod_enis_only = simulate::run(base.clone(), None).expect("index 1 run");
    let primary_too = simulate::run(
        SimulateConfig {
            first_interface_index: Some(0),
            ..base
        },
        None,
    )
    .expect("index 0 run");
    for r in [&pod_enis_only, &primary_too] {
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.nodes_ready, 100);
    }
    let creates = |r: &simulate::Report| {
        r.by_action
            .get(&sextant_cloud::Action::CreateEni)
            .copied()
            .unwrap_or(0)
    };
    // m5.4xlarge: 29 secondaries per ENI, 38 addresses per node.
    assert!(
        creates(&primary_too) * 2 <= creates(&pod_enis_only) + 10,
        "creates {} with the primary vs {} without",
        creates(&primary_too),
        creates(&pod_enis_only)
    );
    assert!(
        mutations_per_node(&primary_too) < mutations_per_node(&pod_enis_only),
        "{} vs {}",
        mutations_per_node(&primary_too),
        mutations_per_node(&pod_enis_only)
    );
}
