//! Small builders for tests (feature `testing`): `NodeNetwork`s and
//! `FixedIP`s as the operator leaves them, so a test names only what it is
//! about (`mk_node_network("n1", "us-east-1a").eni(..).usage(17, 0).build()`).
//! Never part of a production build: dependents enable the feature in their
//! `[dev-dependencies]` only.

use std::collections::BTreeMap;

use crate::{
    AgentUsage, EniStatus, FixedIP, FixedIPSpec, FixedIPStatus, NodeNetwork, NodeNetworkSpec,
    NodeNetworkStatus, PoolEntry, PoolSummary, Provider,
};

/// Builds one `NodeNetwork` (start from [`mk_node_network`] or
/// [`mk_static_node_network`], end with [`NodeNetworkBuilder::build`]).
pub struct NodeNetworkBuilder {
    nn: NodeNetwork,
}

/// A cloud node in `zone` with m5.large-like limits (3 ENIs x 10 IPv4:
/// capacity 18 on two pod ENIs), no ENI attached yet and nothing used.
pub fn mk_node_network(name: &str, zone: &str) -> NodeNetworkBuilder {
    let spec = NodeNetworkSpec {
        provider: Provider::Aws,
        instance_id: Some(format!("i-{name}")),
        instance_type: Some("m5.large".into()),
        zone: Some(zone.into()),
        ..NodeNetworkSpec::default()
    };
    let mut nn = NodeNetwork::new(name, spec);
    nn.status = Some(NodeNetworkStatus {
        enis: vec![EniStatus {
            id: format!("eni-{name}-primary"),
            subnet_id: "subnet-node".into(),
            device_index: 0,
            primary_ip: Some("10.0.0.1".into()),
            ..EniStatus::default()
        }],
        summary: Some(PoolSummary {
            capacity: 18,
            max_enis: 3,
            ipv4_per_eni: 10,
            ..PoolSummary::default()
        }),
        ..NodeNetworkStatus::default()
    });
    NodeNetworkBuilder { nn }
}

/// A bare-metal node owning `cidr`, capacity from the CIDR.
pub fn mk_static_node_network(name: &str, cidr: &str, capacity: u32) -> NodeNetworkBuilder {
    let spec = NodeNetworkSpec {
        provider: Provider::Static,
        pod_cidrs: vec![cidr.into()],
        ..NodeNetworkSpec::default()
    };
    let mut nn = NodeNetwork::new(name, spec);
    nn.status = Some(NodeNetworkStatus {
        summary: Some(PoolSummary {
            capacity,
            ..PoolSummary::default()
        }),
        ..NodeNetworkStatus::default()
    });
    NodeNetworkBuilder { nn }
}

impl NodeNetworkBuilder {
    fn status_mut(&mut self) -> &mut NodeNetworkStatus {
        self.nn
            .status
            .get_or_insert_with(NodeNetworkStatus::default)
    }

    /// Attaches a pod ENI with the given secondary addresses (added to the pool).
    pub fn eni(mut self, id: &str, subnet: &str, device_index: u32, addresses: &[&str]) -> Self {
        let status = self.status_mut();
        for a in addresses {
            status
                .pool
                .insert((*a).into(), PoolEntry { eni: id.into() });
        }
        status.enis.push(EniStatus {
            id: id.into(),
            subnet_id: subnet.into(),
            device_index,
            addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
            ..EniStatus::default()
        });
        self
    }

    /// Attaches a pod ENI with `n` generated addresses `10.<device>.<k>.<i>`.
    pub fn eni_with(self, id: &str, subnet: &str, device_index: u32, n: usize) -> Self {
        let addrs: Vec<String> = (0..n)
            .map(|i| format!("10.{device_index}.{}.{}", i / 250, i % 250 + 1))
            .collect();
        let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        self.eni(id, subnet, device_index, &refs)
    }

    /// Marks the last attached ENI as excluded (not for pods).
    pub fn excluded(mut self) -> Self {
        if let Some(e) = self.status_mut().enis.last_mut() {
            e.excluded = true;
        }
        self
    }

    /// Records a fixed IP placed on this node by the FixedIP controller.
    pub fn fixed(mut self, ip: &str, pod: &str) -> Self {
        self.status_mut().fixed_ips.insert(ip.into(), pod.into());
        self
    }

    /// The agent reports `used` addresses in use and `pending` requests waiting.
    pub fn usage(mut self, used: usize, pending: u32) -> Self {
        let used = (0..used)
            .map(|i| {
                (
                    format!("10.250.{}.{}", i / 250, i % 250 + 1),
                    format!("ns/p{i}"),
                )
            })
            .collect::<BTreeMap<_, _>>();
        self.status_mut().usage = Some(AgentUsage {
            used,
            pending,
            ..AgentUsage::default()
        });
        self
    }

    /// Sets the instance limits and capacity (0 = unknown).
    pub fn limits(mut self, max_enis: u32, ipv4_per_eni: u32, capacity: u32) -> Self {
        let s = self
            .status_mut()
            .summary
            .get_or_insert_with(PoolSummary::default);
        s.max_enis = max_enis;
        s.ipv4_per_eni = ipv4_per_eni;
        s.capacity = capacity;
        self
    }

    /// Drops the status (a NodeNetwork the operator has not touched yet).
    pub fn no_status(mut self) -> Self {
        self.nn.status = None;
        self
    }

    /// The object.
    pub fn build(self) -> NodeNetwork {
        self.nn
    }
}

/// A FixedIP for pod `ns/name` at `ip` in `zone` / `subnet`.
pub fn mk_fixed_ip(ns: &str, name: &str, ip: &str, zone: &str, subnet: &str) -> FixedIP {
    let mut f = FixedIP::new(
        name,
        FixedIPSpec {
            ip: ip.into(),
            stateful_set: name.rsplit_once('-').map_or(name, |(s, _)| s).into(),
            ordinal: name
                .rsplit_once('-')
                .and_then(|(_, o)| o.parse().ok())
                .unwrap_or(0),
            zone: (!zone.is_empty()).then(|| zone.into()),
            subnet_id: (!subnet.is_empty()).then(|| subnet.into()),
            reclaim_policy: Default::default(),
            ttl_seconds: None,
        },
    );
    f.metadata.namespace = Some(ns.into());
    f.status = Some(FixedIPStatus::default());
    f
}
