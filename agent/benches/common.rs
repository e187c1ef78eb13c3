//! Shared by the kernel benchmarks: percentiles, the root check, running a
//! command in a lab's node namespace. Each bench uses a part of it.
#![allow(dead_code)]

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use sextant_agent::{Error, Result, lab::Lab};

/// `p` in 0..=100 of sorted samples, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Prints why and returns false when the benchmark cannot run here.
pub fn can_run(name: &str) -> bool {
    match sextant_agent::lab::can_run() {
        Ok(()) => true,
        Err(why) => {
            println!("{name}: SKIPPED: {why}");
            false
        }
    }
}

/// Prints why and returns false when `iptables-restore` (the baseline's
/// loader) is missing.
pub fn has_iptables(name: &str) -> bool {
    let found = Command::new("iptables-restore")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        println!("{name}: SKIPPED: iptables-restore missing (scripts/setup.sh installs iptables)");
    }
    found
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
        .map_err(|e| Error::io("running ip netns exec", e))?;
    if let (Some(body), Some(mut si)) = (stdin, child.stdin.take()) {
        si.write_all(body.as_bytes())
            .map_err(|e| Error::io("writing rules", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting", e))?;
    if !out.status.success() {
        return Err(Error::io(
            args.join(" "),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).into_owned()),
        ));
    }
    Ok(())
}
