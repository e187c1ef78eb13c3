//! The in-memory index the extender answers from: per node what matters for
//! placing a pod (zone, ENI room, held addresses, IP headroom), per pod its
//! FixedIP. Built from `NodeNetwork` and `FixedIP` objects by synchronous
//! `apply / delete / reset` calls; the watch shell holds the lock only for
//! those calls, never across an `.await`.

use std::{
    net::Ipv4Addr,
    sync::{Arc, RwLock},
};

use rustc_hash::{FxHashMap, FxHashSet};

use sextant_crds::{FixedIP, NodeNetwork, Provider};

/// The index shared by the watches (writers) and the HTTP handlers (readers).
pub type SharedIndex = Arc<RwLock<Index>>;

/// An IPv4 CIDR, parsed once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: u32,
    mask: u32,
}

impl Cidr {
    /// Parses `a.b.c.d/len`; `None` when it is not an IPv4 CIDR.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (addr, len) = sextant_crds::parse_ipv4_cidr(s)?;
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Some(Cidr {
            network: u32::from(addr) & mask,
            mask,
        })
    }

    /// Whether `ip` lies in the CIDR.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask == self.network
    }
}

/// A pod ENI of a node: where a fixed IP of its subnet could be assigned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEni {
    /// ENI id.
    pub id: String,
    /// Subnet (vSwitch) of the ENI.
    pub subnet_id: String,
    /// Secondary addresses on it now.
    pub addresses: u32,
}

/// What the extender knows about one node, derived from its `NodeNetwork`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeEntry {
    /// Where the node's pod IPs come from.
    pub provider: Provider,
    /// Availability zone (`spec.zone`).
    pub zone: Option<String>,
    /// Parsed `spec.podCIDRs` (bare metal); unparsable entries are dropped.
    pub pod_cidrs: Vec<Cidr>,
    /// Attached pod ENIs (device index >= `firstInterfaceIndex`, not excluded).
    pub pod_enis: Vec<PodEni>,
    /// Device indexes from `firstInterfaceIndex` below `maxEnis` not taken by any attached ENI.
    pub free_eni_slots: u32,
    /// Addresses on the node: the pool and the fixed IPs placed on it.
    pub held: FxHashSet<Ipv4Addr>,
    /// Pod IPs in use (the agent's report, else the summary).
    pub used: u32,
    /// Pod address requests waiting on an empty pool.
    pub pending: u32,
    /// Pod IPs the node can ever hold; 0 = not known yet.
    pub capacity: u32,
    /// ENIs the instance allows, primary included; 0 = unknown (or bare metal).
    pub max_enis: u32,
    /// IPv4 addresses per ENI, primary included; 0 = unknown (or bare metal).
    pub ipv4_per_eni: u32,
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl NodeEntry {
    /// Derives the entry from a `NodeNetwork`; a missing status reads as an
    /// empty node with unknown limits.
    pub fn from_node_network(nn: &NodeNetwork) -> NodeEntry {
        let spec = &nn.spec;
        let first = spec.ipam.first_interface_index();
        let mut entry = NodeEntry {
            provider: spec.provider,
            zone: spec.zone.clone().filter(|z| !z.is_empty()),
            pod_cidrs: spec
                .pod_cidrs
                .iter()
                .filter_map(|c| Cidr::parse(c))
                .collect(),
            ..NodeEntry::default()
        };
        let Some(status) = &nn.status else {
            return entry;
        };
        entry.pod_enis = status
            .enis
            .iter()
            .filter(|e| e.device_index >= first && !e.excluded)
            .map(|e| PodEni {
                id: e.id.clone(),
                subnet_id: e.subnet_id.clone(),
                addresses: count(e.addresses.len()),
            })
            .collect();
        entry.held = status
            .pool
            .keys()
            .chain(status.fixed_ips.keys())
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let summary = status.summary.unwrap_or_default();
        entry.capacity = summary.capacity;
        entry.max_enis = summary.max_enis;
        entry.ipv4_per_eni = summary.ipv4_per_eni;
        match &status.usage {
            Some(u) => {
                entry.used = count(u.used.len());
                entry.pending = u.pending;
            }
            None => entry.used = summary.used,
        }
        entry.free_eni_slots = count(
            (first..summary.max_enis)
                .filter(|i| !status.enis.iter().any(|e| e.device_index == *i))
                .count(),
        );
        entry
    }

    /// Pod IPs still free to hand out (0 when capacity is unknown).
    pub fn headroom(&self) -> u32 {
        self.capacity
            .saturating_sub(self.used.saturating_add(self.pending))
    }

    /// Whether the node has no pod IP left (only when its capacity is known).
    pub fn is_full(&self) -> bool {
        self.capacity > 0 && self.used.saturating_add(self.pending) >= self.capacity
    }

    /// Whether an attached pod ENI in `subnet` can take one more address.
    pub fn eni_room_in(&self, subnet: &str) -> bool {
        self.pod_enis
            .iter()
            .any(|e| e.subnet_id == subnet && e.addresses.saturating_add(1) < self.ipv4_per_eni)
    }
}

/// What the extender knows about one FixedIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedIpEntry {
    /// `spec.ip` as written (parsed when a pod asks for it, so a bad one is reported).
    pub ip: String,
    /// Zone the address lives in.
    pub zone: Option<String>,
    /// Subnet the address belongs to.
    pub subnet_id: Option<String>,
    /// Node whose ENI holds it now (`status.node`).
    pub node: Option<String>,
}

impl FixedIpEntry {
    /// Derives the entry from a `FixedIP`.
    pub fn from_fixed_ip(f: &FixedIP) -> FixedIpEntry {
        FixedIpEntry {
            ip: f.spec.ip.clone(),
            zone: f.spec.zone.clone().filter(|z| !z.is_empty()),
            subnet_id: f.spec.subnet_id.clone().filter(|s| !s.is_empty()),
            node: f.status.as_ref().and_then(|s| s.node.clone()),
        }
    }
}

/// NodeNetworks by node name and FixedIPs by namespace and name.
#[derive(Debug, Default)]
pub struct Index {
    nodes: FxHashMap<String, NodeEntry>,
    fixed_ips: FxHashMap<String, FxHashMap<String, FixedIpEntry>>,
    fixed_ip_count: usize,
    nodes_synced: bool,
    fixed_ips_synced: bool,
}

impl Index {
    /// An empty index that counts as synced (tests, benches, simulations).
    pub fn synced() -> Index {
        Index {
            nodes_synced: true,
            fixed_ips_synced: true,
            ..Index::default()
        }
    }

    /// Adds or replaces a node's entry; objects without a name are ignored.
    pub fn apply_node(&mut self, nn: &NodeNetwork) {
        if let Some(name) = &nn.metadata.name {
            self.nodes
                .insert(name.clone(), NodeEntry::from_node_network(nn));
        }
    }

    /// Removes a node's entry.
    pub fn delete_node(&mut self, name: &str) {
        self.nodes.remove(name);
    }

    /// Replaces every node entry with a full list and marks nodes synced.
    pub fn reset_nodes<'a>(&mut self, all: impl IntoIterator<Item = &'a NodeNetwork>) {
        self.nodes.clear();
        for nn in all {
            self.apply_node(nn);
        }
        self.nodes_synced = true;
    }

    /// Adds or replaces a FixedIP; objects without name or namespace are ignored.
    pub fn apply_fixed_ip(&mut self, f: &FixedIP) {
        let (Some(ns), Some(name)) = (&f.metadata.namespace, &f.metadata.name) else {
            return;
        };
        let previous = self
            .fixed_ips
            .entry(ns.clone())
            .or_default()
            .insert(name.clone(), FixedIpEntry::from_fixed_ip(f));
        if previous.is_none() {
            self.fixed_ip_count += 1;
        }
    }

    /// Removes a FixedIP.
    pub fn delete_fixed_ip(&mut self, namespace: &str, name: &str) {
        if let Some(in_ns) = self.fixed_ips.get_mut(namespace) {
            if in_ns.remove(name).is_some() {
                self.fixed_ip_count -= 1;
            }
            if in_ns.is_empty() {
                self.fixed_ips.remove(namespace);
            }
        }
    }

    /// Replaces every FixedIP with a full list and marks FixedIPs synced.
    pub fn reset_fixed_ips<'a>(&mut self, all: impl IntoIterator<Item = &'a FixedIP>) {
        self.fixed_ips.clear();
        self.fixed_ip_count = 0;
        for f in all {
            self.apply_fixed_ip(f);
        }
        self.fixed_ips_synced = true;
    }

    /// A node's entry.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.get(name)
    }

    /// The FixedIP of pod `namespace/name`.
    pub fn fixed_ip(&self, namespace: &str, name: &str) -> Option<&FixedIpEntry> {
        self.fixed_ips.get(namespace)?.get(name)
    }

    /// Every FixedIP with its namespace and name.
    pub fn fixed_ips(&self) -> impl Iterator<Item = (&str, &str, &FixedIpEntry)> {
        self.fixed_ips.iter().flat_map(|(ns, by_name)| {
            by_name
                .iter()
                .map(move |(name, e)| (ns.as_str(), name.as_str(), e))
        })
    }

    /// NodeNetworks in the index.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// FixedIPs in the index.
    pub fn fixed_ip_count(&self) -> usize {
        self.fixed_ip_count
    }

    /// `Ok` once both watches delivered a full list; else what is missing.
    pub fn check_synced(&self) -> Result<(), &'static str> {
        match (self.nodes_synced, self.fixed_ips_synced) {
            (true, true) => Ok(()),
            (false, true) => Err("NodeNetworks"),
            (true, false) => Err("FixedIPs"),
            (false, false) => Err("NodeNetworks and FixedIPs"),
        }
    }
}

#[cfg(test)]
mod tests;
