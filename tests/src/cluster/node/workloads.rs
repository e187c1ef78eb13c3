//! Sextant's node components and test pods on the real node, for the
//! `node_*` tests: the agent and the device plugin as their DaemonSets run
//! them (chart environment, chart identity), pods of the test image, and
//! connections made from inside them.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client};
use serde_json::{Value, json};
use sextant_crds::NodeNetwork;

use super::NodeInfo;
use crate::{
    chart::{NAMESPACE, Rendered},
    cluster::{
        BoundTo, Cluster, eventually,
        install::{self, Component, PodFacts, Running, loopback_addr, wait_http_ok},
    },
};

/// How long the node may take to turn Ready, a pod to run, an address to
/// show up in a report: generous for a 2-core machine running everything.
pub const SLOW: Duration = Duration::from_secs(120);

/// A bpffs directory for the agent's pins, removed when dropped.
pub struct BpfRoot(pub PathBuf);

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The node's agent; stopped before its pins go.
pub struct Agent {
    /// The process and its kubeconfig.
    pub running: Running,
    /// Its API socket.
    pub socket: PathBuf,
    bpf: Option<BpfRoot>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.running.process.stop(Duration::from_secs(5));
    }
}

impl Agent {
    /// Kills it with SIGKILL, as a crash would: no shutdown, its pins, state
    /// and socket file left as they are. Returns the pins' guard for the
    /// next agent ([`start_agent_on`]).
    pub fn kill9(mut self) -> anyhow::Result<BpfRoot> {
        let pid = self.running.process.pid().to_string();
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()?;
        ensure!(status.success(), "kill -KILL {pid} failed");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.running.process.exited().is_none() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the agent {pid} outlived SIGKILL for 10 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.bpf
            .take()
            .context("the agent's pins guard was taken already")
    }

    /// `GET /v1/healthz` on its socket.
    pub async fn healthz(&self) -> anyhow::Result<Value> {
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

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        self.running.process.log_tail(40)
    }
}

/// `sextant-agent` as the chart's DaemonSet runs it on `node`: the rendered
/// container's environment, a token of its ServiceAccount bound to the Node
/// (as a DaemonSet pod's is; the chart's admission policy wants that), its
/// API socket where the node's conflist points, the eBPF datapath on (pins
/// under a bpffs directory of its own). Returned once its API says ready.
pub async fn start_agent(
    c: &Cluster,
    rendered: &Rendered,
    node: &NodeInfo,
) -> anyhow::Result<Agent> {
    let bpf = BpfRoot(PathBuf::from(format!(
        "/sys/fs/bpf/sextant-e2e-node-{}",
        std::process::id()
    )));
    start_agent_on(c, rendered, node, bpf).await
}

/// [`start_agent`] with the pins under `bpf`: a restarted agent gets its
/// predecessor's ([`Agent::kill9`]), and its state directory is the same
/// (the checkpoint it restores from).
pub async fn start_agent_on(
    c: &Cluster,
    rendered: &Rendered,
    node: &NodeInfo,
    bpf: BpfRoot,
) -> anyhow::Result<Agent> {
    let dir = install::scratch(c, "node-agent")?;
    let (kubeconfig, _) = c
        .bound_service_account_kubeconfig(NAMESPACE, "sextant-agent", BoundTo::Node(&node.name))
        .await?;
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
    // Each start its own log: a restarted agent's must not truncate its
    // predecessor's.
    static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let log_name = match STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) {
        0 => "sextant-agent".to_owned(),
        n => format!("sextant-agent-{}", n + 1),
    };
    let process = c.spawn(&log_name, &install::bin("sextant-agent")?, &args, &env)?;
    let mut agent = Agent {
        running: Running {
            process,
            kubeconfig: Some(kubeconfig),
        },
        socket: node.agent_socket.clone(),
        bpf: Some(bpf),
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
pub async fn start_device_plugin(
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
pub fn ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A quantity of `sextant.io/ip` in the Node's capacity or allocatable.
pub fn ip_quantity(n: &Node, allocatable: bool) -> Option<i64> {
    let s = n.status.as_ref()?;
    let map = if allocatable {
        s.allocatable.as_ref()?
    } else {
        s.capacity.as_ref()?
    };
    map.get("sextant.io/ip")?.0.parse().ok()
}

/// A pod running the test image's server on the node, on port 8080,
/// labelled `app: <name>`.
pub fn netcheck_pod(name: &str, node: &NodeInfo) -> anyhow::Result<Pod> {
    netcheck_pod_with(name, node, name, 8080)
}

/// A pod running the test image's server on `port`, labelled `app: <app>`.
pub fn netcheck_pod_with(name: &str, node: &NodeInfo, app: &str, port: u16) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "netcheck",
                "image": node.netcheck_image,
                "imagePullPolicy": "Never",
                "args": ["serve", "-port", port.to_string()],
                "ports": [{"containerPort": port}],
            }],
        },
    }))?)
}

/// The pod's IP once it runs, failing early with its events when its sandbox
/// cannot be made (a CNI ADD error, an image missing).
pub async fn running_ip(
    c: &Cluster,
    pods: &Api<Pod>,
    ns: &str,
    name: &str,
) -> anyhow::Result<String> {
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
            let events = events_of(c, ns, name);
            bail!("{e:#}\nevents of {name}:\n{events}")
        }
    }
}

/// `kubectl exec <from> -- /netcheck probe <to_ip>:8080`: a TCP connection
/// made inside `from`'s network namespace; its output.
pub fn probe(c: &Cluster, ns: &str, from: &str, to_ip: &str) -> anyhow::Result<String> {
    probe_to(c, ns, from, &format!("{to_ip}:8080"), "5s")
}

/// `kubectl exec <from> -- /netcheck probe -timeout <timeout> <target>`
/// (`target` is `host:port`): its output, or an error with what it said.
pub fn probe_to(
    c: &Cluster,
    ns: &str,
    from: &str,
    target: &str,
    timeout: &str,
) -> anyhow::Result<String> {
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
            timeout,
            target,
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
pub async fn node_network(admin: &Client, node: &str) -> anyhow::Result<NodeNetwork> {
    Ok(Api::<NodeNetwork>::all(admin.clone()).get(node).await?)
}

/// `sextant-webhook` as its Deployment runs it (no API access), serving the
/// chart's serving pair on `127.0.0.1:port` (the chart's `webhook.url`);
/// returned once its admin port answers `/healthz`.
pub async fn start_webhook(c: &Cluster, rendered: &Rendered, port: u16) -> anyhow::Result<Running> {
    let dir = install::scratch(c, "node-webhook")?;
    let (cert, key) = install::webhook_serving_pair(rendered, &dir)?;
    let metrics = loopback_addr()?;
    let mut running = install::run(
        c,
        rendered,
        "sextant-webhook",
        Component::new(
            "sextant-webhook",
            "webhook",
            None,
            "sextant-webhook-node",
            vec![
                ("SEXTANT_WEBHOOK_LISTEN", format!("127.0.0.1:{port}")),
                ("SEXTANT_WEBHOOK_TLS_CERT", cert),
                ("SEXTANT_WEBHOOK_TLS_KEY", key),
                ("SEXTANT_WEBHOOK_METRICS_ADDR", metrics.clone()),
            ],
        ),
    )
    .await?;
    wait_http_ok(&mut running.process, &metrics, "/healthz").await?;
    Ok(running)
}

/// The events of object `name` in `ns`, one `reason: message` a line, oldest
/// first.
pub fn events_of(c: &Cluster, ns: &str, name: &str) -> String {
    c.kubectl(
        &[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            &format!("involvedObject.name={name}"),
            "--sort-by=.lastTimestamp",
            "-o",
            "custom-columns=TYPE:.type,REASON:.reason,FROM:.source.component,COUNT:.count,MESSAGE:.message",
        ],
        None,
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    .unwrap_or_else(|e| format!("(kubectl get events: {e:#})"))
}

/// Sextant on the real node, every component a host process under its chart
/// identity: the chart (minus workloads) on the simulated cloud with `values`
/// appended, the operator, the webhook (chart `webhook.url`), the extender
/// on `extender_port` (the cluster's kube-scheduler calls it), the CNI, the
/// agent and the device plugin; returned once the node is Ready.
pub struct SextantOnNode {
    /// The chart as rendered.
    pub rendered: Rendered,
    /// The node's agent.
    pub agent: Agent,
    /// Operator, webhook, extender, device plugin.
    pub components: Vec<Running>,
}

/// Starts [`SextantOnNode`].
pub async fn sextant_on_node(
    c: &Cluster,
    node: &NodeInfo,
    extender_port: u16,
    values: &str,
) -> anyhow::Result<SextantOnNode> {
    let webhook_port = crate::cluster::supervisor::free_port()?;
    let rendered = super::install_without_workloads(
        c,
        Some(format!(
            "provider: sim\nregion: us-east-1\nclusterName: node\nvpcId: vpc-sim\n\
             operator:\n  replicas: 1\nwebhook:\n  url: https://127.0.0.1:{webhook_port}/mutate\n{values}"
        )),
    )?;
    let (operator, _) =
        install::run_operator(c, &rendered, "sextant-operator-node", vec![]).await?;
    let webhook = start_webhook(c, &rendered, webhook_port).await?;
    let extender = install::run_scheduler_ext(
        c,
        &rendered,
        "sextant-scheduler-ext-node",
        &format!("127.0.0.1:{extender_port}"),
    )
    .await?;
    let admin = c.admin().await?;
    eventually(
        SLOW,
        "the node's NodeNetwork with an ENI and a pool",
        || {
            let admin = admin.clone();
            let name = node.name.clone();
            async move {
                let s = node_network(&admin, &name)
                    .await?
                    .status
                    .unwrap_or_default();
                Ok((!s.enis.is_empty() && !s.pool.is_empty()).then_some(()))
            }
        },
    )
    .await?;
    super::install_cni(node, &rendered)?;
    let agent = start_agent(c, &rendered, node).await?;
    let device_plugin = start_device_plugin(c, &rendered, node).await?;
    let nodes: Api<Node> = Api::all(c.admin().await?);
    eventually(SLOW, &format!("node {} Ready", node.name), || {
        let nodes = nodes.clone();
        let name = node.name.clone();
        async move { Ok(ready(&nodes.get(&name).await?).then_some(())) }
    })
    .await?;
    Ok(SextantOnNode {
        rendered,
        agent,
        components: vec![operator, webhook, extender, device_plugin],
    })
}
