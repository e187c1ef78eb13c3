//! P3: CNI ADD latency from a warm pool, `sextant-cni` + agent against
//! Debian's reference `bridge` + `host-local` plugins, invoked the same way
//! (a fresh plugin process per ADD, in the same node namespace) in one run.

mod common;

use std::{path::Path, time::Instant};

use anyhow::{Result, anyhow};
use sextant_lab::{Lab, LabConfig, cni_exec};

const N: usize = 150;
const REFERENCE_BRIDGE: &str = "/usr/lib/cni/bridge";

fn main() {
    if !common::can_run("P3") {
        return;
    }
    let bridge_missing = (!Path::new(REFERENCE_BRIDGE).exists()).then(|| {
        format!(
            "{REFERENCE_BRIDGE} missing (containernetworking-plugins; scripts/setup.sh installs it)"
        )
    });
    if !common::require_kernel("P3", bridge_missing) {
        return;
    }
    if let Err(e) = run() {
        println!("P3: FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut lab = Lab::new(LabConfig {
        prefix: format!("p3b{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.78.0.0/22".into(),
        pods: 2 * N,
        datapath: true,
    })?;
    lab.start_agent()?;
    // The same agent and plugin without the eBPF datapath, to show what the
    // tc attach (one RCU grace period in the kernel) costs.
    let mut plain = Lab::new(LabConfig {
        prefix: format!("p3n{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.78.0.0/22".into(),
        pods: N,
        datapath: false,
    })?;
    plain.start_agent()?;
    let ipam_dir =
        std::env::temp_dir().join(format!("sextant-p3-hostlocal-{}", std::process::id()));
    let ref_conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "p3ref",
        "type": "bridge",
        "bridge": "p3ref0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": { "type": "host-local", "subnet": "10.79.0.0/22", "dataDir": ipam_dir },
    })
    .to_string();
    let conf = lab.net_conf();
    let mut ours = Vec::with_capacity(N);
    let mut theirs = Vec::with_capacity(N);
    let mut no_dp = Vec::with_capacity(N);
    // Interleaved, so both see the same machine state over the run.
    for i in 0..N {
        let pod = lab.pods[i].clone();
        let t = Instant::now();
        let (ok, out) = cni_exec(
            &lab.node,
            Path::new(env!("CARGO_BIN_EXE_sextant-cni")),
            "ADD",
            &pod.container_id,
            &pod.netns(),
            &conf,
        )?;
        ours.push(t.elapsed());
        if !ok {
            return Err(anyhow!("sextant ADD failed: {out}"));
        }
        let pod = plain.pods[i].clone();
        let t = Instant::now();
        let (ok, out) = cni_exec(
            &plain.node,
            Path::new(env!("CARGO_BIN_EXE_sextant-cni")),
            "ADD",
            &pod.container_id,
            &pod.netns(),
            &plain.net_conf(),
        )?;
        no_dp.push(t.elapsed());
        if !ok {
            return Err(anyhow!("sextant (no datapath) ADD failed: {out}"));
        }
        let pod = lab.pods[N + i].clone();
        let t = Instant::now();
        let (ok, out) = cni_exec(
            &lab.node,
            Path::new(REFERENCE_BRIDGE),
            "ADD",
            &pod.container_id,
            &pod.netns(),
            &ref_conf,
        )?;
        theirs.push(t.elapsed());
        if !ok {
            return Err(anyhow!("reference ADD failed: {out}"));
        }
    }
    // The plugin's fixed cost: a STATUS round trip (process start, socket, HTTP).
    let mut status = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let (ok, out) = cni_exec(
            &lab.node,
            Path::new(env!("CARGO_BIN_EXE_sextant-cni")),
            "STATUS",
            "",
            Path::new(""),
            &conf,
        )?;
        status.push(t.elapsed());
        if !ok {
            return Err(anyhow!("sextant STATUS failed: {out}"));
        }
    }
    status.sort();
    let mut in_process = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        lab.health()?;
        in_process.push(t.elapsed());
    }
    in_process.sort();
    let mut spawn_only = Vec::with_capacity(N);
    for _ in 0..N {
        let t = Instant::now();
        let _ = cni_exec(
            &lab.node,
            Path::new("/bin/true"),
            "VERSION",
            "",
            Path::new(""),
            "",
        )?;
        spawn_only.push(t.elapsed());
    }
    spawn_only.sort();
    println!(
        "P3 floor (same run): spawning /bin/true p50 {:.2} ms; an agent API round trip in-process p50 {:.2} ms",
        common::pct(&spawn_only, 50.0),
        common::pct(&in_process, 50.0)
    );
    let _ = std::fs::remove_dir_all(&ipam_dir);
    drop(lab);
    drop(plain);
    no_dp.sort();
    ours.sort();
    theirs.sort();
    let (o50, o99) = (common::pct(&ours, 50.0), common::pct(&ours, 99.0));
    let (t50, t99) = (common::pct(&theirs, 50.0), common::pct(&theirs, 99.0));
    println!(
        "P3 cni-add p50: sextant {o50:.2} ms, reference {t50:.2} ms, ratio {:.1}x",
        t50 / o50
    );
    println!(
        "P3 cni-add p99: sextant {o99:.2} ms, reference {t99:.2} ms, ratio {:.1}x",
        t99 / o99
    );
    println!(
        "P3 cni-add without the eBPF datapath (same run): p50 {:.2} ms, p99 {:.2} ms",
        common::pct(&no_dp, 50.0),
        common::pct(&no_dp, 99.0)
    );
    println!(
        "P3 plugin round trip (STATUS, same run): p50 {:.2} ms, p99 {:.2} ms",
        common::pct(&status, 50.0),
        common::pct(&status, 99.0)
    );
    Ok(())
}
