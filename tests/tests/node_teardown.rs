//! The real node leaves nothing on the machine when its cluster stops, and a
//! node whose supervisor was killed with SIGKILL (so nothing tore it down)
//! is swept by the next node that starts: no kubelet, containerd or shim
//! left running, no mount (pod network namespaces, overlay roots), cgroup or
//! link of it. Each node runs a pod (on the reference `bridge` CNI, which
//! needs no Sextant component) so that there is something to clean up.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, ensure};
use sextant_e2e::cluster::{
    Cluster, Options,
    node::{self, NodeInfo},
};
use sextant_testkit::Tier;

/// Starts a cluster of its own (not the binary's shared one) with a real node.
fn start() -> anyhow::Result<Cluster> {
    Cluster::start(
        Path::new(env!("CARGO_BIN_EXE_sextant-cluster")),
        &Options {
            real_node: true,
            ..Options::default()
        },
    )
}

/// The reference bridge CNI on the node (its own bridge `bridge`) and one
/// pod running on it.
fn run_a_pod(c: &Cluster, node: &NodeInfo, bridge: &str) -> anyhow::Result<()> {
    for plugin in ["bridge", "host-local"] {
        std::fs::copy(
            Path::new("/usr/lib/cni").join(plugin),
            node.cni_bin_dir.join(plugin),
        )
        .with_context(|| format!("copying /usr/lib/cni/{plugin} (containernetworking-plugins)"))?;
    }
    std::fs::write(
        node.cni_conf_dir.join("10-bridge.conflist"),
        serde_json::json!({
            "cniVersion": "1.0.0", "name": "teardown",
            "plugins": [{"type": "bridge", "bridge": bridge, "ipam": {
                "type": "host-local", "ranges": [[{"subnet": "10.223.0.0/24"}]],
                "dataDir": node.dir.join("cni/ipam"),
            }}],
        })
        .to_string(),
    )?;
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: default}}\n\
         spec:\n  terminationGracePeriodSeconds: 1\n  containers: [{{name: c, image: {}, imagePullPolicy: Never}}]\n",
        node.netcheck_image
    );
    c.kubectl_ok(&["apply", "-f", "-"], Some(&pod))?;
    c.kubectl_ok(
        &["wait", "--for=condition=Ready", "pod/p", "--timeout=120s"],
        None,
    )
    .context("the pod on the bridge CNI did not turn Ready")?;
    Ok(())
}

fn kill(pid: &str) {
    let _ = Command::new("kill").args(["-KILL", pid]).status();
}

#[test]
fn a_real_node_leaves_nothing_behind_when_stopped_or_when_its_supervisor_is_killed() {
    let test = sextant_testkit::current_test("node_teardown");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test)
        || !sextant_testkit::require(Tier::Cluster, None, &test)
    {
        return;
    }
    let bridge = format!("sxtd{}", std::process::id());
    let result = walk(&bridge);
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

fn walk(bridge: &str) -> anyhow::Result<()> {
    // Stopped the ordinary way: the test drops its cluster.
    let c = start()?;
    let first = c.info.node.clone().context("no real node")?;
    run_a_pod(&c, &first, bridge)?;
    let before = node::traces(&first);
    ensure!(
        before.iter().any(|t| t.starts_with("mount "))
            && before.iter().any(|t| t.starts_with("process ")),
        "a node with a running pod shows no mounts or processes: {before:#?}"
    );
    drop(c);
    let left = node::traces(&first);
    ensure!(left.is_empty(), "the stopped node left: {left:#?}");
    println!("stopped node: {} traces before, none after", before.len());

    // Its supervisor killed with SIGKILL: nothing tears the node down.
    let c = start()?;
    let second = c.info.node.clone().context("no real node")?;
    run_a_pod(&c, &second, bridge)?;
    let supervisor = std::fs::read_to_string(c.info.dir.join("supervisor.pid"))?;
    kill(supervisor.trim());
    std::thread::sleep(Duration::from_secs(1));
    // The control plane outlives it too (not the node's business): stop it.
    for pid in c.info.pids.values() {
        kill(&pid.to_string());
    }
    let orphaned = node::traces(&second);
    ensure!(
        orphaned.iter().any(|t| t.contains("kubelet")),
        "after SIGKILL of the supervisor the kubelet should still run (else this test shows nothing): {orphaned:#?}"
    );
    drop(c);

    // The next node sweeps it.
    let c = start()?;
    let left = node::traces(&second);
    ensure!(
        left.is_empty(),
        "the next node's start left of the killed one: {left:#?}"
    );
    ensure!(
        !second.dir.parent().is_some_and(Path::exists),
        "the killed node's cluster directory {} is still there",
        second.dir.display()
    );
    println!(
        "killed node: {} traces orphaned, none after the next node started",
        orphaned.len()
    );
    drop(c);
    Ok(())
}
