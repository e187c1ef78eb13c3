//! The `sextantctl lab` scenario: a node with pods wired by the real agent
//! and CNI over the eBPF datapath, pod-to-pod and pod-to-service probes, the
//! docs' example network policy, and a printable report.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use serde_json::Value;
use sextant_agent::{
    datapath::COUNTER_NAMES,
    policy::{PodInfo, PolicySnapshot},
};
use sextant_agent_api::{self as api, Health, ServiceSpec};

use crate::{
    Lab, LabConfig, LabPool,
    error::{Error, Result},
    netns::can_run,
    traffic::{echo_server, probe, probe_within},
};

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

/// The docs' example policy on pods 0 (employee), 1 (protected-db), 2
/// (visitor), the rest app=web: probes with the verdict each must get.
fn policy_demo(lab: &Lab) -> Result<Vec<(Probe, bool)>> {
    let mut doc: Value =
        serde_yaml::from_str(include_str!("../../docs/examples/protected-db-policy.yaml"))
            .map_err(|e| Error::Policy {
                reason: format!("docs/examples/protected-db-policy.yaml: {e}"),
            })?;
    doc["metadata"]["namespace"] = "lab".into();
    let app = |i: usize| match i {
        0 => "employee",
        1 => "protected-db",
        2 => "visitor",
        _ => "web",
    };
    let snapshot = PolicySnapshot {
        policies: vec![doc],
        pods: lab
            .pods
            .iter()
            .enumerate()
            .map(|(i, p)| PodInfo {
                namespace: "lab".into(),
                name: p.name.clone(),
                labels: [("app".to_string(), app(i).to_string())].into(),
                ip: p.ip,
            })
            .collect(),
        ..Default::default()
    };
    let db = lab.pods.get(1).and_then(|p| p.ip).ok_or(Error::NoPod {
        index: 1,
        why: "has no IP (the policy demo needs it)",
    })?;
    echo_server(lab, 1, 6379, "redis".into())?;
    let report = lab.set_policy(&snapshot)?;
    if report["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
        return Err(Error::Policy {
            reason: format!("refused by the agent: {report}"),
        });
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
            .and_then(|b| sextant_agent::watch::node_file::parse(path, &b).ok()),
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
    can_run().map_err(Error::CannotRun)?;
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
    let counters = packet_counters(&text);
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

/// The datapath's packet counters by verdict in the agent's `/metrics`
/// text (0 for a verdict it does not show).
fn packet_counters(metrics: &str) -> Vec<(String, u64)> {
    COUNTER_NAMES
        .iter()
        .map(|(name, _)| {
            let key = format!("sextant_agent_datapath_packets_total{{verdict=\"{name}\"}}");
            let v = metrics
                .lines()
                .find_map(|l| l.strip_prefix(&key))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            (name.to_string(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_counters_are_read_by_verdict_and_missing_ones_are_zero() {
        let text = "# TYPE sextant_agent_datapath_packets counter\n\
sextant_agent_datapath_packets_total{verdict=\"pass\"} 12\n\
sextant_agent_datapath_packets_total{verdict=\"policy_allowed\"} 3\n";
        let got = packet_counters(text);
        assert_eq!(got.len(), COUNTER_NAMES.len());
        let of = |n: &str| got.iter().find(|(k, _)| k == n).map(|(_, v)| *v);
        assert_eq!(of("policy_allowed"), Some(3));
        assert_eq!(of("policy_denied_ingress"), Some(0));
    }

    #[test]
    fn the_report_marks_a_policy_probe_with_the_wrong_verdict() {
        let probe = |answer: std::result::Result<String, String>| Probe {
            from: "p0".into(),
            to: "10.77.0.2:6379".into(),
            answer,
        };
        let report = DemoReport {
            source: "static pool 10.77.0.0/26".into(),
            pods: vec![PodAddress {
                pod: "p0".into(),
                ip: Ipv4Addr::new(10, 77, 0, 1),
                eni: None,
                subnet: None,
            }],
            probes: vec![probe(Ok("pod1".into())), probe(Err("timed out".into()))],
            policy: vec![
                (probe(Ok("redis".into())), true),
                (probe(Ok("redis".into())), false),
            ],
            counters: vec![("pass".into(), 7)],
            health: Health::default(),
        };
        let text = report.to_string();
        assert!(
            text.starts_with("pod IPs from static pool 10.77.0.0/26\n"),
            "{text}"
        );
        assert!(text.contains("ok (pod1)"), "{text}");
        assert!(text.contains("FAILED: timed out"), "{text}");
        assert_eq!(text.matches("<- WRONG").count(), 1, "{text}");
        assert!(text.contains("datapath counters: pass=7"), "{text}");
    }
}
