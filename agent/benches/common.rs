//! Shared by the kernel benchmarks: percentiles, the root and tool checks
//! (missing means MISSED and exit 1 unless `SEXTANT_SKIP=kernel`), running a
//! command in a lab's node namespace. Each bench uses a part of it.
#![allow(dead_code)]

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use sextant_lab::Lab;
use sextant_testkit::{Decision, Tier};

/// `p` in 0..=100 of sorted samples, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Whether the benchmark's real part can run, `why` saying what is missing.
/// Missing: prints a MISSED line with the reason and exits 1, unless
/// `SEXTANT_SKIP=kernel`, which prints and records the skip (the ledger of
/// `sextant-testkit`) and returns false.
pub fn require_kernel(name: &str, why: Option<String>) -> bool {
    match sextant_testkit::check(Tier::Kernel, why, &format!("bench {name}")) {
        Decision::Run => true,
        Decision::Skip(_) => false,
        Decision::Fail(msg) => {
            println!("{name}: MISSED: {msg}");
            std::process::exit(1);
        }
    }
}

/// [`require_kernel`] for building labs (root, iproute2).
pub fn can_run(name: &str) -> bool {
    require_kernel(name, sextant_lab::can_run().err())
}

/// [`require_kernel`] for `iptables-restore` (the baseline's loader).
pub fn has_iptables(name: &str) -> bool {
    let found = Command::new("iptables-restore")
        .arg("--version")
        .output()
        .is_ok();
    require_kernel(
        name,
        (!found).then(|| "iptables-restore missing (scripts/setup.sh installs iptables)".into()),
    )
}

/// Runs `args` inside the lab's node netns (`ip netns exec`), feeding
/// `stdin`; a non-zero exit is an error carrying its stderr.
pub fn in_node(lab: &Lab, args: &[&str], stdin: Option<String>) -> Result<()> {
    let mut full = vec!["netns", "exec", lab.node.as_str()];
    full.extend_from_slice(args);
    let mut child = Command::new("ip")
        .args(&full)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip netns exec")?;
    if let (Some(body), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(body.as_bytes()).context("writing rules")?;
    }
    let out = child.wait_with_output().context("waiting")?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
