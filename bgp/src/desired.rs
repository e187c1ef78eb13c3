//! What one node's BIRD should announce and to whom.

use std::{
    collections::{BTreeSet, HashSet},
    net::Ipv4Addr,
};

use sextant_crds::NodeNetwork;

use crate::{Error, Ipv4Net, Peer, PeerSpec, Result};

/// The checked input of [`crate::render::render`]: every prefix parses,
/// every peer is usable, no peer twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// BIRD's router id: the node's address.
    pub router_id: Ipv4Addr,
    /// The node's pod CIDRs and the /32s of the FixedIPs on it, sorted.
    pub prefixes: BTreeSet<Ipv4Net>,
    /// The peers, in the order given.
    pub peers: Vec<Peer>,
}

impl Desired {
    /// Checks plain inputs: `pod_cidrs` as `a.b.c.d/len`, `fixed_ips` as
    /// addresses (announced as /32s).
    pub fn new(
        router_id: Ipv4Addr,
        pod_cidrs: &[String],
        fixed_ips: &[String],
        peers: &[PeerSpec],
    ) -> Result<Self> {
        let mut prefixes = BTreeSet::new();
        for cidr in pod_cidrs {
            let net = Ipv4Net::parse(cidr)?;
            if net.is_default() {
                return Err(Error::Cidr {
                    value: cidr.clone(),
                    reason: "a pod CIDR cannot be the default route",
                });
            }
            prefixes.insert(net);
        }
        for ip in fixed_ips {
            let addr: Ipv4Addr = ip.parse().map_err(|_| Error::Cidr {
                value: ip.clone(),
                reason: "a fixed IP must be a plain IPv4 address",
            })?;
            prefixes.insert(Ipv4Net::host(addr));
        }
        let mut seen = HashSet::new();
        let mut checked = Vec::with_capacity(peers.len());
        for spec in peers {
            let peer = Peer::from_spec(spec)?;
            if !seen.insert(peer.address) {
                return Err(Error::DuplicatePeer {
                    peer: peer.address.to_string(),
                });
            }
            checked.push(peer);
        }
        Ok(Desired {
            router_id,
            prefixes,
            peers: checked,
        })
    }

    /// From the node's NodeNetwork: `spec.podCIDRs` and the keys of
    /// `status.fixedIPs` (the FixedIPs placed on this node).
    pub fn from_node_network(
        nn: &NodeNetwork,
        router_id: Ipv4Addr,
        peers: &[PeerSpec],
    ) -> Result<Self> {
        let fixed: Vec<String> = nn
            .status
            .as_ref()
            .map(|s| s.fixed_ips.keys().cloned().collect())
            .unwrap_or_default();
        Desired::new(router_id, &nn.spec.pod_cidrs, &fixed, peers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_crds::testing::mk_static_node_network;

    fn spec(address: &str) -> PeerSpec {
        PeerSpec {
            address: address.into(),
            asn: 65000,
            local_asn: 65001,
            ..PeerSpec::default()
        }
    }

    #[test]
    fn refuses_duplicate_peers_and_bad_prefixes() {
        let id = Ipv4Addr::new(10, 0, 0, 2);
        let e = Desired::new(id, &[], &[], &[spec("10.0.0.1"), spec("10.0.0.1")])
            .expect_err("duplicate");
        assert!(matches!(e, Error::DuplicatePeer { .. }), "{e}");
        let e = Desired::new(id, &["10.1.0.0/33".into()], &[], &[]).expect_err("cidr");
        assert!(e.to_string().contains("10.1.0.0/33"), "{e}");
        let e = Desired::new(id, &["0.0.0.0/0".into()], &[], &[]).expect_err("default");
        assert!(e.to_string().contains("default route"), "{e}");
        let e = Desired::new(id, &[], &["10.1.0.5/32".into()], &[]).expect_err("fixed");
        assert!(e.to_string().contains("plain IPv4"), "{e}");
    }

    #[test]
    fn takes_pod_cidrs_and_fixed_ips_from_the_node_network() {
        let nn = mk_static_node_network("n1", "10.128.7.0/25", 126)
            .fixed("10.200.0.5", "db/db-0")
            .build();
        let d = Desired::from_node_network(&nn, Ipv4Addr::new(10, 0, 0, 2), &[spec("10.0.0.1")])
            .expect("valid");
        let got: Vec<String> = d.prefixes.iter().map(ToString::to_string).collect();
        assert_eq!(got, ["10.128.7.0/25", "10.200.0.5/32"]);
    }
}
