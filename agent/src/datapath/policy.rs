//! The policy maps: allow entries in `POLICY` (an LPM trie on identities,
//! direction, protocol and port prefix), default-deny bits in
//! `POLICY_ENFORCED`, CIDR identities in `IPCACHE`, per-policy counters in
//! `POLICY_VERDICTS`.

use std::{collections::BTreeMap, net::Ipv4Addr};

use aya::maps::lpm_trie::Key;

use super::Datapath;
use crate::error::{Error, Result};

/// Bits of the `POLICY_ENFORCED` map: the directions a local identity is
/// default-deny in.
pub const ENFORCE_INGRESS: u32 = 1;
/// See [`ENFORCE_INGRESS`].
pub const ENFORCE_EGRESS: u32 = 2;
/// Fixed bits of a `POLICY` key before the port prefix.
const POLICY_FIXED_BITS: u32 = 80;
/// Slots of the per-policy verdict counter array.
pub const POLICY_SLOTS: u32 = 16384;

/// One allow entry of the `POLICY` map: packets between local pods of
/// identity `local` and peers of identity `remote` (0 = any) in direction
/// `egress` (else ingress), protocol `proto` (0 = any, then `port_prefix` is
/// 0), destination port matching the first `port_prefix` bits of `port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyEntry {
    /// Identity of the selected local pod.
    pub local: u32,
    /// Identity of the peer, 0 for any.
    pub remote: u32,
    /// From the pod (egress) or to it (ingress).
    pub egress: bool,
    /// IP protocol number, 0 for any.
    pub proto: u8,
    /// Destination port (host order).
    pub port: u16,
    /// Leading bits of `port` that must match (0..=16).
    pub port_prefix: u8,
}

impl PolicyEntry {
    fn key(&self) -> Key<[u8; 12]> {
        let mut b = [0u8; 12];
        b[0..4].copy_from_slice(&self.local.to_ne_bytes());
        b[4..8].copy_from_slice(&self.remote.to_ne_bytes());
        b[8] = u8::from(self.egress);
        b[9] = self.proto;
        let prefix = u32::from(self.port_prefix.min(16));
        let mask = if prefix == 0 {
            0
        } else {
            u16::MAX << (16 - prefix)
        };
        b[10..12].copy_from_slice(&(self.port & mask).to_be_bytes());
        Key::new(POLICY_FIXED_BITS + prefix, b)
    }
}

/// The verdict counter slot of policy `index`: the index itself while it
/// fits the counter array; past it, `NO_VERDICT_SLOT`, which the program's
/// lookup misses, so such a policy counts nothing instead of crediting
/// another policy's counter (never `index % POLICY_SLOTS`).
pub fn verdict_slot(index: u32) -> u32 {
    if index < POLICY_SLOTS {
        index
    } else {
        NO_VERDICT_SLOT
    }
}

/// The slot of a policy past the counter array (out of its bounds).
pub const NO_VERDICT_SLOT: u32 = u32::MAX;

fn policy_value(index: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&verdict_slot(index).to_ne_bytes());
    b
}

impl Datapath {
    /// Adds or replaces one policy allow entry, counted in verdict slot `index`.
    pub fn upsert_policy(&mut self, entry: &PolicyEntry, index: u32) -> Result<()> {
        self.policy
            .insert(&entry.key(), policy_value(index), 0)
            .map_err(|e| Error::bpf(format!("writing policy entry {entry:?}"), e))
    }

    /// Removes one policy allow entry; absent is fine.
    pub fn remove_policy(&mut self, entry: &PolicyEntry) -> Result<()> {
        match self.policy.remove(&entry.key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing policy entry {entry:?}"), e)),
        }
    }

    /// Sets the default-deny directions (`ENFORCE_*` bits) of local identity
    /// `identity`; 0 removes it.
    pub fn set_enforced(&mut self, identity: u32, bits: u32) -> Result<()> {
        let r = if bits == 0 {
            match self.enforced.remove(&identity) {
                Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                r => r,
            }
        } else {
            self.enforced.insert(identity, bits, 0)
        };
        r.map_err(|e| Error::bpf(format!("writing enforcement of identity {identity}"), e))
    }

    /// The default-deny bits of every local identity that has any.
    pub fn enforced(&self) -> BTreeMap<u32, u32> {
        self.enforced.iter().filter_map(|r| r.ok()).collect()
    }

    /// Maps `addr/prefix` to security identity `identity`.
    pub fn upsert_ipcache(&mut self, addr: Ipv4Addr, prefix: u8, identity: u32) -> Result<()> {
        self.ipcache
            .insert(
                &Key::new(u32::from(prefix.min(32)), addr.octets()),
                identity,
                0,
            )
            .map_err(|e| Error::bpf(format!("writing ipcache {addr}/{prefix}"), e))
    }

    /// Removes `addr/prefix` from the ipcache; absent is fine.
    pub fn remove_ipcache(&mut self, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        match self
            .ipcache
            .remove(&Key::new(u32::from(prefix.min(32)), addr.octets()))
        {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(Error::bpf(format!("removing ipcache {addr}/{prefix}"), e)),
        }
    }

    /// Removes every `POLICY` entry not in `keep`; returns how many went.
    pub fn retain_policy(&mut self, keep: &[PolicyEntry]) -> Result<usize> {
        let keep: std::collections::BTreeSet<(u32, [u8; 12])> = keep
            .iter()
            .map(|e| {
                let k = e.key();
                (k.prefix_len(), k.data())
            })
            .collect();
        let stale: Vec<Key<[u8; 12]>> = self
            .policy
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !keep.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in &stale {
            match self.policy.remove(k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(Error::bpf("removing a stale policy entry", e)),
            }
        }
        Ok(stale.len())
    }

    /// Removes every `IPCACHE` entry not in `keep` (`(address, prefix length)`);
    /// returns how many went.
    pub fn retain_ipcache(
        &mut self,
        keep: &std::collections::BTreeSet<(Ipv4Addr, u8)>,
    ) -> Result<usize> {
        let stale: Vec<(Ipv4Addr, u8)> = self
            .ipcache_keys()
            .into_iter()
            .filter(|k| !keep.contains(k))
            .collect();
        for (addr, len) in &stale {
            self.remove_ipcache(*addr, *len)?;
        }
        Ok(stale.len())
    }

    /// Every `IPCACHE` key, `(address, prefix length)`.
    pub fn ipcache_keys(&self) -> Vec<(Ipv4Addr, u8)> {
        self.ipcache
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| {
                let len = u8::try_from(k.prefix_len().min(32)).unwrap_or(32);
                (Ipv4Addr::from(k.data()), len)
            })
            .collect()
    }

    /// Zeroes the verdict counters of every slot not in `keep` that counted
    /// anything (slots of policies gone while no agent ran); returns how many.
    pub fn retain_verdicts(&mut self, keep: &std::collections::BTreeSet<u32>) -> Result<usize> {
        let stale: Vec<u32> = self
            .policy_verdicts(0..POLICY_SLOTS)
            .into_keys()
            .filter(|s| !keep.contains(s))
            .collect();
        for slot in &stale {
            self.reset_verdicts(*slot)?;
        }
        Ok(stale.len())
    }

    /// Entries in the `POLICY` map.
    pub fn policy_count(&self) -> usize {
        self.policy.keys().filter(|k| k.is_ok()).count()
    }

    /// Zeroes the verdict counters of `slot`: the next policy given the slot
    /// starts from 0 instead of inheriting the packets of the one before.
    pub fn reset_verdicts(&mut self, slot: u32) -> Result<()> {
        self.set_verdicts(slot, 0)
    }

    /// Sets slot `slot`'s counter to `n` on the first CPU and 0 on the others.
    pub(crate) fn set_verdicts(&mut self, slot: u32, n: u64) -> Result<()> {
        if slot >= POLICY_SLOTS {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
        let mut values = vec![0u64; cpus];
        if let Some(first) = values.first_mut() {
            *first = n;
        }
        let values = aya::maps::PerCpuValues::try_from(values)
            .map_err(|e| Error::io("per-CPU verdict values", e))?;
        self.verdicts
            .set(slot, values, 0)
            .map_err(|e| Error::bpf(format!("resetting the verdicts of slot {slot}"), e))
    }

    /// Allowed packets of each of `slots` (summed over CPUs), non-zero ones only.
    pub fn policy_verdicts(&self, slots: impl IntoIterator<Item = u32>) -> BTreeMap<u32, u64> {
        slots
            .into_iter()
            .filter(|i| *i < POLICY_SLOTS)
            .filter_map(|i| {
                let n: u64 = self.verdicts.get(&i, 0).ok()?.iter().sum();
                (n > 0).then_some((i, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdict_slots_never_alias_past_the_counter_array() {
        assert_eq!(verdict_slot(0), 0);
        assert_eq!(verdict_slot(POLICY_SLOTS - 1), POLICY_SLOTS - 1);
        // Before: index % POLICY_SLOTS credited policy 16389's packets to policy 5.
        for index in [POLICY_SLOTS, POLICY_SLOTS + 5, u32::MAX - 1] {
            let slot = verdict_slot(index);
            assert!(slot >= POLICY_SLOTS, "{index} -> {slot}");
            assert_eq!(
                u32::from_ne_bytes(policy_value(index)[0..4].try_into().unwrap()),
                slot
            );
        }
    }
}
