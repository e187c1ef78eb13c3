//! A node in network namespaces on this machine, for tests, benchmarks and
//! `sextantctl lab`: a "node" namespace where the real `sextant-agent` runs
//! (entered with `--netns`), pod namespaces wired by the real `sextant-cni`,
//! and helpers to run traffic inside a pod. Everything is named with a
//! unique prefix and removed on drop. Needs root.

use std::{
    fs::File,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use hyper::Method;
use serde_json::Value;

use sextant_agent_api::{self as api, AgentState, Health, ServiceSpec};

use crate::error::{Error, Result};

/// What to build.
#[derive(Clone, Debug)]
pub struct LabConfig {
    /// Unique name prefix (short: interface and netns names derive from it).
    pub prefix: String,
    /// Path of the `sextant-agent` binary.
    pub agent_bin: PathBuf,
    /// Path of the `sextant-cni` binary.
    pub cni_bin: PathBuf,
    /// Where pod IPs come from: a static pool (`"10.77.1.0/26".into()`) or a
    /// NodeNetwork file kept by a feeder.
    pub pool: LabPool,
    /// Number of pod namespaces.
    pub pods: usize,
    /// Load the eBPF datapath.
    pub datapath: bool,
}

/// Where the lab's agent gets its pod IPs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LabPool {
    /// `--static-pool`: IPs or CIDRs, e.g. `10.77.1.0/26`.
    Static(String),
    /// `--node-network-file`: a NodeNetwork (spec and status) that something
    /// else keeps filled, e.g. `sextantctl lab` running node IPAM on the
    /// `sim` cloud; the agent's usage goes to `PATH.usage.json`.
    NodeNetworkFile(PathBuf),
}

impl From<&str> for LabPool {
    fn from(cidrs: &str) -> Self {
        LabPool::Static(cidrs.to_string())
    }
}

impl From<String> for LabPool {
    fn from(cidrs: String) -> Self {
        LabPool::Static(cidrs)
    }
}

impl std::fmt::Display for LabPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabPool::Static(c) => write!(f, "static pool {c}"),
            LabPool::NodeNetworkFile(p) => write!(f, "NodeNetwork file {}", p.display()),
        }
    }
}

/// One pod namespace.
#[derive(Clone, Debug)]
pub struct LabPod {
    /// Netns name (under /var/run/netns).
    pub name: String,
    /// CNI container id.
    pub container_id: String,
    /// IP after ADD.
    pub ip: Option<Ipv4Addr>,
}

impl LabPod {
    /// Netns path.
    pub fn netns(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }
}

/// The running lab. See the module docs.
pub struct Lab {
    cfg: LabConfig,
    /// Node namespace name.
    pub node: String,
    /// Pods.
    pub pods: Vec<LabPod>,
    /// Agent API socket.
    pub socket: PathBuf,
    /// bpffs pin root.
    pub bpf_root: PathBuf,
    /// Checkpoint dir.
    pub state_dir: PathBuf,
    agent: Option<Child>,
    rt: tokio::runtime::Runtime,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {cmd}"), e))?;
    if !out.status.success() {
        return Err(Error::io(
            format!("{cmd} {}", args.join(" ")),
            std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may build labs (root), with the reason when not.
pub fn can_run() -> std::result::Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (network namespaces, veths, BPF)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("needs iproute2's `ip`".into());
    }
    Ok(())
}

impl Lab {
    /// Creates the node and pod namespaces (no agent yet).
    pub fn new(cfg: LabConfig) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("lab runtime", e))?;
        let node = format!("{}-node", cfg.prefix);
        let dir = std::env::temp_dir().join(format!("sextant-lab-{}", cfg.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io("lab dir", e))?;
        let mut lab = Lab {
            node: node.clone(),
            pods: Vec::new(),
            socket: dir.join("agent.sock"),
            bpf_root: PathBuf::from("/sys/fs/bpf").join(format!("sextant-lab-{}", cfg.prefix)),
            // On a node the checkpoint lives on the /var/run tmpfs; keep it
            // on a tmpfs here too when there is one.
            state_dir: if Path::new("/dev/shm").is_dir() {
                PathBuf::from(format!("/dev/shm/sextant-lab-{}", cfg.prefix))
            } else {
                dir.join("state")
            },
            agent: None,
            rt,
            cfg,
        };
        crate::datapath::remove_pins(&lab.bpf_root)?;
        let _ = std::fs::remove_dir_all(&lab.state_dir);
        let _ = sh("ip", &["netns", "del", &node]);
        sh("ip", &["netns", "add", &node])?;
        sh("ip", &["-n", &node, "link", "set", "lo", "up"])?;
        for i in 0..lab.cfg.pods {
            let name = format!("{}-p{i}", lab.cfg.prefix);
            let _ = sh("ip", &["netns", "del", &name]);
            sh("ip", &["netns", "add", &name])?;
            lab.pods.push(LabPod {
                container_id: format!("{}-c{i}", lab.cfg.prefix),
                name,
                ip: None,
            });
        }
        Ok(lab)
    }

    /// Starts `sextant-agent` in the node namespace and waits until it is ready.
    pub fn start_agent(&mut self) -> Result<()> {
        self.start_agent_with(&[])
    }

    /// [`Lab::start_agent`] with extra `sextant-agent` flags.
    pub fn start_agent_with(&mut self, extra: &[&str]) -> Result<()> {
        let mut cmd = Command::new(&self.cfg.agent_bin);
        cmd.args(extra)
            .arg("--netns")
            .arg(format!("/var/run/netns/{}", self.node))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--bpf-root")
            .arg(&self.bpf_root)
            .env_remove("NODE_NAME")
            .env_remove("SEXTANT_STATIC_POOL")
            .env_remove("SEXTANT_NODE_NETWORK_FILE")
            .env(
                "RUST_LOG",
                std::env::var("SEXTANT_LAB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null());
        match &self.cfg.pool {
            LabPool::Static(cidrs) => {
                cmd.arg("--static-pool").arg(cidrs);
            }
            LabPool::NodeNetworkFile(path) => {
                // Report usage every second: the feeder grows the pool from it.
                cmd.arg("--node-network-file")
                    .arg(path)
                    .arg("--usage-report-interval")
                    .arg("1s");
            }
        }
        if !self.cfg.datapath {
            cmd.arg("--no-datapath");
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::io("starting sextant-agent", e))?;
        self.agent = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(h) = self.health()
                && (h.state == AgentState::Ready || h.state == AgentState::Degraded)
            {
                return Ok(());
            }
            if let Some(c) = self.agent.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(Error::io(
                    "sextant-agent",
                    std::io::Error::other(format!("exited: {st}")),
                ));
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(Error::io(
                    "sextant-agent",
                    std::io::Error::other("not ready after 30 s"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the agent's pool holds at least `n` IPs.
    pub fn wait_pool(&self, n: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let h = self.health()?;
            if h.ipam.pool >= n {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::io(
                    "sextant-agent",
                    std::io::Error::other(format!(
                        "pool holds {} IPs after {timeout:?}, {n} wanted ({})",
                        h.ipam.pool, self.cfg.pool
                    )),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the agent (SIGKILL: no cleanup, as a crash would).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /v1/healthz`.
    pub fn health(&self) -> Result<Health> {
        self.rt
            .block_on(api::call_json(
                &self.socket,
                Method::GET,
                "/v1/healthz",
                None::<&()>,
                Duration::from_secs(2),
            ))
            .map_err(Error::from)
    }

    /// Sends a policy snapshot (`PUT /v1/policy`) and returns the agent's report.
    pub fn set_policy(&self, snapshot: &crate::policy::PolicySnapshot) -> Result<Value> {
        self.rt
            .block_on(api::call_json(
                &self.socket,
                Method::PUT,
                "/v1/policy",
                Some(snapshot),
                Duration::from_secs(30),
            ))
            .map_err(Error::from)
    }

    /// Sets a ClusterIP service through the agent API.
    pub fn set_service(&self, spec: &ServiceSpec) -> Result<()> {
        let _: Value = self.rt.block_on(api::call_json(
            &self.socket,
            Method::POST,
            "/v1/services",
            Some(spec),
            Duration::from_secs(10),
        ))?;
        Ok(())
    }

    /// `GET /metrics` text.
    pub fn metrics(&self) -> Result<String> {
        let (_, b) = self.rt.block_on(api::call(
            &self.socket,
            Method::GET,
            "/metrics",
            None,
            Duration::from_secs(2),
        ))?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// The CNI network configuration the lab uses.
    pub fn net_conf(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "sextant",
            "type": "sextant-cni",
            "agentSocket": self.socket,
            "timeoutSeconds": 10,
        })
        .to_string()
    }

    /// Runs `sextant-cni` for pod `i` in the node namespace; returns
    /// (success, stdout).
    pub fn cni(&self, command: &str, i: usize, stdin: &str) -> Result<(bool, String)> {
        let pod = self
            .pods
            .get(i)
            .ok_or_else(|| Error::BadRequest(format!("no pod {i}")))?;
        cni_exec_as(
            &self.node,
            &self.cfg.cni_bin,
            command,
            &pod.container_id,
            &pod.netns(),
            stdin,
            &pod.name,
        )
    }

    /// CNI ADD for pod `i`; records its IP.
    pub fn add(&mut self, i: usize) -> Result<Ipv4Addr> {
        let (ok, out) = self.cni("ADD", i, &self.net_conf())?;
        if !ok {
            return Err(Error::BadRequest(format!("sextant-cni ADD: {out}")));
        }
        let v: Value = serde_json::from_str(&out)
            .map_err(|e| Error::BadRequest(format!("ADD result: {e}")))?;
        let ip = v["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| Error::BadRequest(format!("ADD result without an IP: {out}")))?;
        if let Some(p) = self.pods.get_mut(i) {
            p.ip = Some(ip);
        }
        Ok(ip)
    }
}

/// Runs a CNI plugin binary as the runtime would, inside netns `node`, for
/// pod `lab/pod`.
pub fn cni_exec(
    node: &str,
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &Path,
    stdin: &str,
) -> Result<(bool, String)> {
    cni_exec_as(node, bin, command, container_id, netns, stdin, "pod")
}

/// [`cni_exec`] for pod `lab/<pod_name>` (`CNI_ARGS`).
pub fn cni_exec_as(
    node: &str,
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &Path,
    stdin: &str,
    pod_name: &str,
) -> Result<(bool, String)> {
    use std::io::Write;
    let node_ns = File::open(format!("/var/run/netns/{node}"))
        .map_err(|e| Error::io(format!("opening netns {node}"), e))?;
    let bin = bin.to_path_buf();
    let pod_name = pod_name.to_string();
    let (command, container_id, netns, stdin) = (
        command.to_string(),
        container_id.to_string(),
        netns.to_path_buf(),
        stdin.to_string(),
    );
    let plugin_dir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    // A thread in the node netns spawns the plugin, which inherits it.
    std::thread::spawn(move || -> Result<(bool, String)> {
        nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering the node netns", e.into()))?;
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", plugin_dir)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod_name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", bin.display()), e))?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("waiting for the plugin", e))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    })
    .join()
    .map_err(|_| Error::io("cni worker", std::io::Error::other("panicked")))?
}

/// Runs `f` on a thread inside netns `name` (for sockets in a pod).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let ns = File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| Error::io(format!("opening netns {name}"), e))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering netns", e.into()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::io("netns worker", std::io::Error::other("panicked")))?
}

/// Starts a thread in netns `name` and returns its handle (servers).
pub fn spawn_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| Error::io(format!("opening netns {name}"), e))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering netns", e.into()))?;
        Ok(f())
    }))
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_agent();
        for p in &self.pods {
            let _ = sh("ip", &["netns", "del", &p.name]);
        }
        let _ = sh("ip", &["netns", "del", &self.node]);
        let _ = crate::datapath::remove_pins(&self.bpf_root);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// One row of the lab's connectivity table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Source pod.
    pub from: String,
    /// Destination (`pod IP:port` or `VIP:port`).
    pub to: String,
    /// Who answered (the backend's tag), or the error.
    pub answer: std::result::Result<String, String>,
}

/// A lab pod's address and, when it came from a NodeNetwork, its ENI and subnet.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodAddress {
    /// Pod netns name.
    pub pod: String,
    /// The IP the agent gave it.
    pub ip: Ipv4Addr,
    /// ENI holding the IP (`status.pool[ip].eni`).
    pub eni: Option<String>,
    /// Subnet of that ENI.
    pub subnet: Option<String>,
}

/// What [`demo`] saw.
#[derive(Clone, Debug)]
pub struct DemoReport {
    /// Where pod IPs came from.
    pub source: String,
    /// Pod addresses.
    pub pods: Vec<PodAddress>,
    /// Connectivity probes.
    pub probes: Vec<Probe>,
    /// The example network policy's probes, each with the verdict it must get
    /// (true: answered).
    pub policy: Vec<(Probe, bool)>,
    /// Datapath packet counters after the probes.
    pub counters: Vec<(String, u64)>,
    /// `GET /v1/healthz` after the probes.
    pub health: Health,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "pod IPs from {}", self.source)?;
        writeln!(f, "{:<14} {:<16} {:<16} subnet", "pod", "ip", "eni")?;
        for p in &self.pods {
            writeln!(
                f,
                "{:<14} {:<16} {:<16} {}",
                p.pod,
                p.ip.to_string(),
                p.eni.as_deref().unwrap_or("-"),
                p.subnet.as_deref().unwrap_or("-")
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:<14} {:<22} answer", "from", "to")?;
        for p in &self.probes {
            let a = match &p.answer {
                Ok(s) => format!("ok ({s})"),
                Err(e) => format!("FAILED: {e}"),
            };
            writeln!(f, "{:<14} {:<22} {a}", p.from, p.to)?;
        }
        if !self.policy.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "network policy docs/examples/protected-db-policy.yaml: only app=employee (pod0) may reach app=protected-db (pod1) on TCP 6379; pod2 is app=visitor"
            )?;
            writeln!(f, "{:<14} {:<22} {:<9} got", "from", "to", "expected")?;
            for (p, allowed) in &self.policy {
                let got = match &p.answer {
                    Ok(_) => "answered".to_string(),
                    Err(_) => "no answer (dropped)".to_string(),
                };
                let verdict = if p.answer.is_ok() == *allowed {
                    ""
                } else {
                    "  <- WRONG"
                };
                let expected = if *allowed { "allowed" } else { "denied" };
                writeln!(
                    f,
                    "{:<14} {:<22} {expected:<9} {got}{verdict}",
                    p.from, p.to
                )?;
            }
        }
        writeln!(
            f,
            "agent: {} — {}",
            self.health.state, self.health.ipam.status
        )?;
        let c: Vec<String> = self
            .counters
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        writeln!(f, "datapath counters: {}", c.join(" "))
    }
}

fn echo_server(lab: &Lab, pod: usize, port: u16, tag: String) -> Result<()> {
    let ip = lab
        .pods
        .get(pod)
        .and_then(|p| p.ip)
        .ok_or_else(|| Error::BadRequest(format!("pod {pod} has no IP")))?;
    line_server(
        &lab.pods[pod].name,
        std::net::SocketAddrV4::new(ip, port),
        tag,
    )
}

/// A TCP server in netns `ns` on `at` answering each line `l` with
/// `"{tag} {l}"` (one write per answer: no Nagle / delayed-ACK stalls);
/// returns once it listens.
pub fn line_server(ns: &str, at: std::net::SocketAddrV4, tag: String) -> Result<()> {
    use std::io::{BufRead, BufReader, Write};
    let (tx, rx) = std::sync::mpsc::channel();
    let _ = spawn_in_netns(ns, move || {
        let l = match std::net::TcpListener::bind(at) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
                return;
            }
        };
        let _ = tx.send(Ok(()));
        for s in l.incoming().flatten() {
            let tag = tag.clone();
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let Ok(mut w) = s.try_clone() else { return };
                for line in BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if w.write_all(format!("{tag} {line}\n").as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    })?;
    rx.recv_timeout(Duration::from_secs(5))
        .map_err(|_| Error::BadRequest(format!("server on {at} did not start")))?
        .map_err(|e| Error::BadRequest(format!("server on {at}: {e}")))
}

fn probe(lab: &Lab, from: usize, to: std::net::SocketAddrV4) -> Probe {
    probe_within(lab, from, to, Duration::from_secs(2))
}

fn probe_within(lab: &Lab, from: usize, to: std::net::SocketAddrV4, wait: Duration) -> Probe {
    use std::io::{BufRead, BufReader, Write};
    let name = lab.pods[from].name.clone();
    let answer = in_netns(&name, move || -> std::io::Result<String> {
        let s = std::net::TcpStream::connect_timeout(&to.into(), wait)?;
        s.set_read_timeout(Some(wait))?;
        s.set_nodelay(true)?;
        let mut w = s.try_clone()?;
        w.write_all(b"hello\n")?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line)?;
        Ok(line.split(' ').next().unwrap_or_default().to_string())
    })
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    Probe {
        from: name,
        to: to.to_string(),
        answer,
    }
}

/// The docs' example policy on pods 0 (employee), 1 (protected-db), 2
/// (visitor), the rest app=web: probes with the verdict each must get.
fn policy_demo(lab: &Lab) -> Result<Vec<(Probe, bool)>> {
    let mut doc: Value =
        serde_yaml::from_str(include_str!("../../docs/examples/protected-db-policy.yaml"))
            .map_err(|e| Error::BadRequest(format!("the example policy: {e}")))?;
    doc["metadata"]["namespace"] = "lab".into();
    let app = |i: usize| match i {
        0 => "employee",
        1 => "protected-db",
        2 => "visitor",
        _ => "web",
    };
    let snapshot = crate::policy::PolicySnapshot {
        policies: vec![doc],
        pods: lab
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| crate::policy::PodInfo {
                namespace: "lab".into(),
                name: p.name.clone(),
                labels: [("app".to_string(), app(i).to_string())].into(),
                ip: p.ip,
            })
            .collect(),
        ..Default::default()
    };
    let db = lab
        .pods
        .get(1)
        .and_then(|p| p.ip)
        .ok_or_else(|| Error::BadRequest("the policy demo needs pod1".into()))?;
    echo_server(lab, 1, 6379, "redis".into())?;
    let report = lab.set_policy(&snapshot)?;
    if report["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
        return Err(Error::BadRequest(format!(
            "the example policy was refused: {report}"
        )));
    }
    let wait = Duration::from_millis(800);
    let redis = std::net::SocketAddrV4::new(db, 6379);
    Ok(vec![
        (probe_within(lab, 0, redis, wait), true),
        (probe_within(lab, 2, redis, wait), false),
        (
            probe_within(lab, 0, std::net::SocketAddrV4::new(db, 8080), wait),
            false,
        ),
        (probe_within(lab, 3, redis, wait), false),
    ])
}

/// Where each pod's IP came from, per the NodeNetwork file (ENI and subnet),
/// and a line naming the source.
fn pod_addresses(lab: &Lab) -> (String, Vec<PodAddress>) {
    let nn = match &lab.cfg.pool {
        LabPool::NodeNetworkFile(path) => std::fs::read(path)
            .ok()
            .and_then(|b| crate::node_file::parse(path, &b).ok()),
        LabPool::Static(_) => None,
    };
    let status = nn.as_ref().and_then(|n| n.status.as_ref());
    let pods = lab
        .pods
        .iter()
        .filter_map(|p| {
            let ip = p.ip?;
            let eni = status
                .and_then(|s| s.pool.get(&ip.to_string()))
                .map(|e| e.eni.clone());
            let subnet = eni.as_ref().and_then(|id| {
                status?
                    .enis
                    .iter()
                    .find(|e| &e.id == id)
                    .map(|e| e.subnet_id.clone())
            });
            Some(PodAddress {
                pod: p.name.clone(),
                ip,
                eni,
                subnet,
            })
        })
        .collect();
    let source = match &nn {
        Some(nn) => {
            let enis: Vec<String> = status
                .map(|s| {
                    s.enis
                        .iter()
                        .filter(|e| s.pool.values().any(|p| p.eni == e.id))
                        .map(|e| format!("{} ({})", e.id, e.subnet_id))
                        .collect()
                })
                .unwrap_or_default();
            format!(
                "NodeNetwork {} ({}, instance {}, {}), pool on ENIs {}",
                nn.metadata.name.as_deref().unwrap_or("?"),
                format!("{:?}", nn.spec.provider).to_lowercase(),
                nn.spec.instance_id.as_deref().unwrap_or("?"),
                nn.spec.instance_type.as_deref().unwrap_or("?"),
                enis.join(", ")
            )
        }
        None => lab.cfg.pool.to_string(),
    };
    (source, pods)
}

/// The `sextantctl lab` scenario on the static pool `10.77.0.0/26`: see [`demo_with`].
pub fn demo(agent_bin: &Path, cni_bin: &Path, pods: usize) -> Result<DemoReport> {
    demo_with(agent_bin, cni_bin, pods, "10.77.0.0/26".into())
}

/// The `sextantctl lab` scenario: a node with `pods` (>= 4) pods wired by the
/// real agent and CNI with the eBPF datapath, IPs from `pool`, a ClusterIP
/// `10.96.0.10:80` over pods 1.., probes pod to pod and pod to service, and
/// reports. The lab is removed when this returns.
pub fn demo_with(
    agent_bin: &Path,
    cni_bin: &Path,
    pods: usize,
    pool: LabPool,
) -> Result<DemoReport> {
    can_run().map_err(|why| Error::io("sextant lab", std::io::Error::other(why)))?;
    let pods = pods.max(4);
    let mut lab = Lab::new(LabConfig {
        prefix: format!("sxlab{}", std::process::id() % 100_000),
        agent_bin: agent_bin.to_path_buf(),
        cni_bin: cni_bin.to_path_buf(),
        pool,
        pods,
        datapath: true,
    })?;
    lab.start_agent()?;
    lab.wait_pool(pods, Duration::from_secs(30))?;
    for i in 0..pods {
        lab.add(i)?;
    }
    let (source, addresses) = pod_addresses(&lab);
    let mut backends = Vec::new();
    for i in 1..pods {
        echo_server(&lab, i, 8080, format!("pod{i}"))?;
        if let Some(ip) = lab.pods[i].ip {
            backends.push(api::Backend { ip, port: 8080 });
        }
    }
    let vip = Ipv4Addr::new(10, 96, 0, 10);
    lab.set_service(&ServiceSpec {
        frontend: api::Frontend {
            vip,
            port: 80,
            proto: api::Proto::Tcp,
        },
        backends,
    })?;
    let mut probes = Vec::new();
    for i in 1..pods {
        if let Some(ip) = lab.pods[i].ip {
            probes.push(probe(&lab, 0, std::net::SocketAddrV4::new(ip, 8080)));
        }
    }
    for _ in 0..6 {
        probes.push(probe(&lab, 0, std::net::SocketAddrV4::new(vip, 80)));
    }
    let policy = policy_demo(&lab)?;
    let text = lab.metrics()?;
    let counters = crate::datapath::COUNTER_NAMES
        .iter()
        .map(|(name, _)| {
            let key = format!("sextant_agent_datapath_packets_total{{verdict=\"{name}\"}}");
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (name.to_string(), v)
        })
        .collect();
    let health = lab.health()?;
    Ok(DemoReport {
        source,
        pods: addresses,
        probes,
        policy,
        counters,
        health,
    })
}
