//! What the kernel test binaries share: the root check and a lab node with
//! the real agent and CNI built for this test run.

use sextant_lab::{Lab, LabConfig, can_run};
use sextant_testkit::Tier;

/// Whether this machine can build labs: fails without root unless
/// `SEXTANT_SKIP=kernel`, then records the skip and says no. `file` is the
/// calling test file (`file!()`), named in the skip ledger.
pub fn kernel(file: &str, what: &str) -> bool {
    let test = format!("{file}: {}", sextant_testkit::current_test(what));
    sextant_testkit::require(Tier::Kernel, can_run().err(), &test)
}

/// A lab node named `{prefix}{name}{pid}` with `pods` pod namespaces and
/// addresses from `pool`, its agent started with the datapath on; `None`
/// when [`kernel`] says no.
pub fn lab(file: &str, prefix: &str, pool: &str, name: &str, pods: usize) -> Option<Lab> {
    if !kernel(file, name) {
        return None;
    }
    let cfg = LabConfig {
        prefix: format!("{prefix}{name}{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: pool.into(),
        pods,
        datapath: true,
    };
    let mut lab = Lab::new(cfg).expect("lab namespaces");
    lab.start_agent().expect("agent starts");
    Some(lab)
}
