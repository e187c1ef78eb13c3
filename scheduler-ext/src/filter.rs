//! Filter: which candidate nodes a pod may go to, each refusal with a
//! reason. Pure: an index snapshot and the request in, a verdict out.
//!
//! - A pod with a FixedIP goes only where its address is or can be
//!   attached: the node already holding it; else, on a cloud node in the
//!   address's zone, an attached pod ENI in its subnet with room for one more
//!   address, or a free ENI slot; on bare metal (`static`), only the node
//!   whose pod CIDRs contain it.
//! - Every pod stays off nodes whose pod IPs are used up (used + pending >=
//!   capacity, when the capacity is known). The fixed-IP pod's own holder is
//!   exempt: its address is already on the node.
//! - A node without NodeNetwork passes a plain pod (no opinion) and fails a
//!   fixed-IP pod (nowhere to attach the address).

use std::{fmt, net::Ipv4Addr};

use rustc_hash::FxHashMap;

use sextant_crds::Provider;

use crate::{
    error::{Error, Result},
    extender::FailedNodesMap,
    index::{Index, NodeEntry},
    pod::{FixedTarget, PodRef, fixed_target},
};

/// Why a node cannot take the pod; borrows from the index and the pod's
/// FixedIP so judging a node allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason<'a> {
    /// Fixed-IP pod, node without NodeNetwork.
    NoNodeNetwork {
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Fixed-IP pod, node in another zone (or of unknown zone).
    WrongZone {
        /// The pod's address.
        ip: Ipv4Addr,
        /// The address's zone.
        want: &'a str,
        /// The node's zone.
        have: Option<&'a str>,
    },
    /// Fixed-IP pod, bare-metal node whose pod CIDRs do not contain the address.
    NotInPodCidrs {
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Fixed-IP pod, cloud node whose ENI limits are not known yet.
    LimitsUnknown {
        /// The pod's address.
        ip: Ipv4Addr,
    },
    /// Fixed-IP pod, no ENI of the subnet with room and no free ENI slot.
    CannotAttach {
        /// The pod's address.
        ip: Ipv4Addr,
        /// The address's subnet.
        subnet: Option<&'a str>,
        /// Attached pod ENIs.
        enis: u32,
        /// ENIs the instance allows.
        max_enis: u32,
        /// Addresses per ENI the instance allows.
        ipv4_per_eni: u32,
    },
    /// The node's pod IPs are used up.
    NoIpCapacity {
        /// IPs in use.
        used: u32,
        /// Requests waiting on the pool.
        pending: u32,
        /// IPs the node can ever hold.
        capacity: u32,
    },
}

impl Reason<'_> {
    /// Whether preempting pods on the node could not make it fit: freeing
    /// pod IPs helps a full node, nothing helps a wrong zone or subnet.
    pub fn is_unresolvable(&self) -> bool {
        !matches!(self, Reason::NoIpCapacity { .. })
    }

    /// Short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Reason::NoNodeNetwork { .. } => "no_node_network",
            Reason::WrongZone { .. } => "wrong_zone",
            Reason::NotInPodCidrs { .. } => "not_in_pod_cidrs",
            Reason::LimitsUnknown { .. } => "limits_unknown",
            Reason::CannotAttach { .. } => "cannot_attach",
            Reason::NoIpCapacity { .. } => "no_ip_capacity",
        }
    }
}

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoNodeNetwork { ip } => write!(
                f,
                "sextant: fixed IP {ip} cannot be attached: node has no NodeNetwork"
            ),
            Reason::WrongZone { ip, want, have } => write!(
                f,
                "sextant: fixed IP {ip} lives in zone {want}, node is in zone {}",
                have.unwrap_or("<unknown>")
            ),
            Reason::NotInPodCidrs { ip } => write!(
                f,
                "sextant: fixed IP {ip} is not in this bare-metal node's pod CIDRs"
            ),
            Reason::LimitsUnknown { ip } => write!(
                f,
                "sextant: fixed IP {ip} cannot be placed yet: the node's ENI limits are not known (NodeNetwork status.summary.maxEnis is 0)"
            ),
            Reason::CannotAttach {
                ip,
                subnet,
                enis,
                max_enis,
                ipv4_per_eni,
            } => write!(
                f,
                "sextant: fixed IP {ip} cannot be attached: no pod ENI in subnet {} with a free address slot and no free ENI slot ({enis} pod ENIs, instance allows {max_enis} ENIs x {ipv4_per_eni} IPv4)",
                subnet.unwrap_or("<unset>")
            ),
            Reason::NoIpCapacity {
                used,
                pending,
                capacity,
            } => write!(
                f,
                "sextant: no pod IP left ({used} used + {pending} pending >= capacity {capacity})"
            ),
        }
    }
}

/// One node's verdict.
pub fn judge<'a>(
    node: Option<&'a NodeEntry>,
    fixed: Option<&'a FixedTarget>,
) -> Result<(), Reason<'a>> {
    let Some(node) = node else {
        return match fixed {
            Some(t) => Err(Reason::NoNodeNetwork { ip: t.ip }),
            None => Ok(()),
        };
    };
    if let Some(t) = fixed {
        if node.held.contains(&t.ip) {
            // The address is already here: it needs no new capacity.
            return Ok(());
        }
        attachable(node, t)?;
    }
    if node.is_full() {
        return Err(Reason::NoIpCapacity {
            used: node.used,
            pending: node.pending,
            capacity: node.capacity,
        });
    }
    Ok(())
}

/// Whether the fixed address can be brought to a node that does not hold it.
fn attachable<'a>(node: &'a NodeEntry, t: &'a FixedTarget) -> Result<(), Reason<'a>> {
    let ip = t.ip;
    if node.provider == Provider::Static {
        return if node.pod_cidrs.iter().any(|c| c.contains(ip)) {
            Ok(())
        } else {
            Err(Reason::NotInPodCidrs { ip })
        };
    }
    if let Some(want) = t.zone.as_deref()
        && node.zone.as_deref() != Some(want)
    {
        return Err(Reason::WrongZone {
            ip,
            want,
            have: node.zone.as_deref(),
        });
    }
    if node.max_enis == 0 || node.ipv4_per_eni == 0 {
        return Err(Reason::LimitsUnknown { ip });
    }
    let eni_room = t.subnet_id.as_deref().is_some_and(|s| node.eni_room_in(s));
    if eni_room || node.free_eni_slots > 0 {
        Ok(())
    } else {
        Err(Reason::CannotAttach {
            ip,
            subnet: t.subnet_id.as_deref(),
            enis: u32::try_from(node.pod_enis.len()).unwrap_or(u32::MAX),
            max_enis: node.max_enis,
            ipv4_per_eni: node.ipv4_per_eni,
        })
    }
}

/// One filtered node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Position of the node in the request.
    pub node: usize,
    /// Index of its reason in [`Decision::reasons`].
    pub reason: usize,
    /// Preemption cannot help ([`Reason::is_unresolvable`]).
    pub unresolvable: bool,
}

/// The filter's decision over the candidates, by position in the request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// Positions of the nodes that pass, in request order.
    pub passed: Vec<usize>,
    /// The filtered nodes, in request order.
    pub failed: Vec<Failure>,
    /// The distinct refusal texts, as kube-scheduler shows them: nodes
    /// refused alike (every node of another zone, say) share one.
    pub reasons: Vec<String>,
}

impl Decision {
    /// The text of a failure's reason.
    pub fn reason(&self, f: &Failure) -> &str {
        self.reasons.get(f.reason).map_or("", String::as_str)
    }
}

/// Decides `nodes` for `pod` against an index snapshot; each distinct
/// refusal is formatted once.
pub fn decide(index: &Index, pod: &PodRef, nodes: &[&str]) -> Result<Decision> {
    index
        .check_synced()
        .map_err(|pending| Error::NotSynced { pending })?;
    let fixed = fixed_target(index, pod)?;
    let mut ids: FxHashMap<Reason<'_>, usize> = FxHashMap::default();
    let mut out = Decision {
        passed: Vec::with_capacity(nodes.len()),
        ..Decision::default()
    };
    for (i, name) in nodes.iter().enumerate() {
        match judge(index.node(name), fixed.as_ref()) {
            Ok(()) => out.passed.push(i),
            Err(reason) => {
                let id = *ids.entry(reason).or_insert_with(|| {
                    out.reasons.push(reason.to_string());
                    out.reasons.len() - 1
                });
                out.failed.push(Failure {
                    node: i,
                    reason: id,
                    unresolvable: reason.is_unresolvable(),
                });
            }
        }
    }
    Ok(out)
}

/// What a filter answer was based on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// The index judged every node.
    Index,
    /// The index has not listed yet and the pod is not annotated for a
    /// fixed IP: every node passes (kube-scheduler's own view, including
    /// the device plugin's `sextant.io/ip` allocatable, decides alone).
    UnsyncedPassAll,
    /// The pod cannot be judged (fixed-IP pod before the index listed, its
    /// FixedIP missing or unusable): every node is refused with the reason.
    Held,
}

/// The decision kube-scheduler gets, whatever the index's state: [`decide`],
/// or, when it cannot judge the pod, a policy that holds with an
/// `ignorable` extender too. kube-scheduler skips an ignorable extender
/// whose answer carries `Error`, so a pod that must wait (a fixed-IP pod
/// the index cannot place yet) is refused on every node instead, as
/// unresolvable (preemption cannot help), and retried. A plain pod before
/// the first list passes everywhere: the extender adds nothing then, as if
/// it were down and ignorable. Errors left are the request's own.
pub fn decide_for_scheduler(
    index: &Index,
    pod: &PodRef,
    nodes: &[&str],
) -> Result<(Decision, Basis)> {
    match decide(index, pod, nodes) {
        Ok(d) => Ok((d, Basis::Index)),
        Err(Error::NotSynced { .. }) if !pod.requires_fixed_ip => Ok((
            Decision {
                passed: (0..nodes.len()).collect(),
                ..Decision::default()
            },
            Basis::UnsyncedPassAll,
        )),
        Err(
            e @ (Error::NotSynced { .. } | Error::FixedIpMissing { .. } | Error::BadFixedIp { .. }),
        ) => {
            let mut reason = format!("sextant: {}", sextant_kit::ErrorChain(&e));
            if matches!(e, Error::NotSynced { .. }) {
                reason.push_str(&format!(
                    "; pod {}/{} asks for a fixed IP and waits until the index can place it",
                    pod.namespace, pod.name
                ));
            }
            Ok((
                Decision {
                    passed: Vec::new(),
                    failed: (0..nodes.len())
                        .map(|node| Failure {
                            node,
                            reason: 0,
                            unresolvable: true,
                        })
                        .collect(),
                    reasons: vec![reason],
                },
                Basis::Held,
            ))
        }
        Err(e) => Err(e),
    }
}

/// The filter's decision as kube-scheduler's maps. Each refused node is in
/// exactly one of them: kube-scheduler gives `FailedAndUnresolvableNodes`
/// precedence and skips a node's `FailedNodes` entry when it is there too,
/// so a copy in both would only double the answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilterOutcome {
    /// Positions (in the request's order) of the nodes that pass.
    pub passed: Vec<usize>,
    /// Refused nodes that preempting pods could make fit (`FailedNodes`).
    pub failed: FailedNodesMap,
    /// Refused nodes preemption cannot help (`FailedAndUnresolvableNodes`).
    pub unresolvable: FailedNodesMap,
}

impl FilterOutcome {
    /// Why `node` was refused, from whichever map holds it.
    pub fn reason(&self, node: &str) -> Option<&str> {
        self.unresolvable
            .get(node)
            .or_else(|| self.failed.get(node))
            .map(String::as_str)
    }
}

/// Filters `nodes` for `pod` against an index snapshot: [`decide`] with the
/// refusals keyed by node name.
pub fn filter(index: &Index, pod: &PodRef, nodes: &[&str]) -> Result<FilterOutcome> {
    let d = decide(index, pod, nodes)?;
    let mut out = FilterOutcome {
        passed: d.passed.clone(),
        ..FilterOutcome::default()
    };
    for f in &d.failed {
        let map = if f.unresolvable {
            &mut out.unresolvable
        } else {
            &mut out.failed
        };
        map.insert(nodes[f.node].to_owned(), d.reason(f).to_owned());
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
