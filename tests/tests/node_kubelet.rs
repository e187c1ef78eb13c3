//! Sextant on a real node: the v1.34 kubelet with Debian's containerd and
//! runc, `sextant-cni` its only network plugin (issue 18, phase 1).
//!
//! ```text
//!  test (admin) ── pods (imagePullPolicy: Never) ──▶ kube-apiserver ──▶ kube-scheduler
//!                                                        │
//!  operator --provider sim ── NodeNetwork pool ──▶       ▼
//!  (ENI addresses of the simulated instance)       kubelet ──CRI──▶ containerd ──▶ runc
//!                                                    ▲                  │ CNI ADD/DEL
//!  sextant-device-plugin ── kubelet.sock ────────────┘                  ▼
//!          │ GET /v1/healthz                                     sextant-cni
//!          └────────────────────────▶ sextant-agent (datapath) ◀────┘ agent socket
//! ```
//!
//! One test walks the whole path in order (each step needs the one before,
//! and one node serves the binary): the node turns Ready with Sextant as its
//! CNI, its allocatable `sextant.io/ip` is what the agent reports, two pods
//! get addresses of the NodeNetwork's pool and talk TCP from inside their
//! network namespaces (`kubectl exec … /netcheck probe`, through the API
//! server to the kubelet), and deleting a pod frees its address.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use sextant_crds::NodeNetwork;
use sextant_e2e::{
    chart::{NAMESPACE, Rendered},
    cluster::{
        BoundTo, Cluster, Options, eventually,
        install::{self, Component, PodFacts, Running, loopback_addr, wait_http_ok},
        node::{self, NodeInfo},
    },
};
use sextant_testkit::Tier;

/// How long the node may take to turn Ready, a pod to run, an address to
/// show up in a report: generous for a 2-core machine running everything.
const SLOW: Duration = Duration::from_secs(120);

/// A bpffs directory for the agent's pins, removed when dropped.
struct BpfRoot(PathBuf);

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node's agent; stopped before its pins go.
struct Agent {
    running: Running,
    socket: PathBuf,
    _bpf: BpfRoot,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.running.process.stop(Duration::from_secs(5));
    }
}

impl Agent {
    /// `GET /v1/healthz` on its socket.
    async fn healthz(&self) -> anyhow::Result<Value> {
        let out = tokio::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", "--unix-socket"])
            .arg(&self.socket)
            .arg("http://agent/v1/healthz")
            .output()
            .await?;
        ensure!(
            out.status.success(),
            "GET /v1/healthz failed ({})",
            out.status
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn log_tail(&self) -> String {
        self.running.process.log_tail(40)
    }
}

/// `sextant-agent` as the chart's DaemonSet runs it on `node`: the rendered
/// container's environment, a token of its ServiceAccount bound to the Node
/// (as a DaemonSet pod's is; the chart's admission policy wants that), its
/// API socket where the node's conflist points, the eBPF datapath on (pins
/// under a bpffs directory of its own). Returned once its API says ready.
async fn start_agent(c: &Cluster, rendered: &Rendered, node: &NodeInfo) -> anyhow::Result<Agent> {
    let dir = install::scratch(c, "node-agent")?;
    let (kubeconfig, _) = c
        .bound_service_account_kubeconfig(NAMESPACE, "sextant-agent", BoundTo::Node(&node.name))
        .await?;
    let bpf = BpfRoot(PathBuf::from(format!(
        "/sys/fs/bpf/sextant-e2e-node-{}",
        std::process::id()
    )));
    let overrides: Vec<(&str, String)> = vec![
        (
            "SEXTANT_AGENT_SOCKET",
            node.agent_socket.display().to_string(),
        ),
        ("SEXTANT_STATE_DIR", dir.join("state").display().to_string()),
        ("SEXTANT_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        ("SEXTANT_BPF_ROOT", bpf.0.display().to_string()),
        ("SEXTANT_USAGE_REPORT_INTERVAL", "2s".to_owned()),
        // A freed address stays in the report's `cooling` while the test looks.
        ("SEXTANT_IP_COOLDOWN", "600s".to_owned()),
    ];
    let pod = install::pod_spec(rendered, "sextant-agent")?;
    let container = pod
        .containers
        .iter()
        .find(|k| k.name == "agent")
        .context("the agent DaemonSet has no container agent")?;
    let mut env = install::container_env(
        container,
        &PodFacts {
            pod_name: "sextant-agent-node".into(),
            node_name: node.name.clone(),
        },
        &overrides,
    )?;
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    env.push((
        "RUST_LOG".into(),
        std::env::var("SEXTANT_E2E_LOG").unwrap_or_else(|_| "info".into()),
    ));
    let args = container.args.clone().unwrap_or_default();
    let process = c.spawn(
        "sextant-agent",
        &install::bin("sextant-agent")?,
        &args,
        &env,
    )?;
    let mut agent = Agent {
        running: Running {
            process,
            kubeconfig: Some(kubeconfig),
        },
        socket: node.agent_socket.clone(),
        _bpf: bpf,
    };
    let deadline = std::time::Instant::now() + SLOW;
    loop {
        if let Some(status) = agent.running.process.exited() {
            bail!("the agent exited ({status}):\n{}", agent.log_tail());
        }
        if let Ok(h) = agent.healthz().await
            && h["state"] == "ready"
        {
            return Ok(agent);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the agent was not ready within {SLOW:?}:\n{}",
            agent.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `sextant-device-plugin` as its DaemonSet runs it, registering with the
/// node's kubelet and asking the node's agent; no API access (the chart
/// mounts no token).
async fn start_device_plugin(
    c: &Cluster,
    rendered: &Rendered,
    node: &NodeInfo,
) -> anyhow::Result<Running> {
    let metrics = loopback_addr()?;
    let mut component = Component::new(
        "sextant-device-plugin",
        "device-plugin",
        None,
        "sextant-device-plugin-node",
        vec![
            (
                "SEXTANT_DEVICE_PLUGIN_DIR",
                node.device_plugin_dir.display().to_string(),
            ),
            (
                "SEXTANT_AGENT_SOCKET",
                node.agent_socket.display().to_string(),
            ),
            ("SEXTANT_METRICS_ADDR", metrics.clone()),
        ],
    );
    component.pod.node_name = node.name.clone();
    let mut running = install::run(c, rendered, "sextant-device-plugin", component).await?;
    wait_http_ok(&mut running.process, &metrics, "/healthz").await?;
    Ok(running)
}

/// The Node's condition `Ready` is `True`.
fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A quantity of `sextant.io/ip` in the Node's capacity or allocatable.
fn ip_quantity(n: &Node, allocatable: bool) -> Option<i64> {
    let s = n.status.as_ref()?;
    let map = if allocatable {
        s.allocatable.as_ref()?
    } else {
        s.capacity.as_ref()?
    };
    map.get("sextant.io/ip")?.0.parse().ok()
}

/// A pod running the test image's server on the node.
fn netcheck_pod(name: &str, node: &NodeInfo) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "netcheck",
                "image": node.netcheck_image,
                "imagePullPolicy": "Never",
                "args": ["serve", "-port", "8080"],
                "ports": [{"containerPort": 8080}],
            }],
        },
    }))?)
}

/// The pod's IP once it runs, failing early with its events when its sandbox
/// cannot be made (a CNI ADD error, an image missing).
async fn running_ip(c: &Cluster, pods: &Api<Pod>, ns: &str, name: &str) -> anyhow::Result<String> {
    let found = eventually(SLOW, &format!("pod {name} running with an IP"), || {
        let pods = pods.clone();
        async move {
            let p = pods.get(name).await?;
            let s = p.status.unwrap_or_default();
            Ok((s.phase.as_deref() == Some("Running"))
                .then_some(s.pod_ip)
                .flatten())
        }
    })
    .await;
    match found {
        Ok(ip) => Ok(ip),
        Err(e) => {
            let events = c
                .kubectl(
                    &[
                        "get",
                        "events",
                        "-n",
                        ns,
                        "--field-selector",
                        &format!("involvedObject.name={name}"),
                    ],
                    None,
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!("{e:#}\nevents of {name}:\n{events}")
        }
    }
}

/// `kubectl exec <from> -- /netcheck probe <to_ip>:8080`: a TCP connection
/// made inside `from`'s network namespace; its output.
fn probe(c: &Cluster, ns: &str, from: &str, to_ip: &str) -> anyhow::Result<String> {
    let target = format!("{to_ip}:8080");
    let out = c.kubectl(
        &[
            "exec",
            "-n",
            ns,
            from,
            "--",
            "/netcheck",
            "probe",
            "-timeout",
            "5s",
            &target,
        ],
        None,
    )?;
    ensure!(
        out.status.success(),
        "probe from {from} to {target} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's NodeNetwork.
async fn node_network(admin: &Client, node: &str) -> anyhow::Result<NodeNetwork> {
    Ok(Api::<NodeNetwork>::all(admin.clone()).get(node).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_the_real_node_get_pool_addresses_talk_tcp_and_free_them_on_delete() {
    let test = sextant_testkit::current_test("node_kubelet");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    let Some(c) = Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            real_node: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    if let Err(e) = walk(c).await {
        let node_logs = c
            .info
            .node
            .iter()
            .flat_map(|n| n.logs.iter().cloned())
            .chain(
                [
                    "sextant-agent",
                    "sextant-device-plugin",
                    "sextant-operator-node",
                ]
                .map(|p| c.info.dir.join(format!("logs/{p}.log"))),
            )
            .map(|l| {
                format!(
                    "--- {}:\n{}",
                    l.display(),
                    sextant_e2e::cluster::log_tail(&l, 25)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{e:#}\n{node_logs}");
    }
}

async fn walk(c: &Cluster) -> anyhow::Result<()> {
    let node = c
        .info
        .node
        .clone()
        .context("the cluster was started without its real node")?;
    let admin = c.admin().await?;
    let nodes: Api<Node> = Api::all(admin.clone());
    let registered = nodes.get(&node.name).await?;
    ensure!(
        !ready(&registered),
        "node {} is Ready before any CNI is installed",
        node.name
    );

    // Sextant: the chart on the simulated cloud, the operator reconciling
    // this node's NodeNetwork (its pool: ENI addresses of the instance the
    // simulator launches for the node's providerID).
    let rendered = node::install_without_workloads(
        c,
        Some("provider: sim\nregion: us-east-1\nclusterName: node\nvpcId: vpc-sim\noperator:\n  replicas: 1\n".into()),
    )?;
    let (operator, _) =
        install::run_operator(c, &rendered, "sextant-operator-node", vec![]).await?;
    let pool = eventually(SLOW, "the node's NodeNetwork with a pool", || {
        let admin = admin.clone();
        let name = node.name.clone();
        async move {
            let nn = Api::<NodeNetwork>::all(admin).get_opt(&name).await?;
            Ok(nn
                .and_then(|n| n.status)
                .filter(|s| !s.pool.is_empty())
                .map(|s| s.pool))
        }
    })
    .await?;
    println!(
        "NodeNetwork {}: pool of {} addresses",
        node.name,
        pool.len()
    );

    let conflist = node::install_cni(&node, &rendered)?;
    println!("CNI installed: {}", conflist.display());
    let agent = start_agent(c, &rendered, &node).await?;
    let device_plugin = start_device_plugin(c, &rendered, &node).await?;

    eventually(SLOW, &format!("node {} Ready", node.name), || {
        let nodes = nodes.clone();
        let name = node.name.clone();
        async move { Ok(ready(&nodes.get(&name).await?).then_some(())) }
    })
    .await?;
    println!("node {} Ready with sextant-cni", node.name);

    // The device plugin's count is the agent's, through the real kubelet.
    let (capacity, allocatable) = eventually(
        SLOW,
        "sextant.io/ip on the node as the agent reports it",
        || {
            let nodes = nodes.clone();
            let name = node.name.clone();
            let agent = &agent;
            async move {
                let h = agent.healthz().await?;
                let want = h["ipam"]["capacity"]
                    .as_i64()
                    .context("healthz without ipam.capacity")?;
                let unavailable = h["ipam"]["unavailable"].as_i64().unwrap_or(0);
                let n = nodes.get(&name).await?;
                let (cap, alloc) = (ip_quantity(&n, false), ip_quantity(&n, true));
                ensure!(
                    want > 0 && cap == Some(want) && alloc == Some(want - unavailable),
                    "node capacity {cap:?}, allocatable {alloc:?}; agent ipam {}",
                    h["ipam"]
                );
                Ok(Some((want, want - unavailable)))
            }
        },
    )
    .await?;
    println!(
        "node capacity sextant.io/ip = {capacity}, allocatable = {allocatable} (agent: the same)"
    );

    // Two pods through the API server; addresses from the pool; TCP both ways.
    let ns = c.namespace("node").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &netcheck_pod(name, &node)?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
    }
    let ip_a = running_ip(c, &pods, &ns, "a").await?;
    let ip_b = running_ip(c, &pods, &ns, "b").await?;
    let pool = node_network(&admin, &node.name)
        .await?
        .status
        .unwrap_or_default()
        .pool;
    for (pod, ip) in [("a", &ip_a), ("b", &ip_b)] {
        ensure!(
            pool.contains_key(ip),
            "pod {pod} got {ip}, not an address of the NodeNetwork's pool {:?}",
            pool.keys().collect::<Vec<_>>()
        );
    }
    println!("pod a: {ip_a}, pod b: {ip_b} (both from the pool)");
    let ab = probe(c, &ns, "a", &ip_b)?;
    ensure!(
        ab.contains("hello from b "),
        "a reached {ip_b}:8080 but not pod b: {ab}"
    );
    let ba = probe(c, &ns, "b", &ip_a)?;
    ensure!(
        ba.contains("hello from a "),
        "b reached {ip_a}:8080 but not pod a: {ba}"
    );
    print!("a -> b: {ab}b -> a: {ba}");

    // The agent reports both in use; deleting b frees its address (CNI DEL).
    let report = |want_used: Vec<String>, want_cooling: Option<String>| {
        let admin = admin.clone();
        let name = node.name.clone();
        async move {
            let usage = node_network(&admin, &name)
                .await?
                .status
                .and_then(|s| s.usage)
                .unwrap_or_default();
            let used = want_used.iter().all(|ip| usage.used.contains_key(ip));
            let cooling = match &want_cooling {
                Some(ip) => usage.cooling.contains(ip) && !usage.used.contains_key(ip),
                None => true,
            };
            Ok((used && cooling).then_some(()))
        }
    };
    eventually(
        SLOW,
        "both pods' addresses in the agent's usage report",
        || report(vec![ip_a.clone(), ip_b.clone()], None),
    )
    .await?;
    pods.delete("b", &DeleteParams::default()).await?;
    eventually(SLOW, "pod b gone", || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("b").await?.is_none().then_some(())) }
    })
    .await?;
    eventually(
        SLOW,
        &format!("{ip_b} freed (cooling, not used) and {ip_a} still used"),
        || report(vec![ip_a.clone()], Some(ip_b.clone())),
    )
    .await?;
    let h = agent.healthz().await?;
    ensure!(
        h["ipam"]["allocated"] == 1,
        "the agent still counts {} allocated after b's delete: {h}",
        h["ipam"]["allocated"]
    );
    println!("pod b deleted: {ip_b} cooling, agent allocated = 1");

    pods.delete("a", &DeleteParams::default()).await?;
    for r in [&operator, &agent.running] {
        r.assert_no_forbidden()?;
    }
    drop(device_plugin);
    Ok(())
}
