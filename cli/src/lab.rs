//! `sextantctl lab`: one node of the `sim` cloud whose NodeNetwork the
//! operator's real node IPAM fills, and the real agent, CNI and eBPF datapath
//! (`sextant-lab`, root) serving pods in network namespaces from it.
//!
//! ```text
//!  SimCloud ◀── NodeIpam::reconcile ──▶ NodeNetwork (spec + status) ──file──▶ sextant-agent
//!                     ▲                                                          │
//!                     └──── feeder: usage merged into status ◀── PATH.usage.json ┘
//! ```
//!
//! The pods live in their own namespaces, routed only inside the lab's node
//! namespace, so the sim subnet [`SUBNET_CIDR`] never meets the host's routes.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use serde_json::Value;
use sextant_cloud::{
    EniCloud, Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_crds::{
    AgentUsage, IpamSpec, NodeNetwork, NodeNetworkSpec, NodeNetworkStatus, Provider, ReleaseState,
};
use sextant_ipam::{
    metrics::IpamMetrics,
    node::{IpamConfig, NodeIpam},
};

/// The sim subnet pods get their IPs from.
pub const SUBNET_CIDR: &str = "10.91.0.0/16";
const VPC: &str = "vpc-lab";
const ZONE: &str = "us-east-1a";
const CLUSTER: &str = "lab";
const NODE: &str = "lab-node";
/// Extra free IPs above the lab's pods that the pool keeps ready.
const HEADROOM: u32 = 2;
/// Reconciles before giving up on filling the pool.
const MAX_ROUNDS: usize = 20;

/// One simulated instance and its NodeNetwork, driven by node IPAM.
pub struct SimNode {
    sim: Arc<SimCloud>,
    ipam: NodeIpam,
    /// The NodeNetwork as the operator keeps it.
    pub nn: NodeNetwork,
    /// Subnet of the instance and its pod ENIs.
    pub subnet_id: String,
    /// The instance.
    pub instance_id: String,
    /// Reconciles run so far.
    pub reconciles: usize,
}

/// The instance type for `pods` pods: the smallest simulated one that holds them.
fn instance_type_for(pods: u32) -> &'static str {
    if pods + HEADROOM <= 16 {
        "m5.large"
    } else {
        "m5.4xlarge"
    }
}

impl SimNode {
    /// A sim cloud with one subnet ([`SUBNET_CIDR`]) and one instance, and
    /// the instance's NodeNetwork spec with `preAllocate` covering `pods`.
    pub fn new(pods: u32) -> anyhow::Result<Self> {
        let sim = Arc::new(SimCloud::new(SimConfig::instant(SimProvider::Aws, 1)));
        let subnet_id = sim.add_subnet(VPC, ZONE, SUBNET_CIDR, Tags::new())?;
        sim.add_security_group(VPC, "pods", Tags::new());
        let instance_type = instance_type_for(pods);
        let instance_id = sim.add_instance(instance_type, &subnet_id)?;
        let nn = NodeNetwork::new(
            NODE,
            NodeNetworkSpec {
                provider: Provider::Aws,
                instance_id: Some(instance_id.clone()),
                instance_type: Some(instance_type.into()),
                zone: Some(ZONE.into()),
                vpc_id: Some(VPC.into()),
                ipam: IpamSpec {
                    pre_allocate: Some(pods + HEADROOM),
                    subnet_ids: vec![subnet_id.clone()],
                    ..IpamSpec::default()
                },
                pod_cidrs: vec![],
            },
        );
        let cloud: Arc<dyn EniCloud> = sim.clone();
        let ipam = NodeIpam::new(
            cloud,
            IpamConfig {
                cluster: CLUSTER.into(),
                ..IpamConfig::default()
            },
            IpamMetrics::default(),
        );
        Ok(SimNode {
            sim,
            ipam,
            nn,
            subnet_id,
            instance_id,
            reconciles: 0,
        })
    }

    /// Pod IPs in the NodeNetwork's pool.
    pub fn pool_len(&self) -> usize {
        self.nn.status.as_ref().map_or(0, |s| s.pool.len())
    }

    /// Runs the operator's node IPAM once; true when the status changed.
    pub async fn reconcile(&mut self) -> anyhow::Result<bool> {
        self.reconciles += 1;
        let r = self
            .ipam
            .reconcile(&self.nn, jiff::Timestamp::now())
            .await
            .context("node IPAM reconcile")?;
        if let Some(e) = r.error {
            return Err(e).context("node IPAM reconcile against the sim cloud");
        }
        let changed = self.nn.status.as_ref() != Some(&r.status);
        self.nn.status = Some(r.status);
        Ok(changed)
    }

    /// Reconciles until the pool holds `want` IPs and the plan is done.
    pub async fn fill(&mut self, want: usize) -> anyhow::Result<()> {
        for _ in 0..MAX_ROUNDS {
            let changed = self.reconcile().await?;
            if !changed && self.pool_len() >= want {
                return Ok(());
            }
        }
        if self.pool_len() < want {
            bail!(
                "node IPAM gave {} IPs after {MAX_ROUNDS} reconciles, {want} wanted",
                self.pool_len()
            );
        }
        Ok(())
    }

    /// Takes the agent's report (the status merge patch it would PATCH):
    /// `usage` and its `release` answers.
    pub fn apply_usage(&mut self, report: &Value) -> anyhow::Result<()> {
        let st = &report["status"];
        let status = self
            .nn
            .status
            .get_or_insert_with(NodeNetworkStatus::default);
        if let Some(u) = st.get("usage") {
            status.usage = Some(
                serde_json::from_value::<AgentUsage>(u.clone()).context("usage in the report")?,
            );
        }
        if let Some(r) = st.get("release") {
            let answers: BTreeMap<String, ReleaseState> =
                serde_json::from_value(r.clone()).context("release answers in the report")?;
            status.release.extend(answers);
        }
        Ok(())
    }

    /// Whether the operator has something to do: pods waiting, free IPs
    /// below `preAllocate`, or release answers to act on.
    pub fn wants_reconcile(&self) -> bool {
        let Some(s) = &self.nn.status else {
            return true;
        };
        let held = s.usage.as_ref().map_or(0, |u| {
            u.used.keys().filter(|ip| s.pool.contains_key(*ip)).count()
                + u.cooling
                    .iter()
                    .filter(|ip| s.pool.contains_key(*ip))
                    .count()
        });
        let free = s.pool.len().saturating_sub(held);
        let pending = s.usage.as_ref().map_or(0, |u| u.pending);
        let answered = s.release.values().any(|st| {
            matches!(
                st,
                ReleaseState::ReadyForRelease | ReleaseState::DoNotRelease
            )
        });
        pending > 0 || free < self.nn.spec.ipam.pre_allocate() as usize || answered
    }

    /// Writes the NodeNetwork as JSON, atomically (temp file, rename).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.nn)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
    }

    /// IP -> (ENI, subnet) of every address the sim cloud gave the instance's
    /// ENIs.
    pub fn cloud_addresses(&self) -> BTreeMap<Ipv4Addr, (String, String)> {
        self.sim
            .all_enis()
            .into_iter()
            .filter(|e| {
                e.attachment
                    .as_ref()
                    .is_some_and(|a| a.instance_id == self.instance_id)
            })
            .flat_map(|e| {
                let (id, subnet) = (e.id.clone(), e.subnet_id.clone());
                std::iter::once(e.primary_ip)
                    .chain(e.secondary_ips)
                    .map(move |ip| (ip, (id.clone(), subnet.clone())))
            })
            .collect()
    }

    /// The header line: where the pool comes from.
    pub fn header(&self) -> String {
        let enis: Vec<String> = self
            .nn
            .status
            .iter()
            .flat_map(|s| &s.enis)
            .filter(|e| !e.addresses.is_empty())
            .map(|e| {
                format!(
                    "{} (device {}, {} IPs)",
                    e.id,
                    e.device_index,
                    e.addresses.len()
                )
            })
            .collect();
        format!(
            "sim cloud: {VPC}, subnet {} {SUBNET_CIDR}; instance {} ({}); NodeNetwork {NODE}: {} pool IPs on {}",
            self.subnet_id,
            self.instance_id,
            self.nn.spec.instance_type.as_deref().unwrap_or("?"),
            self.pool_len(),
            enis.join(", ")
        )
    }
}

/// A pod address as `sextant-lab --report-json` writes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodAddress {
    /// Pod netns name.
    pub pod: String,
    /// Its IP.
    pub ip: Ipv4Addr,
}

/// The `pods` of `sextant-lab --report-json`: `[{"pod": .., "ip": ..}, ..]`.
fn pod_addresses(report: &Value) -> anyhow::Result<Vec<PodAddress>> {
    let Some(pods) = report["pods"].as_array() else {
        bail!("the lab report has no pods: {report}");
    };
    pods.iter()
        .map(|p| {
            Ok(PodAddress {
                pod: p["pod"].as_str().unwrap_or_default().to_owned(),
                ip: p["ip"]
                    .as_str()
                    .and_then(|ip| ip.parse().ok())
                    .with_context(|| format!("pod without an IPv4 address in the report: {p}"))?,
            })
        })
        .collect()
}

/// What [`run`] saw.
#[derive(Debug)]
pub struct LabOutcome {
    /// Pods with their IPs and the sim ENI and subnet holding each (`None`: not from the sim cloud).
    pub pods: Vec<(PodAddress, Option<(String, String)>)>,
    /// Reconciles in all (filling plus feeding).
    pub reconciles: usize,
    /// Times the feeder rewrote the NodeNetwork file while the lab ran.
    pub rewrites: usize,
    /// Pool size before the lab and after it.
    pub pool: (usize, usize),
}

impl LabOutcome {
    /// Whether every pod got an IP the sim cloud gave the instance's ENIs.
    pub fn all_from_sim(&self) -> bool {
        !self.pods.is_empty() && self.pods.iter().all(|(_, src)| src.is_some())
    }
}

/// Removes the lab's scratch directory on every way out.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fills a sim node's pool, runs `lab_bin` (`sextant-lab`) on its
/// NodeNetwork file while feeding the agent's usage back to node IPAM, and
/// checks that every pod IP is one the sim cloud assigned to the instance.
pub fn run(pods: usize, lab_bin: &Path) -> anyhow::Result<LabOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(pods, lab_bin))
}

async fn run_async(pods: usize, lab_bin: &Path) -> anyhow::Result<LabOutcome> {
    let pods_u32 = u32::try_from(pods).context("--pods")?;
    let mut node = SimNode::new(pods_u32)?;
    node.fill(pods + HEADROOM as usize).await?;
    let dir =
        ScratchDir(std::env::temp_dir().join(format!("sextantctl-lab-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).with_context(|| format!("creating {}", dir.0.display()))?;
    let file = dir.0.join("node-network.json");
    let usage_file = dir.0.join("node-network.json.usage.json");
    let report_file = dir.0.join("pods.json");
    node.write(&file)?;
    let pool_before = node.pool_len();
    println!("{}", node.header());

    let mut child = Command::new(lab_bin)
        .arg(pods.to_string())
        .arg("--node-network-file")
        .arg(&file)
        .arg("--report-json")
        .arg(&report_file)
        .spawn()
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build -p sextant-agent -p sextant-lab --bins`)",
                lab_bin.display()
            )
        })?;
    let mut seen: Option<Vec<u8>> = None;
    let mut rewrites = 0;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(bytes) = std::fs::read(&usage_file) else {
            continue;
        };
        if seen.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        let report: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("feeder: usage report does not parse: {e}");
                seen = Some(bytes);
                continue;
            }
        };
        seen = Some(bytes);
        node.apply_usage(&report)?;
        if node.wants_reconcile() && node.reconcile().await? {
            node.write(&file)?;
            rewrites += 1;
        }
    };
    if !status.success() {
        bail!("the lab failed ({status}); see above");
    }
    let report: Value = serde_json::from_slice(
        &std::fs::read(&report_file)
            .with_context(|| format!("reading {}", report_file.display()))?,
    )?;
    let addresses = pod_addresses(&report)?;
    let cloud = node.cloud_addresses();
    let outcome = LabOutcome {
        pods: addresses
            .into_iter()
            .map(|p| {
                let src = cloud.get(&p.ip).cloned();
                (p, src)
            })
            .collect(),
        reconciles: node.reconciles,
        rewrites,
        pool: (pool_before, node.pool_len()),
    };
    println!(
        "\nfeeder: {} node IPAM reconciles, NodeNetwork file rewritten {} times while the lab ran, pool {} -> {} IPs",
        outcome.reconciles, outcome.rewrites, outcome.pool.0, outcome.pool.1
    );
    let from_sim = outcome.pods.iter().filter(|(_, s)| s.is_some()).count();
    println!(
        "pod IPs assigned by the sim cloud to {}'s ENIs in {}: {from_sim}/{}",
        node.instance_id,
        SUBNET_CIDR,
        outcome.pods.len()
    );
    if !outcome.all_from_sim() {
        bail!("some pod IPs are not addresses of the sim instance's ENIs");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn node_ipam_fills_the_lab_pool_from_the_sim_subnet() {
        let mut node = SimNode::new(4).expect("sim node");
        node.fill(6).await.expect("fill");
        assert!(node.pool_len() >= 6, "{}", node.header());
        let cloud = node.cloud_addresses();
        let status = node.nn.status.as_ref().expect("status");
        for ip in status.pool.keys() {
            let ip: Ipv4Addr = ip.parse().expect("ip");
            let (_, subnet) = cloud.get(&ip).expect("an address of the instance");
            assert_eq!(subnet, &node.subnet_id);
            assert_eq!(ip.octets()[..2], [10, 91]);
        }
        assert!(!node.wants_reconcile(), "full pool, nothing used");
    }

    #[tokio::test]
    async fn usage_near_the_watermark_grows_the_pool() {
        let mut node = SimNode::new(4).expect("sim node");
        node.fill(6).await.expect("fill");
        let before = node.pool_len();
        let used: serde_json::Map<String, Value> = node
            .nn
            .status
            .as_ref()
            .expect("status")
            .pool
            .keys()
            .take(before - 1)
            .map(|ip| (ip.clone(), Value::from("c/eth0")))
            .collect();
        node.apply_usage(&serde_json::json!({
            "status": {"usage": {"used": used, "cooling": [], "reportedAt": "2026-01-01T00:00:00Z"}}
        }))
        .expect("usage");
        assert!(node.wants_reconcile());
        node.fill(before + 4).await.expect("grow");
        assert!(node.pool_len() > before);
    }
}
