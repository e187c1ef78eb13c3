//! What a simulated cloud must keep across a restart of the process that
//! holds it: its instances and ENIs (attachment, addresses, tags) and its
//! id counter, as JSON. The VPC itself (subnets, security groups) is laid
//! out again from the same flags first; [`SimCloud::restore`] then puts
//! the instances and ENIs back and marks their addresses taken. Buckets,
//! statistics and client tokens start over, as a restarted EC2 client's
//! would see them.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use sextant_kit::sync::lock;

use super::{SetupError, SimCloud, instances::SimInstance, instances::instance_type_limits};
use crate::{Attachment, Eni, EniState, Tags};

/// The durable part of a simulated cloud.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimSnapshot {
    /// The id counter (ids never repeat across a restart).
    pub next_id: u64,
    /// Instances: id and type.
    pub instances: Vec<SnapshotInstance>,
    /// Every ENI.
    pub enis: Vec<SnapshotEni>,
}

/// One instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInstance {
    /// `i-...`
    pub id: String,
    /// Its type (one the simulator knows).
    pub instance_type: String,
}

/// One ENI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotEni {
    /// `eni-...`
    pub id: String,
    /// Its subnet.
    pub subnet_id: String,
    /// Zone of the subnet.
    pub zone: String,
    /// Primary address.
    pub primary_ip: Ipv4Addr,
    /// Secondary addresses.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Security groups.
    pub security_groups: Vec<String>,
    /// Tags.
    pub tags: Tags,
    /// Where it is attached, if it is.
    pub attachment: Option<SnapshotAttachment>,
}

/// An ENI's attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotAttachment {
    /// The instance.
    pub instance_id: String,
    /// Its device index there.
    pub device_index: u32,
}

impl SimCloud {
    /// The durable part of this cloud, ENIs and instances in id order.
    pub fn snapshot(&self) -> SimSnapshot {
        let st = lock(&self.state);
        SimSnapshot {
            next_id: st.next_id,
            instances: st
                .instances
                .iter()
                .map(|(id, i)| SnapshotInstance {
                    id: id.clone(),
                    instance_type: i.instance_type.instance_type.clone(),
                })
                .collect(),
            enis: st
                .enis
                .values()
                .map(|e| SnapshotEni {
                    id: e.id.clone(),
                    subnet_id: e.subnet_id.clone(),
                    zone: e.zone.clone(),
                    primary_ip: e.primary_ip,
                    secondary_ips: e.secondary_ips.clone(),
                    security_groups: e.security_groups.clone(),
                    tags: e.tags.clone(),
                    attachment: e.attachment.as_ref().map(|a| SnapshotAttachment {
                        instance_id: a.instance_id.clone(),
                        device_index: a.device_index,
                    }),
                })
                .collect(),
        }
    }

    /// Puts `snap`'s instances and ENIs into this cloud, whose VPC must
    /// have been laid out as before. Refuses, changing nothing, a snapshot
    /// naming an unknown subnet or instance type, an address outside its
    /// subnet or taken twice, or an instance or ENI this cloud has already.
    pub fn restore(&self, snap: &SimSnapshot) -> Result<(), SetupError> {
        let mut st = lock(&self.state);
        let mut instances = Vec::with_capacity(snap.instances.len());
        for i in &snap.instances {
            if st.instances.contains_key(&i.id) {
                return Err(SetupError::DuplicateInstance(i.id.clone()));
            }
            instances.push((i.id.clone(), instance_type_limits(&i.instance_type)?));
        }
        let mut taken = std::collections::BTreeSet::new();
        for e in &snap.enis {
            let subnet = st
                .subnets
                .get(&e.subnet_id)
                .ok_or_else(|| SetupError::UnknownSubnet(e.subnet_id.clone()))?;
            for ip in std::iter::once(&e.primary_ip).chain(&e.secondary_ips) {
                if !subnet.contains(*ip) || subnet.owners.contains_key(ip) || !taken.insert(*ip) {
                    return Err(SetupError::BadSnapshot(format!(
                        "{ip} of {} is outside {} or taken twice",
                        e.id, e.subnet_id
                    )));
                }
            }
            if st.enis.contains_key(&e.id) {
                return Err(SetupError::BadSnapshot(format!("{} exists already", e.id)));
            }
        }
        for (id, limits) in instances {
            st.instances.insert(
                id,
                SimInstance {
                    instance_type: limits,
                },
            );
        }
        for e in &snap.enis {
            let vpc_id = match st.subnets.get_mut(&e.subnet_id) {
                Some(subnet) => {
                    for ip in std::iter::once(&e.primary_ip).chain(&e.secondary_ips) {
                        subnet.take_specific(*ip, &e.id);
                    }
                    subnet.subnet.vpc_id.clone()
                }
                None => continue, // checked above
            };
            let eni = Eni {
                id: e.id.clone(),
                subnet_id: e.subnet_id.clone(),
                vpc_id,
                zone: e.zone.clone(),
                mac: super::enis::mac_of(&e.id),
                primary_ip: e.primary_ip,
                secondary_ips: e.secondary_ips.clone(),
                security_groups: e.security_groups.clone(),
                tags: e.tags.clone(),
                state: if e.attachment.is_some() {
                    EniState::InUse
                } else {
                    EniState::Available
                },
                attachment: e.attachment.as_ref().map(|a| Attachment {
                    id: format!("attach-{}", e.id),
                    instance_id: a.instance_id.clone(),
                    device_index: a.device_index,
                }),
            };
            st.enis.insert(e.id.clone(), eni);
        }
        st.next_id = st.next_id.max(snap.next_id);
        Ok(())
    }
}
