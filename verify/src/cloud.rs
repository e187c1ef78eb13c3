//! A tiny in-memory cloud: one subnet of a handful of addresses, ENIs that
//! hold them, instances they attach to. It answers the [`EniCloud`] calls
//! the node IPAM and fixed-IP code make, with the semantics of EC2 that
//! matter to ownership (and of `sextant_cloud::sim`): `AssignIps::Count`
//! takes the lowest free addresses, a specific assignment with reassignment
//! moves an address from another ENI in one call, an unassign of an address
//! the ENI does not hold is refused and changes nothing.
//!
//! Its state ([`CloudState`]) is plain, ordered data, so it is part of a
//! model state; [`MiniCloud`] lends it to the code under test for one step
//! (`set`, the call, `take`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Mutex, MutexGuard, PoisonError},
};

use async_trait::async_trait;
use sextant_cloud::{
    Action, AssignIps, Attachment, CreateEni, Eni, EniCloud, EniState, Error, InstanceLimits,
    InstanceNetwork, Page, PageRequest, Result, SecurityGroup, Subnet, Tags,
};

/// The one subnet.
pub const SUBNET: &str = "subnet-a";
/// Its zone.
pub const ZONE: &str = "zone-a";
/// Its VPC.
pub const VPC: &str = "vpc-1";
/// The one instance type.
pub const INSTANCE_TYPE: &str = "t.model";

/// One ENI.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EniRec {
    /// Instance and device index, while attached.
    pub attached: Option<(String, u32)>,
    /// Secondary addresses.
    pub ips: BTreeSet<Ipv4Addr>,
    /// Tags.
    pub tags: Tags,
}

/// Everything the cloud knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CloudState {
    /// The subnet's assignable addresses.
    pub universe: Vec<Ipv4Addr>,
    /// ENIs by id.
    pub enis: BTreeMap<String, EniRec>,
    /// Counter for new ENI ids.
    pub next_eni: u32,
    /// Addresses per ENI, primary included (the instance type's limit).
    pub ipv4_per_eni: u32,
    /// ENIs per instance, primary included.
    pub max_enis: u32,
}

impl CloudState {
    /// A cloud with `universe` free and no ENIs.
    pub fn new(universe: Vec<Ipv4Addr>, max_enis: u32, ipv4_per_eni: u32) -> Self {
        CloudState {
            universe,
            enis: BTreeMap::new(),
            next_eni: 0,
            ipv4_per_eni,
            max_enis,
        }
    }

    /// Adds an ENI `id` attached to `instance` at `device` (or unattached).
    pub fn add_eni(&mut self, id: &str, attached: Option<(&str, u32)>, tags: Tags) {
        self.enis.insert(
            id.to_owned(),
            EniRec {
                attached: attached.map(|(i, d)| (i.to_owned(), d)),
                ips: BTreeSet::new(),
                tags,
            },
        );
    }

    /// The ENI holding `ip`.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<&str> {
        self.enis
            .iter()
            .find(|(_, e)| e.ips.contains(&ip))
            .map(|(id, _)| id.as_str())
    }

    /// Addresses on ENIs attached to `instance`.
    pub fn on_instance(&self, instance: &str) -> BTreeSet<Ipv4Addr> {
        self.enis
            .values()
            .filter(|e| e.attached.as_ref().is_some_and(|(i, _)| i == instance))
            .flat_map(|e| e.ips.iter().copied())
            .collect()
    }

    fn free(&self) -> Vec<Ipv4Addr> {
        let used: BTreeSet<Ipv4Addr> = self.enis.values().flat_map(|e| e.ips.clone()).collect();
        self.universe
            .iter()
            .copied()
            .filter(|ip| !used.contains(ip))
            .collect()
    }

    fn room(&self, id: &str) -> usize {
        let Some(e) = self.enis.get(id) else { return 0 };
        if e.attached.is_none() {
            // Parking ENIs are bounded by the executor, not here.
            return usize::MAX;
        }
        (self.ipv4_per_eni.saturating_sub(1) as usize).saturating_sub(e.ips.len())
    }

    fn eni(&self, id: &str, i: u32) -> Eni {
        let e = &self.enis[id];
        Eni {
            id: id.to_owned(),
            subnet_id: SUBNET.into(),
            vpc_id: VPC.into(),
            zone: ZONE.into(),
            mac: format!("02:00:00:00:00:{i:02x}"),
            primary_ip: Ipv4Addr::new(10, 9, 0, u8::try_from(i % 250).unwrap_or(0)),
            secondary_ips: e.ips.iter().copied().collect(),
            security_groups: vec![],
            tags: e.tags.clone(),
            state: if e.attached.is_some() {
                EniState::InUse
            } else {
                EniState::Available
            },
            attachment: e.attached.as_ref().map(|(inst, d)| Attachment {
                id: format!("attach-{id}"),
                instance_id: inst.clone(),
                device_index: *d,
            }),
        }
    }
}

fn not_found(action: Action, what: &str) -> Error {
    Error::NotFound {
        action,
        message: what.to_owned(),
    }
}

fn invalid(action: Action, what: String) -> Error {
    Error::InvalidRequest {
        action,
        message: what,
    }
}

/// The cloud the code under test calls, holding a [`CloudState`] for one step.
#[derive(Debug)]
pub struct MiniCloud {
    state: Mutex<CloudState>,
}

impl MiniCloud {
    /// A cloud holding `state`.
    pub fn new(state: CloudState) -> Self {
        MiniCloud {
            state: Mutex::new(state),
        }
    }

    fn st(&self) -> MutexGuard<'_, CloudState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts `state` in place for the next call.
    pub fn set(&self, state: CloudState) {
        *self.st() = state;
    }

    /// The state as the calls left it.
    pub fn get(&self) -> CloudState {
        self.st().clone()
    }
}

#[async_trait]
impl EniCloud for MiniCloud {
    fn provider(&self) -> &'static str {
        "model"
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let st = self.st();
        let mut enis: Vec<Eni> = st
            .enis
            .iter()
            .enumerate()
            .filter(|(_, (_, e))| e.attached.as_ref().is_some_and(|(i, _)| i == instance_id))
            .map(|(n, (id, _))| st.eni(id, u32::try_from(n).unwrap_or(0)))
            .collect();
        enis.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        Ok(InstanceNetwork {
            instance_id: instance_id.to_owned(),
            enis,
        })
    }

    async fn list_enis(&self, _vpc_id: &str, _page: PageRequest) -> Result<Page<Eni>> {
        let st = self.st();
        let items = st
            .enis
            .keys()
            .enumerate()
            .map(|(n, id)| st.eni(id, u32::try_from(n).unwrap_or(0)))
            .collect();
        Ok(Page { items, next: None })
    }

    async fn subnets(&self, _vpc_id: &str) -> Result<Vec<Subnet>> {
        let st = self.st();
        Ok(vec![Subnet {
            id: SUBNET.into(),
            vpc_id: VPC.into(),
            zone: ZONE.into(),
            cidr: "10.0.0.0/24".into(),
            available_ips: u32::try_from(st.free().len()).unwrap_or(0),
            tags: Tags::new(),
        }])
    }

    async fn security_groups(&self, _vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        Ok(vec![])
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        let st = self.st();
        Ok(InstanceLimits {
            instance_type: instance_type.to_owned(),
            max_enis: st.max_enis,
            ipv4_per_eni: st.ipv4_per_eni,
        })
    }

    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        let mut st = self.st();
        let free = st.free();
        let n = request.secondary_ips as usize;
        if free.len() < n {
            return Err(Error::InsufficientAddresses {
                action: Action::CreateEni,
                message: "subnet full".into(),
            });
        }
        let id = format!("eni-n{}", st.next_eni);
        st.next_eni += 1;
        st.enis.insert(
            id.clone(),
            EniRec {
                attached: None,
                ips: free.into_iter().take(n).collect(),
                tags: request.tags.clone(),
            },
        );
        let i = st.next_eni + 100;
        Ok(st.eni(&id, i))
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        let mut st = self.st();
        let taken = st.enis.values().any(|e| {
            e.attached
                .as_ref()
                .is_some_and(|(i, d)| i == instance_id && *d == device_index)
        });
        let e = st
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| not_found(Action::AttachEni, eni_id))?;
        if e.attached.is_some() || taken {
            return Err(invalid(Action::AttachEni, format!("{eni_id}: in use")));
        }
        e.attached = Some((instance_id.to_owned(), device_index));
        Ok(())
    }

    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        let mut st = self.st();
        if !st.enis.contains_key(eni_id) {
            return Err(not_found(Action::AssignIps, eni_id));
        }
        let room = st.room(eni_id);
        match request {
            AssignIps::Count(n) => {
                let n = *n as usize;
                if n > room {
                    return Err(invalid(Action::AssignIps, format!("{eni_id}: full")));
                }
                let free = st.free();
                if free.len() < n {
                    return Err(Error::InsufficientAddresses {
                        action: Action::AssignIps,
                        message: "subnet full".into(),
                    });
                }
                let got: Vec<Ipv4Addr> = free.into_iter().take(n).collect();
                if let Some(e) = st.enis.get_mut(eni_id) {
                    e.ips.extend(got.iter().copied());
                }
                Ok(got)
            }
            AssignIps::Specific {
                ips,
                allow_reassignment,
            } => {
                let new: Vec<Ipv4Addr> = ips
                    .iter()
                    .copied()
                    .filter(|ip| !st.enis[eni_id].ips.contains(ip))
                    .collect();
                if new.len() > room {
                    return Err(invalid(Action::AssignIps, format!("{eni_id}: full")));
                }
                for ip in &new {
                    if !st.universe.contains(ip) {
                        return Err(invalid(Action::AssignIps, format!("{ip} not in subnet")));
                    }
                    if let Some(h) = st.holder(*ip)
                        && !allow_reassignment
                    {
                        return Err(invalid(Action::AssignIps, format!("{ip} in use on {h}")));
                    }
                }
                for e in st.enis.values_mut() {
                    e.ips.retain(|ip| !new.contains(ip));
                }
                if let Some(e) = st.enis.get_mut(eni_id) {
                    e.ips.extend(new.iter().copied());
                }
                Ok(ips.clone())
            }
        }
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let mut st = self.st();
        let e = st
            .enis
            .get_mut(eni_id)
            .ok_or_else(|| not_found(Action::UnassignIps, eni_id))?;
        if let Some(ip) = ips.iter().find(|ip| !e.ips.contains(ip)) {
            return Err(invalid(
                Action::UnassignIps,
                format!("{ip} is not a secondary address of {eni_id}"),
            ));
        }
        e.ips.retain(|ip| !ips.contains(ip));
        Ok(())
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        let mut st = self.st();
        let e = st
            .enis
            .get_mut(&eni.id)
            .ok_or_else(|| not_found(Action::DetachEni, &eni.id))?;
        e.attached = None;
        Ok(())
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        let mut st = self.st();
        match st.enis.get(eni_id) {
            None => Err(not_found(Action::DeleteEni, eni_id)),
            Some(e) if e.attached.is_some() => {
                Err(invalid(Action::DeleteEni, format!("{eni_id} is in use")))
            }
            Some(_) => {
                st.enis.remove(eni_id);
                Ok(())
            }
        }
    }
}
