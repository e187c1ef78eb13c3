//! The release handshake, explored exhaustively for small configurations.
//! Run with `--nocapture` to see the state counts.

use sextant_verify::{
    explore::explore,
    handshake::{Config, Handshake, Shell},
};

fn run(name: &str, config: Config, max: usize) -> sextant_verify::explore::Report {
    let r = explore(&Handshake::new(config), max);
    eprintln!(
        "[{name}] states={} transitions={} depth={} truncated={} in {:.1?}",
        r.states, r.transitions, r.depth, r.truncated, r.elapsed
    );
    r
}

#[test]
fn smoke() {
    let r = run(
        "smoke",
        Config {
            addresses: 3,
            initial: 2,
            pods: 1,
            agent_crashes: 0,
            operator_crashes: 0,
            ticks: 1,
            lag: 1,
            shell: Shell::Reconcile,
            full_resync: false,
            liveness: false,
        },
        200_000,
    );
    if let Some(v) = &r.violation {
        panic!("{v}");
    }
}
