//! The release handshake explored exhaustively for small configurations:
//! one node, three addresses, the real node IPAM against a tiny cloud and
//! the real agent, with stale reads, PATCHes landing late and in any order,
//! and crashes. Each test prints its state count; run with
//! `cargo test -p sextant-verify -- --nocapture` to see them.

use sextant_verify::{
    explore::assert_holds,
    handshake::{Config, Handshake, Shell},
};

fn base() -> Config {
    Config {
        addresses: 3,
        initial: 2,
        pods: 1,
        agent_crashes: 0,
        operator_crashes: 0,
        ticks: 0,
        lag: 1,
        shell: Shell::Reconcile,
        full_resync: false,
        liveness: false,
    }
}

fn holds(name: &str, config: Config, max: usize) {
    assert_holds(&format!("handshake::{name}"), &Handshake::new(config), max);
}

#[test]
fn releases_only_addresses_the_agent_promised_with_stale_reads_and_late_patches() {
    holds("stale_reads", base(), 100_000);
}

#[test]
fn an_operator_crash_between_unassign_and_status_write_releases_nothing_in_use() {
    holds(
        "operator_crash",
        Config {
            addresses: 2,
            operator_crashes: 1,
            ..base()
        },
        100_000,
    );
}

#[test]
fn an_agent_restarted_from_its_checkpoint_keeps_its_promises() {
    holds(
        "agent_crash",
        Config {
            addresses: 2,
            initial: 1,
            agent_crashes: 1,
            ..base()
        },
        100_000,
    );
}

#[test]
fn the_two_phase_shell_records_unassigns_before_making_them() {
    holds(
        "two_phase",
        Config {
            shell: Shell::TwoPhase,
            ..base()
        },
        100_000,
    );
}

#[test]
fn every_address_ends_in_the_pool_and_release_drains() {
    holds(
        "liveness",
        Config {
            addresses: 2,
            initial: 1,
            full_resync: true,
            liveness: true,
            ..base()
        },
        100_000,
    );
}
