//! Carrying out fixed-IP steps against the cloud, and the FixedIP status
//! each outcome leads to.
//!
//! Reserved addresses that no node holds live on a *parking ENI* of their
//! subnet: an unattached ENI tagged `sextant.io/role=fixed-ip-parking` for
//! this cluster, which garbage collection leaves alone. Moving an address is
//! one `AssignPrivateIpAddresses` with reassignment allowed onto the
//! destination ENI: the cloud takes it from wherever it was in one call.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Mutex};

use jiff::Timestamp;
use sextant_cloud::{
    AssignIps, CreateEni, Eni, EniCloud, EniTags, Error as CloudError, ROLE_PARKING, TAG_ROLE,
};
use sextant_crds::{FixedIPPhase, FixedIPStatus};
use sextant_kit::sync::lock;

use super::{
    plan::{NodeView, Step},
    sweep::is_parking,
};
use crate::resync::list_vpc;

/// Secondary addresses one parking ENI holds (ECS's and EC2's largest bound).
pub const PARKING_CAPACITY: usize = 49;

/// What a cloud step did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An address was taken and parked; the FixedIP is to be created.
    Reserved {
        /// Pod name.
        pod: String,
        /// Ordinal.
        ordinal: u32,
        /// The address.
        ip: Ipv4Addr,
        /// Its subnet.
        subnet_id: String,
        /// Its zone.
        zone: String,
        /// Parking ENI holding it.
        eni: String,
    },
    /// The address is on `node`'s `eni` now.
    Moved {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
        /// Node holding it.
        node: String,
        /// ENI holding it.
        eni: String,
    },
    /// The address is back on a parking ENI.
    Parked {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
        /// Parking ENI.
        eni: String,
    },
    /// The address went back to its subnet; the FixedIP is to be deleted.
    Released {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
    },
}

/// Parking ENIs of each subnet, with how many addresses each holds.
type BySubnet = BTreeMap<String, Vec<(String, usize)>>;

/// The cluster's parking ENIs by subnet, learnt from the cloud once and kept
/// up to date as addresses come and go.
pub struct Parking {
    cluster: String,
    vpc_id: String,
    loaded: Mutex<Option<BySubnet>>,
}

impl Parking {
    /// Parking of `cluster` in `vpc_id`.
    pub fn new(cluster: &str, vpc_id: &str) -> Self {
        Parking {
            cluster: cluster.to_owned(),
            vpc_id: vpc_id.to_owned(),
            loaded: Mutex::new(None),
        }
    }

    async fn load(&self, cloud: &dyn EniCloud) -> Result<(), CloudError> {
        if lock(&self.loaded).is_some() {
            return Ok(());
        }
        let enis = list_vpc(cloud, &self.vpc_id).await?;
        self.refresh(&enis);
        Ok(())
    }

    /// Learns the parking ENIs and their counts anew from a listing of the
    /// VPC (the orphan sweep's, which lists anyway).
    pub fn refresh(&self, enis: &[Eni]) {
        let mut by_subnet = BySubnet::new();
        for e in enis.iter().filter(|e| is_parking(e, &self.cluster)) {
            by_subnet
                .entry(e.subnet_id.clone())
                .or_default()
                .push((e.id.clone(), e.secondary_ips.len()));
        }
        *lock(&self.loaded) = Some(by_subnet);
    }

    /// The VPC whose parking ENIs these are.
    pub fn vpc_id(&self) -> &str {
        &self.vpc_id
    }

    /// The cluster whose parking ENIs these are.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Forgets `n` addresses given back from parking ENI `eni`.
    pub fn forget(&self, eni: &str, n: usize) {
        if let Some(subnet) = self.subnet_of(eni) {
            self.count(&subnet, eni, -isize::try_from(n).unwrap_or(isize::MAX));
        }
    }

    /// A parking ENI of `subnet_id` with room for one more address; created
    /// when there is none.
    async fn with_room(
        &self,
        cloud: &dyn EniCloud,
        subnet_id: &str,
        now: Timestamp,
    ) -> Result<String, CloudError> {
        self.load(cloud).await?;
        let found = lock(&self.loaded)
            .as_ref()
            .and_then(|m| m.get(subnet_id))
            .and_then(|v| v.iter().find(|(_, n)| *n < PARKING_CAPACITY))
            .map(|(id, _)| id.clone());
        if let Some(id) = found {
            return Ok(id);
        }
        let mut tags = EniTags {
            cluster: self.cluster.clone(),
            node: String::new(),
            created_at: now,
        }
        .to_tags();
        tags.insert(TAG_ROLE.into(), ROLE_PARKING.into());
        let eni = cloud
            .create_eni(&CreateEni {
                subnet_id: subnet_id.to_owned(),
                security_groups: vec![],
                tags,
                secondary_ips: 0,
                description: format!("sextant {}: parked fixed IPs", self.cluster),
            })
            .await?;
        lock(&self.loaded)
            .get_or_insert_with(BTreeMap::new)
            .entry(subnet_id.to_owned())
            .or_default()
            .push((eni.id.clone(), 0));
        Ok(eni.id)
    }

    fn count(&self, subnet_id: &str, eni: &str, delta: isize) {
        if let Some(v) = lock(&self.loaded)
            .as_mut()
            .and_then(|m| m.get_mut(subnet_id))
            && let Some(e) = v.iter_mut().find(|(id, _)| id == eni)
        {
            e.1 = e.1.saturating_add_signed(delta);
        }
    }

    fn subnet_of(&self, eni: &str) -> Option<String> {
        lock(&self.loaded).as_ref().and_then(|m| {
            m.iter()
                .find(|(_, v)| v.iter().any(|(id, _)| id == eni))
                .map(|(s, _)| s.clone())
        })
    }

    /// Forgets an address that left `eni`, if that is a parking ENI.
    fn left(&self, eni: Option<&str>) {
        if let Some(eni) = eni
            && let Some(subnet) = self.subnet_of(eni)
        {
            self.count(&subnet, eni, -1);
        }
    }
}

/// Where each FixedIP's address is now, as the executor needs it.
pub type Holders = BTreeMap<String, Option<String>>;

/// Runs the cloud steps in order; stops at the first failure and returns
/// what was done with it. Status-only steps are left to the caller.
pub async fn execute(
    cloud: &dyn EniCloud,
    parking: &Parking,
    cluster: &str,
    steps: &[Step],
    nodes: &BTreeMap<String, NodeView>,
    holders: &Holders,
    now: Timestamp,
) -> (Vec<Outcome>, Option<CloudError>) {
    let mut done = Vec::new();
    let mut created = Created::default();
    for step in steps {
        match run(
            cloud,
            parking,
            cluster,
            step,
            nodes,
            holders,
            &mut created,
            now,
        )
        .await
        {
            Ok(Some(o)) => done.push(o),
            Ok(None) => {}
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

/// ENIs created for nodes within one `execute`, by (node, subnet): a second
/// pod moving to the same node and subnet uses the first one's ENI, and a
/// node's free device index is used once.
#[derive(Default)]
struct Created(BTreeMap<(String, String), String>);

#[allow(clippy::too_many_arguments)]
async fn run(
    cloud: &dyn EniCloud,
    parking: &Parking,
    cluster: &str,
    step: &Step,
    nodes: &BTreeMap<String, NodeView>,
    holders: &Holders,
    created: &mut Created,
    now: Timestamp,
) -> Result<Option<Outcome>, CloudError> {
    Ok(Some(match step {
        Step::Reserve {
            pod,
            ordinal,
            subnet_id,
            zone,
        } => {
            let eni = parking.with_room(cloud, subnet_id, now).await?;
            let ips = cloud.assign_ips(&eni, &AssignIps::Count(1)).await?;
            let Some(ip) = ips.first().copied() else {
                return Err(CloudError::InvalidRequest {
                    action: sextant_cloud::Action::AssignIps,
                    message: format!("{eni}: assigning one address returned none"),
                });
            };
            parking.count(subnet_id, &eni, 1);
            Outcome::Reserved {
                pod: pod.clone(),
                ordinal: *ordinal,
                ip,
                subnet_id: subnet_id.clone(),
                zone: zone.clone(),
                eni,
            }
        }
        Step::Move {
            pod,
            ip,
            subnet_id,
            node,
            eni,
        } => {
            let key = (node.clone(), subnet_id.clone());
            let eni = match (eni, created.0.get(&key)) {
                (Some(e), _) | (None, Some(e)) => e.clone(),
                // The node's free slot went to another subnet this round: the
                // next reconcile sees the new ENI and plans again.
                (None, None) if created.0.keys().any(|(n, _)| n == node) => return Ok(None),
                (None, None) => {
                    let e = new_node_eni(cloud, cluster, subnet_id, node, nodes, now).await?;
                    created.0.insert(key, e.clone());
                    e
                }
            };
            cloud
                .assign_ips(
                    &eni,
                    &AssignIps::Specific {
                        ips: vec![*ip],
                        allow_reassignment: true,
                    },
                )
                .await?;
            parking.left(holders.get(pod).and_then(|h| h.as_deref()));
            Outcome::Moved {
                pod: pod.clone(),
                ip: *ip,
                node: node.clone(),
                eni,
            }
        }
        Step::Park { pod, ip, subnet_id } => {
            let eni = parking.with_room(cloud, subnet_id, now).await?;
            cloud
                .assign_ips(
                    &eni,
                    &AssignIps::Specific {
                        ips: vec![*ip],
                        allow_reassignment: true,
                    },
                )
                .await?;
            parking.count(subnet_id, &eni, 1);
            Outcome::Parked {
                pod: pod.clone(),
                ip: *ip,
                eni,
            }
        }
        Step::Release { pod, ip, eni } => {
            if let Some(eni) = eni {
                match cloud.unassign_ips(eni, &[*ip]).await {
                    // Already gone with its ENI or moved off it: nothing to
                    // give back. The cloud refuses to unassign an address
                    // the ENI no longer has (EC2: InvalidParameterValue): a
                    // release whose unassign landed before a crash, retried.
                    Ok(())
                    | Err(CloudError::NotFound { .. } | CloudError::InvalidRequest { .. }) => {}
                    Err(e) => return Err(e),
                }
                parking.left(Some(eni));
            }
            Outcome::Released {
                pod: pod.clone(),
                ip: *ip,
            }
        }
        Step::Status { .. } | Step::Blocked { .. } => return Ok(None),
    }))
}

/// Creates and attaches an ENI in `subnet_id` on `node`, tagged like node
/// IPAM's own, so node IPAM adopts it at its next resync.
async fn new_node_eni(
    cloud: &dyn EniCloud,
    cluster: &str,
    subnet_id: &str,
    node: &str,
    nodes: &BTreeMap<String, NodeView>,
    now: Timestamp,
) -> Result<String, CloudError> {
    let invalid = |message: String| CloudError::InvalidRequest {
        action: sextant_cloud::Action::AttachEni,
        message,
    };
    let view = nodes
        .get(node)
        .ok_or_else(|| invalid(format!("node {node} is unknown")))?;
    let instance = view
        .instance_id
        .as_deref()
        .ok_or_else(|| invalid(format!("node {node} has no instance id")))?;
    let index = view
        .free_device_index
        .ok_or_else(|| invalid(format!("node {node} has no free device index")))?;
    let eni = cloud
        .create_eni(&CreateEni {
            subnet_id: subnet_id.to_owned(),
            security_groups: vec![],
            tags: EniTags {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                created_at: now,
            }
            .to_tags(),
            secondary_ips: 0,
            description: format!("sextant {cluster}: pod ENI of {node} for a fixed IP"),
        })
        .await?;
    cloud.attach_eni(&eni.id, instance, index).await?;
    Ok(eni.id)
}

/// The FixedIP status after `outcome` (for `Released`, the object is deleted instead).
pub fn status_after(
    old: &FixedIPStatus,
    outcome: &Outcome,
    pod_uid: Option<&str>,
) -> FixedIPStatus {
    let mut s = old.clone();
    match outcome {
        Outcome::Reserved { eni, .. } => {
            s.phase = Some(FixedIPPhase::Reserved);
            s.node = None;
            s.eni = Some(eni.clone());
        }
        Outcome::Moved { node, eni, .. } => {
            s.phase = Some(FixedIPPhase::Bound);
            s.node = Some(node.clone());
            s.eni = Some(eni.clone());
            s.release_after = None;
            if let Some(uid) = pod_uid {
                s.pod_uid = Some(uid.to_owned());
            }
        }
        Outcome::Parked { eni, .. } => {
            s.phase = Some(FixedIPPhase::Reserved);
            s.node = None;
            s.eni = Some(eni.clone());
        }
        Outcome::Released { .. } => {
            s.phase = Some(FixedIPPhase::Releasing);
        }
    }
    s
}

/// The FixedIP status after a status-only step.
pub fn status_for(old: &FixedIPStatus, step: &Step) -> FixedIPStatus {
    let mut s = old.clone();
    if let Step::Status {
        phase,
        node,
        release_after,
        pod_uid,
        ..
    } = step
    {
        s.phase = Some(*phase);
        if let Some(n) = node {
            s.node = Some(n.clone());
        }
        s.release_after = release_after.map(|t| t.to_string());
        s.pod_uid = pod_uid.clone();
    }
    s
}
