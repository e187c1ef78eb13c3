//! Secondary addresses on ENIs: assigning a count or specific addresses
//! (taking them from another ENI only when reassignment is allowed, as a
//! fixed IP moves) within the instance type's per-ENI limit, and giving
//! them back to the subnet.

use std::net::Ipv4Addr;

use super::{
    State,
    enis::{MAX_AT_CREATE, invalid, not_found},
};
use crate::{Action, AssignIps, Error, Result};

/// `AssignIps` on `st`: the addresses this call assigned.
pub(super) fn assign(st: &mut State, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
    let action = Action::AssignIps;
    let eni = st
        .enis
        .get(eni_id)
        .ok_or_else(|| not_found(action, "network interface", eni_id))?
        .clone();
    let per_eni = match &eni.attachment {
        Some(a) => st
            .instances
            .get(&a.instance_id)
            .map(|i| i.instance_type.secondary_per_eni())
            .unwrap_or(MAX_AT_CREATE),
        None => MAX_AT_CREATE,
    };
    let after = eni.secondary_ips.len() as u32 + request.len();
    if after > per_eni {
        return Err(Error::LimitExceeded {
            action,
            message: format!("{eni_id} can hold {per_eni} secondary addresses, asked for {after}"),
        });
    }
    let subnet = st
        .subnets
        .get_mut(&eni.subnet_id)
        .ok_or_else(|| not_found(action, "subnet", &eni.subnet_id))?;
    let mut assigned = Vec::new();
    let mut moved_from: Vec<(Ipv4Addr, String)> = Vec::new();
    match request {
        AssignIps::Count(n) => {
            if subnet.subnet.available_ips < *n {
                return Err(Error::InsufficientAddresses {
                    action,
                    message: format!(
                        "subnet {} has {} free addresses",
                        eni.subnet_id, subnet.subnet.available_ips
                    ),
                });
            }
            for _ in 0..*n {
                if let Some(ip) = subnet.allocate(eni_id) {
                    assigned.push(ip);
                }
            }
        }
        AssignIps::Specific {
            ips,
            allow_reassignment,
        } => {
            for ip in ips {
                if !subnet.contains(*ip) {
                    return Err(invalid(
                        action,
                        format!("{ip} is not in subnet {}", eni.subnet_id),
                    ));
                }
                if let Some(owner) = subnet.owners.get(ip)
                    && (owner == eni_id || !allow_reassignment)
                {
                    return Err(invalid(
                        action,
                        format!("{ip} is already assigned to {owner}"),
                    ));
                }
            }
            for ip in ips {
                if let Some(owner) = subnet.owners.get(ip).cloned() {
                    moved_from.push((*ip, owner));
                }
                subnet.take_specific(*ip, eni_id);
                assigned.push(*ip);
            }
        }
    }
    for (ip, owner) in moved_from {
        if let Some(old) = st.enis.get_mut(&owner) {
            old.secondary_ips.retain(|x| *x != ip);
        }
    }
    if let Some(e) = st.enis.get_mut(eni_id) {
        e.secondary_ips.extend(assigned.iter().copied());
    }
    Ok(assigned)
}

/// `UnassignIps` on `st`: every address must be a secondary of the ENI.
pub(super) fn unassign(st: &mut State, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
    let action = Action::UnassignIps;
    let eni = st
        .enis
        .get_mut(eni_id)
        .ok_or_else(|| not_found(action, "network interface", eni_id))?;
    if let Some(ip) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
        return Err(invalid(
            action,
            format!("{ip} is not a secondary address of {eni_id}"),
        ));
    }
    eni.secondary_ips.retain(|x| !ips.contains(x));
    let subnet_id = eni.subnet_id.clone();
    if let Some(s) = st.subnets.get_mut(&subnet_id) {
        for ip in ips {
            s.release(*ip);
        }
    }
    Ok(())
}
