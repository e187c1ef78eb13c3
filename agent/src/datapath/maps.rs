//! Typed access to the endpoint and counter maps: `ENDPOINTS` (one pod of
//! this node per IP), the per-CPU `COUNTERS` and the per-CPU `DROPS` (one
//! slot per [`DropReason`]).

use std::{collections::BTreeMap, net::Ipv4Addr};

use super::Datapath;
use crate::error::{Error, Result};

/// Counter slots of the `COUNTERS` per-CPU map (`enum counter` in datapath.h).
pub const COUNTER_NAMES: [(&str, u32); 10] = [
    ("forward", 0),
    ("pass", 1),
    ("drop_no_backend", 2),
    ("dnat", 3),
    ("revnat", 4),
    ("ct_new", 5),
    ("policy_denied_ingress", 6),
    ("policy_denied_egress", 7),
    ("policy_allowed", 8),
    ("policy_reply", 9),
];

/// Why the datapath dropped a packet: `enum drop_reason` in datapath.h, the
/// slot of the `DROPS` map. The numbers are stable (flows will carry them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum DropReason {
    /// A new flow into a pod no allow entry admits.
    PolicyIngress = 1,
    /// A new flow out of a pod no allow entry admits.
    PolicyEgress = 2,
    /// A service without (reachable) backends.
    NoBackend = 3,
    /// An IPv4 packet from a pod whose source is not that pod's address.
    SpoofedSource = 4,
    /// Neither ARP nor IPv4 from a pod (IPv6, other ethertypes, truncated headers).
    UnsupportedL3 = 5,
    /// Rewriting a translated (service) packet failed.
    NatFailed = 6,
    /// Rewriting the MACs for a delivery to a pod of this node failed.
    RedirectFailed = 7,
}

impl DropReason {
    /// Every reason, in slot order.
    pub const ALL: [DropReason; 7] = [
        DropReason::PolicyIngress,
        DropReason::PolicyEgress,
        DropReason::NoBackend,
        DropReason::SpoofedSource,
        DropReason::UnsupportedL3,
        DropReason::NatFailed,
        DropReason::RedirectFailed,
    ];

    /// The reason for a `DROPS` slot, `None` for an unknown one.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u32 == code)
    }

    /// The `reason` label of `sextant_agent_datapath_drops_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::PolicyIngress => "policy_denied_ingress",
            DropReason::PolicyEgress => "policy_denied_egress",
            DropReason::NoBackend => "no_backend",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::UnsupportedL3 => "unsupported_l3",
            DropReason::NatFailed => "nat_failed",
            DropReason::RedirectFailed => "redirect_failed",
        }
    }
}

/// One pod on this node, as the datapath delivers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Host veth ifindex.
    pub ifindex: u32,
    /// Security identity.
    pub identity: u32,
    /// Pod MAC.
    pub mac: [u8; 6],
    /// Host veth MAC.
    pub host_mac: [u8; 6],
}

impl Endpoint {
    fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..8].copy_from_slice(&self.identity.to_ne_bytes());
        b[8..14].copy_from_slice(&self.mac);
        b[14..20].copy_from_slice(&self.host_mac);
        b
    }
}

impl Datapath {
    /// Adds or replaces the endpoint of pod IP `ip`.
    pub fn upsert_endpoint(&mut self, ip: Ipv4Addr, ep: &Endpoint) -> Result<()> {
        self.endpoints
            .insert(ip.octets(), ep.encode(), 0)
            .map_err(|e| Error::bpf(format!("writing endpoint {ip}"), e))
    }

    /// Removes the endpoint of `ip`; absent is fine.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<()> {
        match self.endpoints.remove(&ip.octets()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing endpoint {ip}"), e)),
        }
    }

    /// Removes every endpoint whose IP is not in `keep` (pods deleted while
    /// no agent ran); returns how many went.
    pub fn retain_endpoints(
        &mut self,
        keep: &std::collections::BTreeSet<Ipv4Addr>,
    ) -> Result<usize> {
        let stale: Vec<Ipv4Addr> = self
            .endpoints
            .keys()
            .filter_map(|k| k.ok())
            .map(Ipv4Addr::from)
            .filter(|ip| !keep.contains(ip))
            .collect();
        for ip in &stale {
            self.remove_endpoint(*ip)?;
        }
        Ok(stale.len())
    }

    /// Pod IPs with an endpoint.
    pub fn endpoint_ips(&self) -> Vec<Ipv4Addr> {
        self.endpoints
            .keys()
            .filter_map(|k| k.ok())
            .map(Ipv4Addr::from)
            .collect()
    }

    /// Endpoints in the map.
    pub fn endpoint_count(&self) -> usize {
        self.endpoints.keys().filter(|k| k.is_ok()).count()
    }

    /// Sets the security identity of the endpoint at `ip`; false when `ip`
    /// is no endpoint of this node.
    pub fn set_endpoint_identity(&mut self, ip: Ipv4Addr, identity: u32) -> Result<bool> {
        let mut v = match self.endpoints.get(&ip.octets(), 0) {
            Ok(v) => v,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(Error::bpf(format!("reading endpoint {ip}"), e)),
        };
        if v[4..8] == identity.to_ne_bytes() {
            return Ok(true);
        }
        v[4..8].copy_from_slice(&identity.to_ne_bytes());
        self.endpoints
            .insert(ip.octets(), v, 0)
            .map_err(|e| Error::bpf(format!("writing endpoint {ip}"), e))?;
        Ok(true)
    }

    /// Dropped packets summed over CPUs, by reason (every reason, zeros included).
    pub fn drops(&self) -> BTreeMap<DropReason, u64> {
        DropReason::ALL
            .iter()
            .map(|r| {
                let sum = self
                    .drops
                    .get(&(*r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*r, sum)
            })
            .collect()
    }

    /// Packet counters summed over CPUs, by name.
    pub fn counters(&self) -> BTreeMap<&'static str, u64> {
        COUNTER_NAMES
            .iter()
            .map(|(name, idx)| {
                let sum = self
                    .counters
                    .get(idx, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, sum)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_mirror_the_c_enum() {
        let header = include_str!("../../bpf/datapath.h");
        for r in DropReason::ALL {
            assert_eq!(DropReason::from_code(r as u32), Some(r));
            let c_name = match r {
                DropReason::PolicyIngress => "DROP_POLICY_INGRESS",
                DropReason::PolicyEgress => "DROP_POLICY_EGRESS",
                DropReason::NoBackend => "DROP_NO_BACKEND",
                DropReason::SpoofedSource => "DROP_SPOOFED_SOURCE",
                DropReason::UnsupportedL3 => "DROP_UNSUPPORTED_L3",
                DropReason::NatFailed => "DROP_NAT_FAILED",
                DropReason::RedirectFailed => "DROP_REDIRECT_FAILED",
            };
            let line = format!("{c_name} = {},", r as u32);
            assert!(header.contains(&line), "datapath.h lacks `{line}`");
        }
        assert_eq!(DropReason::from_code(0), None);
        let max = header
            .split("DROP_MAX = ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.trim().parse::<u32>().ok())
            .expect("DROP_MAX in datapath.h");
        assert!(DropReason::ALL.iter().all(|r| (*r as u32) < max));
    }
}
