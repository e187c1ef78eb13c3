//! Subnets and security groups of the simulated VPCs, and each subnet's
//! address bookkeeping: which address belongs to which ENI, which are free
//! (AWS reserves the first four and the last), how many are available.

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
};

use sextant_kit::sync::lock;

use super::{SetupError, SimCloud, State};
use crate::{Eni, SecurityGroup, Subnet, Tags};

/// A subnet and the owner of every address taken in it.
pub(super) struct SimSubnet {
    pub(super) subnet: Subnet,
    pub(super) base: u32,
    /// Usable host offsets: AWS reserves the first four and the last address.
    pub(super) first: u32,
    pub(super) last: u32,
    pub(super) cursor: u32,
    pub(super) freed: BTreeSet<u32>,
    pub(super) owners: HashMap<Ipv4Addr, String>,
}

impl SimSubnet {
    pub(super) fn usable(&self) -> u32 {
        self.last - self.first + 1
    }

    pub(super) fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base + self.first && v <= self.base + self.last
    }

    pub(super) fn allocate(&mut self, eni: &str) -> Option<Ipv4Addr> {
        let offset = match self.freed.pop_first() {
            Some(o) => o,
            None if self.cursor <= self.last => {
                self.cursor += 1;
                self.cursor - 1
            }
            None => return None,
        };
        let ip = Ipv4Addr::from(self.base + offset);
        self.owners.insert(ip, eni.to_owned());
        self.refresh();
        Some(ip)
    }

    pub(super) fn take_specific(&mut self, ip: Ipv4Addr, eni: &str) {
        let offset = u32::from(ip) - self.base;
        if offset >= self.cursor {
            // Skip past it: addresses between the cursor and it go to the free set.
            self.freed.extend(self.cursor..offset);
            self.cursor = offset + 1;
        } else {
            self.freed.remove(&offset);
        }
        self.owners.insert(ip, eni.to_owned());
        self.refresh();
    }

    pub(super) fn release(&mut self, ip: Ipv4Addr) {
        if self.owners.remove(&ip).is_some() {
            self.freed.insert(u32::from(ip) - self.base);
        }
        self.refresh();
    }

    pub(super) fn refresh(&mut self) {
        let used = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
        self.subnet.available_ips = self.usable().saturating_sub(used);
    }
}

fn parse_cidr(cidr: &str) -> Option<(u32, u8)> {
    let (a, l) = cidr.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok()?;
    (l <= 28).then_some((u32::from(a) & (u32::MAX << (32 - l)), l))
}

impl SimCloud {
    /// Adds a subnet; returns its id.
    pub fn add_subnet(
        &self,
        vpc_id: &str,
        zone: &str,
        cidr: &str,
        tags: Tags,
    ) -> Result<String, SetupError> {
        let (base, len) = parse_cidr(cidr).ok_or_else(|| SetupError::BadCidr(cidr.into()))?;
        let size = 1u32 << (32 - len);
        let mut st = lock(&self.state);
        let id = st.id("subnet");
        let mut s = SimSubnet {
            subnet: Subnet {
                id: id.clone(),
                vpc_id: vpc_id.into(),
                zone: zone.into(),
                cidr: cidr.into(),
                available_ips: 0,
                tags,
            },
            base,
            first: 4,
            last: size - 2,
            cursor: 4,
            freed: BTreeSet::new(),
            owners: HashMap::new(),
        };
        s.refresh();
        st.subnets.insert(id.clone(), s);
        Ok(id)
    }

    /// Adds a security group; returns its id.
    pub fn add_security_group(&self, vpc_id: &str, name: &str, tags: Tags) -> String {
        let mut st = lock(&self.state);
        let id = st.id("sg");
        st.security_groups.insert(
            id.clone(),
            SecurityGroup {
                id: id.clone(),
                vpc_id: vpc_id.into(),
                name: name.into(),
                tags,
            },
        );
        id
    }
}

/// Returns every address of `eni` to its subnet.
pub(super) fn release_all(st: &mut State, eni: &Eni) {
    if let Some(s) = st.subnets.get_mut(&eni.subnet_id) {
        s.release(eni.primary_ip);
        for ip in &eni.secondary_ips {
            s.release(*ip);
        }
    }
}
