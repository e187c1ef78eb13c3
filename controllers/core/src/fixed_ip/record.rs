//! What the FixedIP controller writes to NodeNetworks around the cloud
//! steps, and in which order, as pure functions over plain data: the
//! operator's kube shell sends these merge patches to the API server, and
//! `sextantctl roll` applies them to its in-memory NodeNetworks.
//!
//! ```text
//!  plan ─▶ claims: new node's status.fixedIps names the pod    (1) before any cloud step
//!       ─▶ execute: assign with reassignment onto the new ENI  (2) the cloud move
//!       ─▶ gives_up: old node loses it (fixedIps, pool, ENI)   (3) guarded by the read's version
//!       ─▶ FixedIP status Bound on the new node                (4) the commit
//! ```
//!
//! Why (1) comes before (2): node IPAM resyncs a node from the cloud
//! whenever it reconciles it (after its own mutations, at every full
//! resync), independently of this controller. The moment the cloud has the
//! address on the new node's ENI, such a resync puts it in that node's
//! `status.pool`; were `fixedIps` not naming the pod yet, the node's agent
//! would see an ordinary free address and could hand it to another pod.
//! Named first, the address is never in a pool without the entry that
//! keeps it for its pod. (3) comes after (2) for the same reason on the old
//! node: taken out earlier, a resync of the old node would put it back in
//! its pool, now without its entry.

use std::net::Ipv4Addr;

use serde_json::{Value, json};
use sextant_crds::{FixedIPStatus, NodeNetwork};

use super::{execute::Outcome, plan::Step};
use crate::status::with_resource_version;

/// A node's `status.fixedIps` entry to write before the cloud moves an
/// address there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The destination node (its NodeNetwork's name).
    pub node: String,
    /// The address about to move there.
    pub ip: Ipv4Addr,
    /// The pod it is for, `namespace/name`.
    pub owner: String,
}

/// The `fixedIps` entries to write before [`super::execute::execute`] runs
/// `steps` of StatefulSet namespace `namespace`: one per move, naming the
/// pod on its destination node (see the module docs for why first).
pub fn claims(namespace: &str, steps: &[Step]) -> Vec<Claim> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Move { pod, ip, node, .. } => Some(Claim {
                node: node.clone(),
                ip: *ip,
                owner: format!("{namespace}/{pod}"),
            }),
            _ => None,
        })
        .collect()
}

/// The status merge patch setting (`Some(owner)`) or removing (`None`) one
/// entry of a NodeNetwork's `status.fixedIps`. Not guarded by a
/// resourceVersion: the entry is decided from the FixedIP and the step at
/// hand, not from the NodeNetwork's status; the key is this controller's
/// alone and the one-key patch leaves every other writer's fields alone.
pub fn fixed_ip_entry_patch(ip: Ipv4Addr, owner: Option<&str>) -> Value {
    let value = owner.map_or(Value::Null, |o| Value::String(o.to_owned()));
    json!({ "status": { "fixedIps": { ip.to_string(): value } } })
}

/// The node that gives the address up after `outcome`, for a FixedIP whose
/// status was `old` before it: the node it moved away from, or the node it
/// was released from. `None` when no node held it (reserved, parked from a
/// node that is gone) or it stays on the same node.
pub fn gives_up<'a>(outcome: &Outcome, old: &'a FixedIPStatus) -> Option<(&'a str, Ipv4Addr)> {
    match outcome {
        Outcome::Moved { ip, node, .. } => {
            old.node.as_deref().filter(|n| *n != node).map(|n| (n, *ip))
        }
        Outcome::Released { ip, .. } => old.node.as_deref().map(|n| (n, *ip)),
        Outcome::Reserved { .. } | Outcome::Parked { .. } => None,
    }
}

/// The status merge patch taking fixed IP `ip` off NodeNetwork `read`, the
/// node it moved away from (or was released from): out of `fixedIps`, out of
/// `pool`, out of its ENI's `addresses`, in one write. Removing only the
/// `fixedIps` entry would leave a pool address no entry guards, which the
/// node's agent hands to the next pod while the cloud has it elsewhere; and
/// an ENI still listing it would have node IPAM count it as the node's own.
/// Guarded by `read`'s resourceVersion, as the ENI list is written whole.
/// `None` when the status has it nowhere.
pub fn moved_off_patch(read: &NodeNetwork, ip: Ipv4Addr) -> Option<Value> {
    let status = read.status.as_ref()?;
    let key = ip.to_string();
    let mut s = serde_json::Map::new();
    if status.fixed_ips.contains_key(&key) {
        s.insert("fixedIps".into(), json!({ key.clone(): null }));
    }
    if status.pool.contains_key(&key) {
        s.insert("pool".into(), json!({ key.clone(): null }));
    }
    if status.enis.iter().any(|e| e.addresses.contains(&key)) {
        let mut enis = status.enis.clone();
        for e in &mut enis {
            e.addresses.retain(|a| *a != key);
        }
        s.insert("enis".into(), json!(enis));
    }
    if s.is_empty() {
        return None;
    }
    Some(with_resource_version(
        json!({ "status": Value::Object(s) }),
        read.metadata.resource_version.as_deref(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use sextant_crds::FixedIPPhase;

    use super::*;

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    #[test]
    fn every_move_names_its_pod_on_the_destination_and_nothing_else_claims() {
        let steps = vec![
            Step::Reserve {
                pod: "web-0".into(),
                ordinal: 0,
                subnet_id: "s".into(),
                zone: "a".into(),
            },
            Step::Move {
                pod: "web-1".into(),
                ip: ip(7),
                subnet_id: "s".into(),
                node: "n2".into(),
                eni: None,
            },
            Step::Park {
                pod: "web-2".into(),
                ip: ip(8),
                subnet_id: "s".into(),
            },
            Step::Release {
                pod: "web-3".into(),
                ip: ip(9),
                eni: None,
            },
        ];
        assert_eq!(
            claims("db", &steps),
            vec![Claim {
                node: "n2".into(),
                ip: ip(7),
                owner: "db/web-1".into(),
            }]
        );
    }

    #[test]
    fn a_fixed_ips_entry_patch_sets_or_removes_one_key_unguarded() {
        assert_eq!(
            fixed_ip_entry_patch(ip(7), Some("db/web-1")),
            json!({ "status": { "fixedIps": { "10.0.0.7": "db/web-1" } } })
        );
        assert_eq!(
            fixed_ip_entry_patch(ip(7), None),
            json!({ "status": { "fixedIps": { "10.0.0.7": null } } })
        );
    }

    #[test]
    fn the_node_an_address_left_gives_it_up_and_no_other() {
        let old = FixedIPStatus {
            phase: Some(FixedIPPhase::Bound),
            node: Some("n1".into()),
            ..Default::default()
        };
        let moved = |node: &str| Outcome::Moved {
            pod: "web-0".into(),
            ip: ip(7),
            node: node.into(),
            eni: "eni-2".into(),
        };
        assert_eq!(gives_up(&moved("n2"), &old), Some(("n1", ip(7))));
        assert_eq!(gives_up(&moved("n1"), &old), None, "stays on its node");
        let released = Outcome::Released {
            pod: "web-0".into(),
            ip: ip(7),
        };
        assert_eq!(gives_up(&released, &old), Some(("n1", ip(7))));
        let parked = Outcome::Parked {
            pod: "web-0".into(),
            ip: ip(7),
            eni: "eni-p".into(),
        };
        assert_eq!(gives_up(&parked, &old), None);
        assert_eq!(gives_up(&moved("n2"), &FixedIPStatus::default()), None);
    }
}
