//! One soak node: a kwok Node registered as a cloud's node controller would
//! (providerID, zone, instance type), a network namespace standing for the
//! machine, and the real `sextant-agent` inside it (`--netns`,
//! `--no-datapath`), reading its NodeNetwork from the API server under the
//! chart's agent ServiceAccount.
//!
//! ```text
//!  host netns                                   node netns <ns>
//!  kube-apiserver 127.0.0.1:<api>                 sextant-agent (NODE_NAME=<node>)
//!     ▲                                              │ https://198.19.<k>.1:<port>
//!     └── forwarder 198.19.<k>.1:<port> ◀── veth ────┘ (the API server binds loopback only)
//!  test ──curl --unix-socket <socket>──▶ agent API (a path on disk: no netns in the way)
//! ```
//!
//! The API server's certificate names only loopback and the in-cluster
//! names, so the agent's kubeconfig skips server verification; its identity
//! (a TokenRequest token of `sextant-agent`) and RBAC are the chart's.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

use crate::{
    chart::{NAMESPACE, Rendered},
    cluster::{
        BoundTo, Cluster, Process,
        install::{self, PodFacts},
        supervisor::free_port,
    },
};

/// Runs `ip args`, failing with its stderr.
pub(crate) fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// One request to an agent API socket: `(HTTP status, JSON body)`.
pub async fn agent_call(
    socket: &std::path::Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> anyhow::Result<(u16, Value)> {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.arg("-s")
        .arg("--max-time")
        .arg(timeout.as_secs().max(1).to_string())
        .arg("--unix-socket")
        .arg(socket)
        .args(["-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
    }
    let out = cmd.arg(format!("http://agent{path}")).output().await?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
    let code: u16 = code.trim().parse().context("curl status")?;
    ensure!(
        code != 0,
        "the agent at {} did not answer",
        socket.display()
    );
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Ok((code, value))
}

/// A TCP forwarder from `listen` (in the host netns) to `upstream`.
async fn forward(listen: String, upstream: String) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    Ok(tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let upstream = upstream.clone();
            tokio::spawn(async move {
                if let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                }
            });
        }
    }))
}

/// A kwok node, its netns and its agent. Dropping it stops the agent and
/// removes the netns (its pods' veths go with it) and the agent's files.
pub struct SoakNode {
    /// Node name (also the agent's NODE_NAME).
    pub name: String,
    /// Its netns name (under /var/run/netns).
    pub netns: String,
    /// The agent API socket.
    pub socket: PathBuf,
    /// The agent's state directory (its checkpoint survives `kill -9`).
    pub state_dir: PathBuf,
    agent: Option<Process>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    starts: u32,
    forwarder: tokio::task::JoinHandle<()>,
}

impl SoakNode {
    /// Registers kwok Node `name` (`zone`, instance `instance`, m5.large,
    /// room for 110 pods), builds its netns with an uplink to the API
    /// server (`index` picks the uplink's /30: 0 to 255), and starts its
    /// agent with the chart's agent container environment and `env` over it.
    pub async fn create(
        c: &Cluster,
        rendered: &Rendered,
        index: u8,
        name: &str,
        zone: &str,
        instance: &str,
        env: &[(&str, String)],
    ) -> anyhow::Result<SoakNode> {
        let admin = c.admin().await?;
        let nodes: Api<Node> = Api::all(admin);
        nodes
            .create(
                &PostParams::default(),
                &install::kwok_node(name, zone, instance, "m5.large"),
            )
            .await
            .with_context(|| format!("creating node {name}"))?;
        // `sextant.io/ip` as the device plugin advertises it (an m5.large's
        // 3 ENIs × 9 secondary addresses), so the scheduler and its
        // extender see the capacity the chart's DaemonSets would publish.
        let resources =
            json!({"cpu": "16", "memory": "64Gi", "pods": "110", "sextant.io/ip": "27"});
        nodes
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {"capacity": resources, "allocatable": resources}})),
            )
            .await
            .with_context(|| format!("patching node {name}'s capacity"))?;

        // Short names: interface names have 15 characters at most.
        let tag = format!("{:x}{index:02x}", std::process::id() % 0xfff);
        let netns = format!("sxk-{tag}");
        let (host_if, node_if) = (format!("sxk{tag}h"), format!("sxk{tag}n"));
        let (host_ip, node_ip) = (format!("198.19.{index}.1"), format!("198.19.{index}.2"));
        let _ = ip(&["netns", "del", &netns]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &netns])?;
        ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &node_if, "netns", &netns,
        ])?;
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{node_ip}/30"),
            "dev",
            &node_if,
        ])?;
        ip(&["-n", &netns, "link", "set", &node_if, "up"])?;
        let port = free_port()?;
        let forwarder = forward(
            format!("{host_ip}:{port}"),
            c.info.api_url.trim_start_matches("https://").to_owned(),
        )
        .await?;

        let dir = install::scratch(c, &format!("soak-{name}"))?;
        // Bound to its Node, as a DaemonSet pod's token is (the chart's
        // admission policy lets only such a token write its NodeNetwork).
        let (shared, _) = c
            .bound_service_account_kubeconfig(NAMESPACE, "sextant-agent", BoundTo::Node(name))
            .await?;
        let kubeconfig = dir.join("kubeconfig");
        let text = std::fs::read_to_string(&shared)?
            .replace(&c.info.api_url, &format!("https://{host_ip}:{port}"))
            .lines()
            .map(|l| {
                if l.trim_start().starts_with("certificate-authority:") {
                    "    insecure-skip-tls-verify: true".to_owned()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(&kubeconfig, text + "\n")?;

        let socket = dir.join("agent.sock");
        let state_dir = dir.join("state");
        let mut overrides: Vec<(&str, String)> = vec![
            ("SEXTANT_AGENT_SOCKET", socket.display().to_string()),
            ("SEXTANT_STATE_DIR", state_dir.display().to_string()),
            ("SEXTANT_BPF_ROOT", dir.join("bpf").display().to_string()),
            ("SEXTANT_NETNS", format!("/var/run/netns/{netns}")),
            ("SEXTANT_NO_DATAPATH", "true".to_owned()),
        ];
        overrides.extend(env.iter().map(|(k, v)| (*k, v.clone())));
        let pod = install::pod_spec(rendered, "sextant-agent")?;
        let container = pod
            .containers
            .iter()
            .find(|k| k.name == "agent")
            .context("the agent DaemonSet has no container agent")?;
        let mut env = install::container_env(
            container,
            &PodFacts {
                pod_name: format!("sextant-agent-{name}"),
                node_name: name.to_owned(),
            },
            &overrides,
        )?;
        env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
        env.push((
            "RUST_LOG".into(),
            std::env::var("SEXTANT_E2E_LOG").unwrap_or_else(|_| "info".into()),
        ));
        let mut node = SoakNode {
            name: name.to_owned(),
            netns,
            socket,
            state_dir,
            agent: None,
            args: container.args.clone().unwrap_or_default(),
            env,
            starts: 0,
            forwarder,
        };
        node.start_agent(c).await?;
        Ok(node)
    }

    /// Starts the agent (again: it restores from its checkpoint) and waits
    /// until its API says ready or degraded.
    pub async fn start_agent(&mut self, c: &Cluster) -> anyhow::Result<()> {
        let _ = std::fs::remove_file(&self.socket);
        self.starts += 1;
        let log = format!("agent-{}-{}", self.name, self.starts);
        let mut process = c.spawn(&log, &install::bin("sextant-agent")?, &self.args, &self.env)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = process.exited() {
                bail!("agent {log} exited ({status}):\n{}", process.log_tail(40));
            }
            if let Ok((200, h)) = agent_call(
                &self.socket,
                "GET",
                "/v1/healthz",
                None,
                Duration::from_secs(2),
            )
            .await
                && (h["state"] == "ready" || h["state"] == "degraded")
            {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "agent {log} not ready within 60 s:\n{}",
                process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.agent = Some(process);
        Ok(())
    }

    /// `kill -9` of the agent, as a crash: no shutdown path runs.
    pub fn kill_agent(&mut self) {
        if let Some(mut p) = self.agent.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &p.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while p.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Whether the agent process runs.
    pub fn agent_up(&mut self) -> bool {
        self.agent.as_mut().is_some_and(|p| p.exited().is_none())
    }

    /// The last lines of the running (or last) agent's log.
    pub fn agent_log_tail(&self, lines: usize) -> String {
        self.agent
            .as_ref()
            .map_or_else(|| "(agent not running)".to_owned(), |p| p.log_tail(lines))
    }

    /// `GET /v1/ipam`: the agent's allocations.
    pub async fn allocations(&self) -> anyhow::Result<Value> {
        let (code, v) = agent_call(
            &self.socket,
            "GET",
            "/v1/ipam",
            None,
            Duration::from_secs(5),
        )
        .await?;
        ensure!(
            code == 200,
            "{}: GET /v1/ipam answered {code}: {v}",
            self.name
        );
        Ok(v)
    }

    /// `GET /v1/healthz`.
    pub async fn health(&self) -> anyhow::Result<Value> {
        let (code, v) = agent_call(
            &self.socket,
            "GET",
            "/v1/healthz",
            None,
            Duration::from_secs(5),
        )
        .await?;
        ensure!(
            code == 200,
            "{}: GET /v1/healthz answered {code}: {v}",
            self.name
        );
        Ok(v)
    }

    /// The node is lost: its agent dies with the machine, the Node object is
    /// deleted, and the netns (with every pod veth in it) goes.
    pub async fn lose(mut self, admin: &Client) -> anyhow::Result<()> {
        self.kill_agent();
        let nodes: Api<Node> = Api::all(admin.clone());
        nodes
            .delete(&self.name, &DeleteParams::default())
            .await
            .with_context(|| format!("deleting node {}", self.name))?;
        Ok(())
    }
}

impl Drop for SoakNode {
    fn drop(&mut self) {
        self.kill_agent();
        self.forwarder.abort();
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}
