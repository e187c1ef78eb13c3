//! Resync: the cloud's view of an instance becomes the NodeNetwork status.
//!
//! After its own mutations the reconciler resyncs only the instance it
//! touched (one scoped describe); the periodic full resync lists the whole
//! VPC with pagination and hands each node its ENIs. Neither ever describes
//! subnet by subnet.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sextant_cloud::{Eni, EniCloud, InstanceNetwork, PageRequest, Result, Tags};
use sextant_crds::{EniStatus, NodeNetworkStatus, PoolEntry, PoolSummary, ReleaseState};

/// How the reconciler refreshes one instance after mutating it.
#[async_trait]
pub trait InstanceResync: Send + Sync {
    /// The instance's ENIs as the cloud has them now.
    async fn instance(
        &self,
        cloud: &dyn EniCloud,
        instance_id: &str,
        vpc_id: &str,
    ) -> Result<InstanceNetwork>;
}

/// Sextant's resync: one describe filtered by instance.
pub struct InstanceScoped;

#[async_trait]
impl InstanceResync for InstanceScoped {
    async fn instance(
        &self,
        cloud: &dyn EniCloud,
        instance_id: &str,
        _vpc_id: &str,
    ) -> Result<InstanceNetwork> {
        cloud.instance_network(instance_id).await
    }
}

/// Page size of VPC-wide listings (EC2's maximum).
pub const LIST_PAGE_SIZE: u32 = 1000;

/// Every ENI of a VPC, page by page.
pub async fn list_vpc(cloud: &dyn EniCloud, vpc_id: &str) -> Result<Vec<Eni>> {
    let mut all = Vec::new();
    let mut page = PageRequest {
        token: None,
        size: LIST_PAGE_SIZE,
    };
    loop {
        let p = cloud.list_enis(vpc_id, page.clone()).await?;
        all.extend(p.items);
        match p.next {
            Some(t) if Some(&t) != page.token.as_ref() => page.token = Some(t),
            _ => return Ok(all),
        }
    }
}

/// Groups a VPC listing by instance.
pub fn by_instance(enis: Vec<Eni>) -> BTreeMap<String, InstanceNetwork> {
    let mut out: BTreeMap<String, InstanceNetwork> = BTreeMap::new();
    for e in enis {
        let Some(a) = &e.attachment else { continue };
        out.entry(a.instance_id.clone())
            .or_insert_with(|| InstanceNetwork {
                instance_id: a.instance_id.clone(),
                enis: vec![],
            })
            .enis
            .push(e);
    }
    for net in out.values_mut() {
        net.enis
            .sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
    }
    out
}

fn excluded(tags: &Tags, exclude: &BTreeMap<String, String>) -> bool {
    exclude.iter().any(|(k, v)| tags.get(k) == Some(v))
}

/// ENIs of an instance as NodeNetwork status entries.
pub fn eni_statuses(net: &InstanceNetwork, exclude: &BTreeMap<String, String>) -> Vec<EniStatus> {
    net.enis
        .iter()
        .filter_map(|e| {
            let a = e.attachment.as_ref()?;
            Some(EniStatus {
                id: e.id.clone(),
                subnet_id: e.subnet_id.clone(),
                device_index: a.device_index,
                mac: Some(e.mac.clone()),
                primary_ip: Some(e.primary_ip.to_string()),
                addresses: e.secondary_ips.iter().map(|ip| ip.to_string()).collect(),
                security_groups: e.security_groups.clone(),
                excluded: excluded(&e.tags, exclude),
            })
        })
        .collect()
}

/// Writes the ENIs into `status` and derives the pool from them: the
/// secondary addresses of pod ENIs (at or above the first interface index,
/// not excluded). Handshake entries of addresses that left the pool become
/// `released`; `released` and `ready-for-release` entries of addresses that
/// came back into the pool (the cloud assigned them to the node again) are
/// removed in the same write, since the agent would withhold them forever.
/// Returns how many entries were removed so.
pub fn apply_enis(
    status: &mut NodeNetworkStatus,
    enis: Vec<EniStatus>,
    first_interface_index: u32,
) -> usize {
    let mut pool = BTreeMap::new();
    for e in &enis {
        if e.device_index < first_interface_index || e.excluded {
            continue;
        }
        for a in &e.addresses {
            pool.insert(a.clone(), PoolEntry { eni: e.id.clone() });
        }
    }
    let before = status.release.len();
    let old_pool = &status.pool;
    status.release.retain(|ip, state| {
        let returned = pool.contains_key(ip)
            && !old_pool.contains_key(ip)
            && matches!(
                state,
                ReleaseState::Released | ReleaseState::ReadyForRelease
            );
        !returned
    });
    let cleared = before - status.release.len();
    for (ip, state) in status.release.iter_mut() {
        if !pool.contains_key(ip)
            && matches!(state, ReleaseState::Marked | ReleaseState::ReadyForRelease)
        {
            *state = ReleaseState::Released;
        }
    }
    status.enis = enis;
    status.pool = pool;
    refresh_summary(status);
    cleared
}

/// Recomputes the printer-column counts, keeping the node's capacity and
/// limits (set by [`set_capacity`]).
pub fn refresh_summary(status: &mut NodeNetworkStatus) {
    let kept = status.summary.unwrap_or_default();
    status.summary = Some(PoolSummary {
        capacity: kept.capacity,
        max_enis: kept.max_enis,
        ipv4_per_eni: kept.ipv4_per_eni,
        enis: u32::try_from(status.enis.len()).unwrap_or(u32::MAX),
        pool_size: u32::try_from(status.pool.len()).unwrap_or(u32::MAX),
        used: status
            .usage
            .as_ref()
            .map(|u| u32::try_from(u.used.len()).unwrap_or(u32::MAX))
            .unwrap_or(0),
    });
}

/// Records what the node can ever hold: `capacity` pod IPs on an instance
/// allowing `max_enis` ENIs of `ipv4_per_eni` addresses (0 and 0 on bare metal).
pub fn set_capacity(
    status: &mut NodeNetworkStatus,
    capacity: u32,
    max_enis: u32,
    ipv4_per_eni: u32,
) {
    let summary = status.summary.get_or_insert_with(Default::default);
    summary.capacity = capacity;
    summary.max_enis = max_enis;
    summary.ipv4_per_eni = ipv4_per_eni;
}
