//! The ENI calls of the simulated cloud ([`EniCloud`] for [`SimCloud`]):
//! describe an instance's ENIs or page through a VPC's, create an ENI with
//! addresses from its subnet, attach it within the instance type's limits,
//! detach (never the primary) and delete it. Every call passes the gate
//! first (latency, counting, throttling, faults).

use std::net::Ipv4Addr;

use async_trait::async_trait;
use sextant_kit::sync::lock;

use super::{
    INSTANCE_TYPES, Made, SimCloud, SimProvider, State, TokenRecord, addresses,
    instances::instance_type_limits, subnets::release_all,
};
use crate::{
    Action, AssignIps, Attachment, CreateEni, Eni, EniCloud, EniState, Error, InstanceLimits,
    InstanceNetwork, Page, PageRequest, Result, SecurityGroup, Subnet,
};

impl SimCloud {
    /// Every ENI, for audits.
    pub fn all_enis(&self) -> Vec<Eni> {
        lock(&self.state).enis.values().cloned().collect()
    }

    /// Describes the ENIs of one subnet: the per-subnet resync of the
    /// baseline the simulator compares against (counted as `ListEnis`).
    pub async fn describe_subnet_enis(&self, subnet_id: &str) -> Result<Vec<Eni>> {
        self.enter(Action::ListEnis).await?;
        let st = lock(&self.state);
        Ok(st
            .enis
            .values()
            .filter(|e| e.subnet_id == subnet_id)
            .cloned()
            .collect())
    }
}

/// A stable, locally administered MAC for an ENI id.
pub(super) fn mac_of(eni_id: &str) -> String {
    let h = eni_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[1], b[2], b[3], b[4], b[5]
    )
}

pub(super) fn not_found(action: Action, what: &str, id: &str) -> Error {
    Error::NotFound {
        action,
        message: format!("{what} {id} does not exist"),
    }
}

pub(super) fn invalid(action: Action, message: impl Into<String>) -> Error {
    Error::InvalidRequest {
        action,
        message: message.into(),
    }
}

/// Most secondary addresses one call may assign at ENI creation (ECS allows
/// 49; EC2's largest types allow 49 secondaries on one ENI).
pub(super) const MAX_AT_CREATE: u32 = 49;

#[async_trait]
impl EniCloud for SimCloud {
    fn provider(&self) -> &'static str {
        "sim"
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let action = Action::DescribeInstanceNetwork;
        self.run(action, |st| {
            if !st.instances.contains_key(instance_id) {
                return Err(not_found(action, "instance", instance_id));
            }
            let mut enis: Vec<Eni> = st
                .enis
                .values()
                .filter(|e| {
                    e.attachment
                        .as_ref()
                        .is_some_and(|a| a.instance_id == instance_id)
                })
                .cloned()
                .collect();
            enis.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
            Ok(InstanceNetwork {
                instance_id: instance_id.into(),
                enis,
            })
        })
        .await
    }

    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        let action = Action::ListEnis;
        self.run(action, |st| {
            let size = page.size.clamp(5, 1000) as usize;
            let start = page.token.clone().unwrap_or_default();
            let mut items: Vec<Eni> = st
                .enis
                .range::<String, _>((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
                .map(|(_, e)| e)
                .filter(|e| e.vpc_id == vpc_id)
                .take(size + 1)
                .cloned()
                .collect();
            let next = if items.len() > size {
                items.truncate(size);
                items.last().map(|e| e.id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        self.run(Action::DescribeSubnets, |st| {
            Ok(st
                .subnets
                .values()
                .filter(|s| s.subnet.vpc_id == vpc_id)
                .map(|s| s.subnet.clone())
                .collect())
        })
        .await
    }

    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        self.run(Action::DescribeSecurityGroups, |st| {
            Ok(st
                .security_groups
                .values()
                .filter(|g| g.vpc_id == vpc_id)
                .cloned()
                .collect())
        })
        .await
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        let action = Action::DescribeInstanceTypes;
        self.run(action, |_| {
            instance_type_limits(instance_type).map_err(|_| {
                let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, ..)| *n).collect();
                invalid(
                    action,
                    format!(
                        "unknown instance type {instance_type} (the simulator knows {})",
                        known.join(", ")
                    ),
                )
            })
        })
        .await
    }

    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        self.run(Action::CreateEni, |st| create(st, request)).await
    }

    /// As EC2: the same token with the same request answers with the ENI
    /// the first call created (as it is now); with another request it is
    /// refused (`IdempotentParameterMismatch`).
    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        let action = Action::CreateEni;
        self.run(action, |st| {
            let fingerprint = format!("{action}:{request:?}");
            if let Some(seen) = st.tokens.get(client_token) {
                if seen.request != fingerprint {
                    return Err(invalid(
                        action,
                        format!("IdempotentParameterMismatch: client token {client_token} was used with another request"),
                    ));
                }
                return match &seen.made {
                    Made::Eni(first) => Ok(st.enis.get(&first.id).unwrap_or(first).clone()),
                    Made::Ips(_) => Err(invalid(action, "client token of another call")),
                };
            }
            let eni = create(st, request)?;
            st.tokens.insert(
                client_token.to_owned(),
                TokenRecord {
                    request: fingerprint,
                    made: Made::Eni(Box::new(eni.clone())),
                },
            );
            Ok(eni)
        })
        .await
    }

    /// ECS takes a token on AssignPrivateIpAddresses, EC2 none: the
    /// Alibaba model honours it as ECS does, the AWS model ignores it.
    async fn assign_ips_with_token(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        if !self.honours_client_token(action) {
            return self.assign_ips(eni_id, request).await;
        }
        self.run(action, |st| {
            let fingerprint = format!("{action}:{eni_id}:{request:?}");
            if let Some(seen) = st.tokens.get(client_token) {
                return match &seen.made {
                    Made::Ips(ips) if seen.request == fingerprint => Ok(ips.clone()),
                    _ => Err(invalid(
                        action,
                        format!("IdempotentParameterMismatch: client token {client_token} was used with another request"),
                    )),
                };
            }
            let ips = addresses::assign(st, eni_id, request)?;
            st.tokens.insert(
                client_token.to_owned(),
                TokenRecord {
                    request: fingerprint,
                    made: Made::Ips(ips.clone()),
                },
            );
            Ok(ips)
        })
        .await
    }

    fn honours_client_token(&self, action: Action) -> bool {
        match action {
            Action::CreateEni => true,
            Action::AssignIps => lock(&self.config).provider == SimProvider::Alibaba,
            _ => false,
        }
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        let action = Action::AttachEni;
        self.run(action, |st| {
            let limits = st
                .instances
                .get(instance_id)
                .ok_or_else(|| not_found(action, "instance", instance_id))?
                .instance_type
                .clone();
            let on_instance: Vec<u32> = st
                .enis
                .values()
                .filter_map(|e| e.attachment.as_ref())
                .filter(|a| a.instance_id == instance_id)
                .map(|a| a.device_index)
                .collect();
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?;
            if eni.attachment.is_some() {
                return Err(invalid(action, format!("{eni_id} is already attached")));
            }
            if on_instance.len() as u32 >= limits.max_enis {
                return Err(Error::LimitExceeded {
                    action,
                    message: format!(
                        "{} allows {} network interfaces",
                        limits.instance_type, limits.max_enis
                    ),
                });
            }
            if device_index >= limits.max_enis || on_instance.contains(&device_index) {
                return Err(invalid(
                    action,
                    format!("device index {device_index} is not free"),
                ));
            }
            if eni.secondary_ips.len() as u32 > limits.secondary_per_eni() {
                return Err(Error::LimitExceeded {
                    action,
                    message: format!(
                        "{} allows {} addresses per interface",
                        limits.instance_type, limits.ipv4_per_eni
                    ),
                });
            }
            eni.state = EniState::InUse;
            eni.attachment = Some(Attachment {
                id: format!("attach-{eni_id}"),
                instance_id: instance_id.into(),
                device_index,
            });
            Ok(())
        })
        .await
    }

    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        self.run(Action::AssignIps, |st| {
            addresses::assign(st, eni_id, request)
        })
        .await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.run(Action::UnassignIps, |st| {
            addresses::unassign(st, eni_id, ips)
        })
        .await
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        let action = Action::DetachEni;
        self.run(action, |st| {
            let e = st
                .enis
                .get_mut(&eni.id)
                .ok_or_else(|| not_found(action, "network interface", &eni.id))?;
            match &e.attachment {
                None => Err(invalid(action, format!("{} is not attached", eni.id))),
                Some(a) if a.device_index == 0 => {
                    Err(invalid(action, "the primary interface cannot be detached"))
                }
                Some(_) => {
                    e.attachment = None;
                    e.state = EniState::Available;
                    Ok(())
                }
            }
        })
        .await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        let action = Action::DeleteEni;
        self.run(action, |st| {
            let e = st
                .enis
                .get(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?;
            if e.attachment.is_some() {
                return Err(invalid(action, format!("{eni_id} is in use")));
            }
            if let Some(eni) = st.enis.remove(eni_id) {
                release_all(st, &eni);
            }
            Ok(())
        })
        .await
    }
}

/// Creates an ENI with its addresses on `st`.
fn create(st: &mut State, request: &CreateEni) -> Result<Eni> {
    let action = Action::CreateEni;
    if request.secondary_ips > MAX_AT_CREATE {
        return Err(invalid(
            action,
            format!("at most {MAX_AT_CREATE} secondary addresses at creation"),
        ));
    }
    for g in &request.security_groups {
        if !st.security_groups.contains_key(g) {
            return Err(not_found(action, "security group", g));
        }
    }
    let eni_id = st.id("eni");
    let subnet = st
        .subnets
        .get_mut(&request.subnet_id)
        .ok_or_else(|| not_found(action, "subnet", &request.subnet_id))?;
    if subnet.subnet.available_ips < request.secondary_ips + 1 {
        return Err(Error::InsufficientAddresses {
            action,
            message: format!(
                "subnet {} has {} free addresses",
                request.subnet_id, subnet.subnet.available_ips
            ),
        });
    }
    let mut ips = Vec::with_capacity(request.secondary_ips as usize + 1);
    for _ in 0..=request.secondary_ips {
        match subnet.allocate(&eni_id) {
            Some(ip) => ips.push(ip),
            None => {
                for ip in ips {
                    subnet.release(ip);
                }
                return Err(Error::InsufficientAddresses {
                    action,
                    message: "subnet exhausted".into(),
                });
            }
        }
    }
    let primary_ip = ips.remove(0);
    let eni = Eni {
        id: eni_id.clone(),
        subnet_id: request.subnet_id.clone(),
        vpc_id: subnet.subnet.vpc_id.clone(),
        zone: subnet.subnet.zone.clone(),
        mac: mac_of(&eni_id),
        primary_ip,
        secondary_ips: ips,
        security_groups: request.security_groups.clone(),
        tags: request.tags.clone(),
        state: EniState::Available,
        attachment: None,
    };
    st.enis.insert(eni_id, eni.clone());
    Ok(eni)
}
