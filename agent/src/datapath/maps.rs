//! Typed access to the endpoint and counter maps: `ENDPOINTS` (one pod of
//! this node per IP) and the per-CPU `COUNTERS`.

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
