//! The service maps: `SERVICES` (frontend to id and backend count) and
//! `BACKENDS` (id and slot to backend), read back as frontends and their
//! backends.

use std::{collections::BTreeMap, net::Ipv4Addr};

use sextant_agent_api::{Backend, Frontend, Proto};

use super::Datapath;
use crate::error::{Error, Result};

/// The `SERVICES` map key of a frontend.
fn frontend_key(fe: &Frontend) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&fe.vip.octets());
    b[4..6].copy_from_slice(&fe.port.to_be_bytes());
    b[6] = fe.proto.number();
    b
}

/// The frontend of a `SERVICES` map key (`None` for a protocol it never writes).
fn frontend_of_key(b: &[u8; 8]) -> Option<Frontend> {
    Some(Frontend {
        vip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        port: u16::from_be_bytes([b[4], b[5]]),
        proto: Proto::from_number(b[6])?,
    })
}

fn backend_key(id: u32, slot: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[0..4].copy_from_slice(&id.to_ne_bytes());
    b[4..8].copy_from_slice(&slot.to_ne_bytes());
    b
}

impl Datapath {
    /// Sets the backends of a frontend (empty: packets to it are dropped).
    pub fn set_service(&mut self, fe: &Frontend, backends: &[Backend]) -> Result<()> {
        let key = frontend_key(fe);
        let (id, old_count) = match self.services.get(&key, 0) {
            Ok(v) => (
                u32::from_ne_bytes([v[0], v[1], v[2], v[3]]),
                u32::from_ne_bytes([v[4], v[5], v[6], v[7]]),
            ),
            Err(_) => {
                let id = self.next_service_id;
                self.next_service_id += 1;
                (id, 0)
            }
        };
        let count = u32::try_from(backends.len()).map_err(|_| Error::TooManyBackends {
            vip: fe.vip,
            port: fe.port,
        })?;
        for (slot, b) in (0u32..).zip(backends) {
            let mut v = [0u8; 8];
            v[0..4].copy_from_slice(&b.ip.octets());
            v[4..6].copy_from_slice(&b.port.to_be_bytes());
            self.backends
                .insert(backend_key(id, slot), v, 0)
                .map_err(|e| Error::bpf(format!("writing backend {}", b.ip), e))?;
        }
        let mut v = [0u8; 8];
        v[0..4].copy_from_slice(&id.to_ne_bytes());
        v[4..8].copy_from_slice(&count.to_ne_bytes());
        self.services
            .insert(key, v, 0)
            .map_err(|e| Error::bpf(format!("writing service {}:{}", fe.vip, fe.port), e))?;
        for slot in count..old_count {
            let _ = self.backends.remove(&backend_key(id, slot));
        }
        Ok(())
    }

    /// Removes a frontend and its backends.
    pub fn remove_service(&mut self, fe: &Frontend) -> Result<()> {
        let key = frontend_key(fe);
        let Ok(v) = self.services.get(&key, 0) else {
            return Ok(());
        };
        let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        let count = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
        self.services
            .remove(&key)
            .map_err(|e| Error::bpf(format!("removing service {}:{}", fe.vip, fe.port), e))?;
        for slot in 0..count {
            let _ = self.backends.remove(&backend_key(id, slot));
        }
        Ok(())
    }

    /// Frontends in the map.
    pub fn service_count(&self) -> usize {
        self.services.keys().filter(|k| k.is_ok()).count()
    }

    /// The service map as the programs see it: every frontend with its
    /// backends in slot order.
    pub fn services(&self) -> BTreeMap<Frontend, Vec<Backend>> {
        let mut out = BTreeMap::new();
        for (key, v) in self.services.iter().filter_map(|r| r.ok()) {
            let Some(fe) = frontend_of_key(&key) else {
                continue;
            };
            let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
            let count = u32::from_ne_bytes([v[4], v[5], v[6], v[7]]);
            let backends = (0..count)
                .filter_map(|slot| self.backends.get(&backend_key(id, slot), 0).ok())
                .map(|b| Backend {
                    ip: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
                    port: u16::from_be_bytes([b[4], b[5]]),
                })
                .collect();
            out.insert(fe, backends);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_keys_decode_to_what_was_encoded() {
        for fe in [
            Frontend {
                vip: Ipv4Addr::new(10, 96, 0, 10),
                port: 443,
                proto: Proto::Tcp,
            },
            Frontend {
                vip: Ipv4Addr::new(10, 96, 255, 1),
                port: 53,
                proto: Proto::Udp,
            },
        ] {
            assert_eq!(frontend_of_key(&frontend_key(&fe)), Some(fe));
        }
        assert_eq!(frontend_of_key(&[10, 0, 0, 1, 0, 80, 1, 0]), None);
    }
}
