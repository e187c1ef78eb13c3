//! The soak's auditor: after every round it reads every NodeNetwork
//! status, every live agent's allocations (`GET /v1/ipam`) and health, the
//! live pods and the kubelet driver's ledger, and counts what must be 0.
//! Pure: [`audit`] takes what was read and returns the row and the
//! findings behind each count.
//!
//! | column | an address counted when |
//! | --- | --- |
//! | double-assigned | two allocations (of any agents) hold it at once |
//! | in-two-pools | two NodeNetworks have it in `status.pool` or on an ENI in `status.enis` |
//! | leaked | an agent holds it for a pod that is gone from that node; or it is on a node's ENI but in neither its pool, its `fixedIps` nor its release handshake |
//! | withheld | (per node, as a count) the operator counts it free (pool, not used, not fixed, not in the handshake) but the agent has it neither free nor cooling |
//! | release max | the largest `status.release` of any NodeNetwork (bounded: at most [`RELEASE_BOUND`]) |
//! | sts-ip-changed | a StatefulSet pod name was given two different addresses by its ADDs |
//! | cloud-leaked | the cloud (the simulated VPC's state file) has it on an ENI attached to a node's instance, but that node's NodeNetwork lists it in neither its pool, its `fixedIps` nor its release handshake |
//! | not-in-cloud | a NodeNetwork's pool lists it, but the cloud has it on no ENI of that node's instance |

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::Ipv4Addr,
};

use serde_json::Value;
use sextant_crds::NodeNetwork;

/// The operator's cap on released entries it keeps per NodeNetwork.
pub const RELEASE_BOUND: usize = 64;

/// One agent as read.
#[derive(Clone, Debug)]
pub struct AgentView {
    /// `GET /v1/ipam`.
    pub ipam: Value,
    /// `GET /v1/healthz`.
    pub health: Value,
}

/// Everything one audit reads.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Every NodeNetwork.
    pub node_networks: Vec<NodeNetwork>,
    /// Live agents by node.
    pub agents: BTreeMap<String, AgentView>,
    /// Live pods (bound, not terminating): UID to (name, node).
    pub pods: BTreeMap<String, (String, String)>,
    /// Every address the driver's ADDs gave each StatefulSet pod name.
    pub history: BTreeMap<String, Vec<Ipv4Addr>>,
    /// The cloud's own view (`--sim-state-file`: `{"enis": [...]}`), when read.
    pub cloud: Option<Value>,
}

/// One line of the audit table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// Round number (0: before any chaos).
    pub round: u32,
    /// Addresses held by two allocations.
    pub double_assigned: usize,
    /// Addresses in two nodes' pools or ENIs.
    pub in_two_pools: usize,
    /// Addresses leaked.
    pub leaked: usize,
    /// Addresses withheld.
    pub withheld: usize,
    /// Largest `status.release`.
    pub release_max: usize,
    /// StatefulSet pods whose address changed.
    pub sts_ip_changed: usize,
    /// Addresses on a node's ENIs in the cloud that its NodeNetwork does not account for.
    pub cloud_leaked: usize,
    /// Pool addresses the cloud does not have on the node.
    pub not_in_cloud: usize,
}

impl Row {
    /// Whether every count is 0 and `status.release` is within its bound.
    pub fn clean(&self) -> bool {
        self.double_assigned == 0
            && self.in_two_pools == 0
            && self.leaked == 0
            && self.withheld == 0
            && self.sts_ip_changed == 0
            && self.cloud_leaked == 0
            && self.not_in_cloud == 0
            && self.release_max <= RELEASE_BOUND
    }
}

/// The table's header.
pub const HEADER: &str = "round | double-assigned | in-two-pools | leaked | withheld | release-entries max | sts-ip-changed | cloud-leaked | not-in-cloud";

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>5} | {:>15} | {:>12} | {:>6} | {:>8} | {:>19} | {:>14} | {:>12} | {:>12}",
            self.round,
            self.double_assigned,
            self.in_two_pools,
            self.leaked,
            self.withheld,
            self.release_max,
            self.sts_ip_changed,
            self.cloud_leaked,
            self.not_in_cloud
        )
    }
}

fn as_usize(v: &Value) -> usize {
    v.as_u64().unwrap_or(0) as usize
}

/// Counts the row for `round` from `obs`, with one line per finding.
pub fn audit(round: u32, obs: &Observation) -> (Row, Vec<String>) {
    let mut row = Row {
        round,
        ..Row::default()
    };
    let mut findings = Vec::new();

    // Allocations: one owner each; each owner a live pod on that node.
    let mut owners: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (node, agent) in &obs.agents {
        for a in agent.ipam["allocations"].as_array().into_iter().flatten() {
            let ip = a["ip"].as_str().unwrap_or_default().to_owned();
            let container = a["containerId"].as_str().unwrap_or_default();
            let pod = a["podName"].as_str().unwrap_or_default();
            owners
                .entry(ip.clone())
                .or_default()
                .insert(format!("{node}/{pod}/{container}"));
            match obs.pods.get(container) {
                Some((_, on)) if on == node => {}
                other => {
                    row.leaked += 1;
                    findings.push(format!(
                        "leaked: {ip} held by the agent of {node} for {pod} ({container}), {}",
                        match other {
                            Some((_, on)) => format!("a pod now on {on}"),
                            None => "a pod that is gone".to_owned(),
                        }
                    ));
                }
            }
        }
    }
    for (ip, holders) in &owners {
        if holders.len() > 1 {
            row.double_assigned += 1;
            findings.push(format!(
                "double-assigned: {ip} held by {}",
                holders.iter().cloned().collect::<Vec<_>>().join(" and ")
            ));
        }
    }

    // Pools and ENIs: one node each; every ENI address accounted for.
    let mut nodes_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for nn in &obs.node_networks {
        let name = nn.metadata.name.clone().unwrap_or_default();
        let Some(status) = &nn.status else { continue };
        row.release_max = row.release_max.max(status.release.len());
        let mut on_enis = BTreeSet::new();
        for eni in &status.enis {
            for a in &eni.addresses {
                if eni.primary_ip.as_deref() != Some(a.as_str()) {
                    on_enis.insert(a.clone());
                }
            }
        }
        for ip in status.pool.keys().chain(on_enis.iter()) {
            nodes_of.entry(ip.clone()).or_default().insert(name.clone());
        }
        for ip in &on_enis {
            if !status.pool.contains_key(ip)
                && !status.fixed_ips.contains_key(ip)
                && !status.release.contains_key(ip)
            {
                row.leaked += 1;
                findings.push(format!(
                    "leaked: {ip} is on an ENI of {name} but in neither its pool, fixedIps nor release"
                ));
            }
        }
        // Withheld: free for the operator, not available at the agent.
        if let Some(agent) = obs.agents.get(&name) {
            let used: BTreeSet<&String> = status
                .usage
                .as_ref()
                .map(|u| u.used.keys().collect())
                .unwrap_or_default();
            let free_for_operator = status
                .pool
                .keys()
                .filter(|ip| {
                    !used.contains(ip)
                        && !status.fixed_ips.contains_key(*ip)
                        && !status.release.contains_key(*ip)
                })
                .count();
            let ipam = &agent.health["ipam"];
            let available = as_usize(&ipam["free"]) + as_usize(&ipam["cooldown"]);
            if free_for_operator > available {
                let n = free_for_operator - available;
                row.withheld += n;
                findings.push(format!(
                    "withheld: {name}: {free_for_operator} free in its NodeNetwork, the agent has {available} free or cooling (health {ipam})"
                ));
            }
        }
    }
    for (ip, nodes) in &nodes_of {
        if nodes.len() > 1 {
            row.in_two_pools += 1;
            findings.push(format!(
                "in-two-pools: {ip} on {}",
                nodes.iter().cloned().collect::<Vec<_>>().join(" and ")
            ));
        }
    }
    if row.release_max > RELEASE_BOUND {
        findings.push(format!(
            "release: {} entries on one NodeNetwork (bound {RELEASE_BOUND})",
            row.release_max
        ));
    }

    // Fixed IPs: one address per pod name, for life.
    for (pod, ips) in &obs.history {
        let distinct: BTreeSet<&Ipv4Addr> = ips.iter().collect();
        if distinct.len() > 1 {
            row.sts_ip_changed += 1;
            findings.push(format!(
                "sts-ip-changed: {pod} got {}",
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" then ")
            ));
        }
    }
    if let Some(cloud) = &obs.cloud {
        audit_cloud(cloud, &obs.node_networks, &mut row, &mut findings);
    }
    (row, findings)
}

/// The cloud's view against the NodeNetworks: every secondary address on
/// an ENI attached to a node's instance is accounted for by that node, and
/// every pool address is on that instance. Instances no NodeNetwork names
/// (lost nodes: the simulator never terminates instances) are left out.
fn audit_cloud(
    cloud: &Value,
    node_networks: &[NodeNetwork],
    row: &mut Row,
    findings: &mut Vec<String>,
) {
    let mut on_instance: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for eni in cloud["enis"].as_array().into_iter().flatten() {
        let Some(instance) = eni["attachment"]["instanceId"].as_str() else {
            continue;
        };
        let addresses = on_instance.entry(instance.to_owned()).or_default();
        for ip in eni["secondaryIps"].as_array().into_iter().flatten() {
            if let Some(ip) = ip.as_str() {
                addresses.insert(ip.to_owned());
            }
        }
    }
    for nn in node_networks {
        let name = nn.metadata.name.clone().unwrap_or_default();
        let (Some(instance), Some(status)) = (nn.spec.instance_id.as_deref(), &nn.status) else {
            continue;
        };
        let in_cloud = on_instance.get(instance).cloned().unwrap_or_default();
        for ip in &in_cloud {
            if !status.pool.contains_key(ip)
                && !status.fixed_ips.contains_key(ip)
                && !status.release.contains_key(ip)
            {
                row.cloud_leaked += 1;
                findings.push(format!(
                    "cloud-leaked: {ip} is on {instance} ({name}) in the cloud, but its NodeNetwork does not account for it"
                ));
            }
        }
        for ip in status.pool.keys() {
            if !in_cloud.contains(ip) {
                row.not_in_cloud += 1;
                findings.push(format!(
                    "not-in-cloud: {name}'s pool lists {ip}, the cloud has it on no ENI of {instance}"
                ));
            }
        }
    }
}

/// The table of `rows` under [`HEADER`].
pub fn table(rows: &[Row]) -> String {
    let mut out = format!("{HEADER}\n{}\n", "-".repeat(HEADER.len()));
    for r in rows {
        let _ = writeln!(out, "{r}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use sextant_crds::{AgentUsage, NodeNetworkSpec, NodeNetworkStatus, PoolEntry};

    fn nn(name: &str, pool: &[&str], used: &[&str]) -> NodeNetwork {
        let mut n = NodeNetwork::new(name, NodeNetworkSpec::default());
        n.status = Some(NodeNetworkStatus {
            usage: Some(AgentUsage {
                used: used
                    .iter()
                    .map(|ip| ((*ip).to_owned(), "pod".to_owned()))
                    .collect(),
                ..AgentUsage::default()
            }),
            pool: pool
                .iter()
                .map(|ip| ((*ip).to_owned(), PoolEntry::default()))
                .collect(),
            ..NodeNetworkStatus::default()
        });
        n
    }

    fn agent(allocs: &[(&str, &str, &str)], free: u64) -> AgentView {
        AgentView {
            ipam: json!({"allocations": allocs.iter().map(|(ip, c, p)| json!({
                "ip": ip, "containerId": c, "podName": p})).collect::<Vec<_>>()}),
            health: json!({"ipam": {"free": free, "cooldown": 0}}),
        }
    }

    #[test]
    fn a_clean_observation_counts_nothing() {
        let obs = Observation {
            node_networks: vec![nn("a", &["10.0.0.1", "10.0.0.2"], &["10.0.0.1"])],
            agents: [("a".to_owned(), agent(&[("10.0.0.1", "u1", "web-0")], 1))].into(),
            pods: [("u1".to_owned(), ("web-0".to_owned(), "a".to_owned()))].into(),
            history: [("web-0".to_owned(), vec!["10.0.0.1".parse().unwrap()])].into(),
            cloud: None,
        };
        let (row, findings) = audit(1, &obs);
        assert!(row.clean() && findings.is_empty(), "{row:?} {findings:?}");
    }

    #[test]
    fn every_kind_of_wrong_ownership_is_counted() {
        let obs = Observation {
            node_networks: vec![
                nn("a", &["10.0.0.1", "10.0.0.3"], &["10.0.0.1"]),
                nn("b", &["10.0.0.1"], &[]),
            ],
            agents: [
                ("a".to_owned(), agent(&[("10.0.0.1", "u1", "web-0")], 0)),
                ("b".to_owned(), agent(&[("10.0.0.1", "u2", "web-1")], 0)),
            ]
            .into(),
            pods: [("u1".to_owned(), ("web-0".to_owned(), "a".to_owned()))].into(),
            history: [(
                "web-0".to_owned(),
                vec!["10.0.0.1".parse().unwrap(), "10.0.0.9".parse().unwrap()],
            )]
            .into(),
            cloud: None,
        };
        let (row, _) = audit(2, &obs);
        assert_eq!(
            row,
            Row {
                round: 2,
                double_assigned: 1,
                in_two_pools: 1,
                leaked: 1,
                // a: 10.0.0.3 free in its pool, b: 10.0.0.1; neither agent has one.
                withheld: 2,
                release_max: 0,
                sts_ip_changed: 1,
                cloud_leaked: 0,
                not_in_cloud: 0,
            }
        );
    }

    #[test]
    fn the_clouds_view_must_match_each_nodes_pool() {
        let mut a = nn("a", &["10.0.0.1", "10.0.0.2"], &[]);
        a.spec.instance_id = Some("i-a".to_owned());
        let obs = Observation {
            node_networks: vec![a],
            cloud: Some(json!({"enis": [
                {"id": "eni-1", "secondaryIps": ["10.0.0.1", "10.0.0.7"],
                 "attachment": {"instanceId": "i-a", "deviceIndex": 1}},
                {"id": "eni-lost", "secondaryIps": ["10.0.0.9"],
                 "attachment": {"instanceId": "i-gone", "deviceIndex": 1}},
                {"id": "eni-free", "secondaryIps": ["10.0.0.8"], "attachment": null},
            ]})),
            ..Observation::default()
        };
        let (row, findings) = audit(3, &obs);
        assert_eq!(
            (row.cloud_leaked, row.not_in_cloud),
            (1, 1),
            "10.0.0.7 unaccounted, 10.0.0.2 not in the cloud: {findings:?}"
        );
    }
}
