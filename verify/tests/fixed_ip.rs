//! The fixed-IP protocol, explored exhaustively for small configurations.
//! Run with `--nocapture` to see the state counts.

use sextant_verify::{
    explore::explore,
    fixed_ip::{Config, FixedIpMoves},
};

fn run(name: &str, config: Config, max: usize) -> sextant_verify::explore::Report {
    let r = explore(&FixedIpMoves::new(config), max);
    eprintln!(
        "[{name}] states={} transitions={} depth={} truncated={} in {:.1?}",
        r.states, r.transitions, r.depth, r.truncated, r.elapsed
    );
    r
}

#[test]
fn smoke() {
    let r = run(
        "fixed smoke",
        Config {
            addresses: 2,
            schedules: 2,
            operator_crashes: 0,
            agent_crashes: 0,
            delete_node: false,
            scale_down: false,
            other_pods: false,
            node_ipam: false,
            liveness: false,
        },
        100_000,
    );
    if let Some(v) = &r.violation {
        panic!("{v}");
    }
}
