//! The lab node: a "node" namespace running the real `sextant-agent`
//! (entered with `--netns`) and pod namespaces that the real `sextant-cni`
//! wires, all named with a unique prefix and removed on drop.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http::Method;
use serde_json::Value;
use sextant_agent::policy::PolicySnapshot;
use sextant_agent_api::{self as api, AgentState, Health, ServiceSpec};

use crate::{
    error::{Error, Result},
    netns::{cni_exec_as, remove_dir, sh},
};

/// How long [`Lab::start_agent`] waits for the agent to be ready.
const READY_WAIT: Duration = Duration::from_secs(30);

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
    pub(crate) cfg: LabConfig,
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
        remove_dir(&lab.bpf_root)?;
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
                return Err(Error::AgentExited { status: st });
            }
            if start.elapsed() > READY_WAIT {
                return Err(Error::AgentSlow {
                    what: "not ready".into(),
                    after: READY_WAIT,
                });
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
                return Err(Error::AgentSlow {
                    what: format!(
                        "pool holds {} IPs, {n} wanted ({})",
                        h.ipam.pool, self.cfg.pool
                    ),
                    after: timeout,
                });
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
    pub fn set_policy(&self, snapshot: &PolicySnapshot) -> Result<Value> {
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
        net_conf(&self.socket)
    }

    /// Runs `sextant-cni` for pod `i` in the node namespace; returns
    /// (success, stdout).
    pub fn cni(&self, command: &str, i: usize, stdin: &str) -> Result<(bool, String)> {
        let pod = self.pods.get(i).ok_or(Error::NoPod {
            index: i,
            why: "does not exist",
        })?;
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
        let ip = ip_of_add_result(ok, &out)?;
        if let Some(p) = self.pods.get_mut(i) {
            p.ip = Some(ip);
        }
        Ok(ip)
    }
}
/// The CNI network configuration of a lab whose agent listens on `socket`.
pub fn net_conf(socket: &Path) -> String {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "sextant",
        "type": "sextant-cni",
        "agentSocket": socket,
        "timeoutSeconds": 10,
    })
    .to_string()
}

/// The pod IP of a `sextant-cni ADD` run that printed `out` (`ok`: it
/// exited 0).
pub fn ip_of_add_result(ok: bool, out: &str) -> Result<Ipv4Addr> {
    let cni = |reason: String| Error::Cni {
        command: "ADD",
        reason,
        output: out.to_string(),
    };
    if !ok {
        return Err(cni("failed".into()));
    }
    let v: Value =
        serde_json::from_str(out).map_err(|e| cni(format!("result is not JSON: {e}")))?;
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| cni("result without an IP".into()))
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kill_agent();
        for p in &self.pods {
            let _ = sh("ip", &["netns", "del", &p.name]);
        }
        let _ = sh("ip", &["netns", "del", &self.node]);
        let _ = remove_dir(&self.bpf_root);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_is_a_static_cidr_or_a_node_network_file() {
        assert_eq!(
            LabPool::from("10.77.0.0/26"),
            LabPool::Static("10.77.0.0/26".into())
        );
        assert_eq!(
            LabPool::from("10.77.0.0/26").to_string(),
            "static pool 10.77.0.0/26"
        );
        assert_eq!(
            LabPool::NodeNetworkFile("/tmp/nn.yaml".into()).to_string(),
            "NodeNetwork file /tmp/nn.yaml"
        );
    }

    #[test]
    fn the_network_config_names_the_plugin_and_the_agent_socket() {
        let v: Value =
            serde_json::from_str(&net_conf(Path::new("/tmp/x/agent.sock"))).expect("json");
        assert_eq!(v["type"], "sextant-cni");
        assert_eq!(v["agentSocket"], "/tmp/x/agent.sock");
        assert_eq!(v["cniVersion"], "1.0.0");
    }

    #[test]
    fn the_pod_ip_is_read_from_the_add_result() {
        let out =
            r#"{"cniVersion":"1.0.0","ips":[{"address":"10.77.0.5/32","gateway":"169.254.1.1"}]}"#;
        assert_eq!(
            ip_of_add_result(true, out).expect("ip"),
            Ipv4Addr::new(10, 77, 0, 5)
        );
        for (ok, out, why) in [
            (false, out, "failed"),
            (true, "not json", "not JSON"),
            (true, r#"{"ips":[]}"#, "without an IP"),
        ] {
            let e = ip_of_add_result(ok, out).expect_err(why);
            assert!(
                matches!(&e, Error::Cni { reason, .. } if reason.contains(why)),
                "{e}"
            );
        }
    }
}
