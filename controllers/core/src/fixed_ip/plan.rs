//! The fixed-IP decision for one StatefulSet: from its replicas, its pods,
//! its FixedIPs and the nodes' ENIs, what to do with each ordinal's address.
//! Pure: no IO, time is an input.
//!
//! ```text
//!   ordinal < replicas, no FixedIP                → Reserve (park an address in a subnet of the zone)
//!   pod scheduled on node N ≠ where the IP is     → Move (assign with reassignment to N's ENI in the subnet)
//!   pod gone, its node gone                       → Park (back to the subnet's parking ENI)
//!   ordinal ≥ replicas or StatefulSet deleted     → Retain: releaseAfter = now + TTL, then Release
//!                                                   Delete: Release at once
//!   the pod's UID changed                         → record it; never a reason to release
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use jiff::{SignedDuration, Timestamp};
use sextant_cloud::Subnet;
use sextant_crds::{
    FixedIP, FixedIPPhase, NodeNetwork, Provider, ReclaimPolicy,
    wellknown::{
        ANNOTATION_FIXED_IP, ANNOTATION_FIXED_IP_RECLAIM, ANNOTATION_FIXED_IP_SUBNETS,
        ANNOTATION_FIXED_IP_TTL,
    },
};

/// A StatefulSet with fixed IPs turned on, as the plan needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatefulSetView {
    /// Its namespace.
    pub namespace: String,
    /// Its name; pods are `<name>-<ordinal>`.
    pub name: String,
    /// Desired replicas.
    pub replicas: u32,
    /// What happens to addresses of ordinals that go away.
    pub reclaim: ReclaimPolicy,
    /// TTL of `Retain`ed addresses; `None`: the CRD's default.
    pub ttl_seconds: Option<u64>,
    /// Subnets to reserve in; empty: any subnet of the VPC.
    pub subnet_ids: Vec<String>,
}

/// Why a StatefulSet's annotations cannot be acted on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// `sextant.io/fixed-ip-reclaim-policy` is neither `Retain` nor `Delete`.
    #[error("annotation {ANNOTATION_FIXED_IP_RECLAIM}={0:?}: expected Retain or Delete")]
    Reclaim(String),
    /// `sextant.io/fixed-ip-ttl-seconds` is not a whole number of seconds.
    #[error("annotation {ANNOTATION_FIXED_IP_TTL}={0:?}: expected whole seconds")]
    Ttl(String),
}

impl StatefulSetView {
    /// Reads the fixed-IP annotations; `Ok(None)` when fixed IPs are off.
    pub fn from_annotations(
        namespace: &str,
        name: &str,
        replicas: u32,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, AnnotationError> {
        if annotations.get(ANNOTATION_FIXED_IP).map(String::as_str) != Some("true") {
            return Ok(None);
        }
        let reclaim = match annotations
            .get(ANNOTATION_FIXED_IP_RECLAIM)
            .map(String::as_str)
        {
            None | Some("Retain") => ReclaimPolicy::Retain,
            Some("Delete") => ReclaimPolicy::Delete,
            Some(other) => return Err(AnnotationError::Reclaim(other.to_owned())),
        };
        let ttl_seconds = annotations
            .get(ANNOTATION_FIXED_IP_TTL)
            .map(|t| {
                t.trim()
                    .parse()
                    .map_err(|_| AnnotationError::Ttl(t.clone()))
            })
            .transpose()?;
        let subnet_ids = annotations
            .get(ANNOTATION_FIXED_IP_SUBNETS)
            .map(|s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(StatefulSetView {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            replicas,
            reclaim,
            ttl_seconds,
            subnet_ids,
        }))
    }
}

/// One pod of the StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    /// `<statefulset>-<ordinal>`.
    pub name: String,
    /// Its ordinal.
    pub ordinal: u32,
    /// Node it is scheduled to, once scheduled.
    pub node: Option<String>,
    /// Its UID.
    pub uid: String,
}

/// One node as fixed IPs see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Zone of the node.
    pub zone: Option<String>,
    /// Provider; on `static` the address must be in the node's pod CIDRs.
    pub provider: Provider,
    /// Instance id (cloud providers).
    pub instance_id: Option<String>,
    /// Attached pod ENIs by subnet: the one with most room first.
    pub eni_by_subnet: BTreeMap<String, String>,
    /// A device index free for a new ENI, if any.
    pub free_device_index: Option<u32>,
    /// Bare-metal pod CIDRs.
    pub pod_cidrs: Vec<String>,
}

/// NodeNetworks as the fixed-IP plan sees them: zone, pod ENIs by subnet
/// (those with room for one more address), a free device index.
pub fn node_views<'a>(
    nodes: impl IntoIterator<Item = &'a NodeNetwork>,
) -> BTreeMap<String, NodeView> {
    nodes
        .into_iter()
        .filter_map(|nn| {
            let name = nn.metadata.name.clone()?;
            let status = nn.status.clone().unwrap_or_default();
            let summary = status.summary.unwrap_or_default();
            let first = nn.spec.ipam.first_interface_index();
            let room = summary.ipv4_per_eni.saturating_sub(1);
            let mut eni_by_subnet = BTreeMap::new();
            for e in status
                .enis
                .iter()
                .filter(|e| e.device_index >= first && !e.excluded)
            {
                let fits = room == 0 || (e.addresses.len() as u64) < u64::from(room);
                if fits {
                    eni_by_subnet
                        .entry(e.subnet_id.clone())
                        .or_insert_with(|| e.id.clone());
                }
            }
            let used: BTreeSet<u32> = status.enis.iter().map(|e| e.device_index).collect();
            let free_device_index = (first..summary.max_enis).find(|i| !used.contains(i));
            Some((
                name,
                NodeView {
                    zone: nn.spec.zone.clone(),
                    provider: nn.spec.provider,
                    instance_id: nn.spec.instance_id.clone(),
                    eni_by_subnet,
                    free_device_index,
                    pod_cidrs: nn.spec.pod_cidrs.clone(),
                },
            ))
        })
        .collect()
}

/// Everything the plan looks at for one StatefulSet.
#[derive(Clone, Copy, Debug)]
pub struct FixedIpInput<'a> {
    /// Namespace of the StatefulSet.
    pub namespace: &'a str,
    /// Name of the StatefulSet.
    pub name: &'a str,
    /// The StatefulSet; `None` once deleted.
    pub statefulset: Option<&'a StatefulSetView>,
    /// Its FixedIPs (named after the pods).
    pub fixed: &'a [FixedIP],
    /// Its pods.
    pub pods: &'a [PodView],
    /// Nodes by name.
    pub nodes: &'a BTreeMap<String, NodeView>,
    /// Subnets of the VPC, with free counts.
    pub subnets: &'a [Subnet],
    /// Now.
    pub now: Timestamp,
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Take a new address in `subnet_id` and park it there; create the FixedIP.
    Reserve {
        /// Pod name (and FixedIP name).
        pod: String,
        /// Its ordinal.
        ordinal: u32,
        /// Subnet to reserve in.
        subnet_id: String,
        /// Zone of that subnet.
        zone: String,
    },
    /// Move the address onto `node`: assign it, with reassignment, to the
    /// node's ENI in the subnet (`eni: None`: create and attach one first).
    Move {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
        /// Its subnet.
        subnet_id: String,
        /// Destination node.
        node: String,
        /// Destination ENI, when the node has one in the subnet.
        eni: Option<String>,
    },
    /// Take the address back to the subnet's parking ENI (its node is gone).
    Park {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
        /// Its subnet.
        subnet_id: String,
    },
    /// Give the address back to the subnet and delete the FixedIP.
    Release {
        /// Pod name.
        pod: String,
        /// The address.
        ip: Ipv4Addr,
        /// ENI holding it now.
        eni: Option<String>,
    },
    /// Status-only change of a FixedIP.
    Status {
        /// Pod name.
        pod: String,
        /// New phase.
        phase: FixedIPPhase,
        /// Node the pod runs on, when it changes (bare metal, no move needed).
        node: Option<String>,
        /// When a retained address goes (`None`: clears it).
        release_after: Option<Timestamp>,
        /// The pod's UID, when one runs.
        pod_uid: Option<String>,
        /// Why, for the `Placed` condition and events.
        message: String,
    },
    /// The pod runs where its address cannot follow; said on the FixedIP.
    Blocked {
        /// Pod name.
        pod: String,
        /// Why.
        message: String,
    },
}

impl Step {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Reserve { .. } => "reserve",
            Step::Move { .. } => "move",
            Step::Park { .. } => "park",
            Step::Release { .. } => "release",
            Step::Status { .. } => "status",
            Step::Blocked { .. } => "blocked",
        }
    }
}

fn ordinal_of(sts: &str, pod: &str) -> Option<u32> {
    pod.strip_prefix(sts)?.strip_prefix('-')?.parse().ok()
}

fn parse_ts(s: Option<&str>) -> Option<Timestamp> {
    s?.parse().ok()
}

/// Whether `ip` lies in one of the IPv4 `cidrs`.
pub fn in_cidrs(ip: Ipv4Addr, cidrs: &[String]) -> bool {
    cidrs.iter().any(|c| {
        let Some((a, l)) = c.split_once('/') else {
            return false;
        };
        let (Ok(a), Ok(l)) = (a.parse::<Ipv4Addr>(), l.parse::<u32>()) else {
            return false;
        };
        if l > 32 {
            return false;
        }
        let mask = u32::MAX.checked_shl(32 - l).unwrap_or(0);
        u32::from(ip) & mask == u32::from(a) & mask
    })
}

/// The subnet for a new reservation: among the StatefulSet's subnets (or
/// all), in the zone of the node the pod already runs on if any, preferring a
/// subnet that node has an ENI in, then most free addresses.
fn choose_subnet<'s>(
    input: &FixedIpInput<'s>,
    sts: &StatefulSetView,
    node: Option<&NodeView>,
) -> Option<&'s Subnet> {
    input
        .subnets
        .iter()
        .filter(|s| sts.subnet_ids.is_empty() || sts.subnet_ids.contains(&s.id))
        .filter(|s| s.available_ips > 0)
        .filter(|s| {
            node.and_then(|n| n.zone.as_deref())
                .is_none_or(|z| z == s.zone)
        })
        .max_by(|a, b| {
            let has = |s: &Subnet| node.is_some_and(|n| n.eni_by_subnet.contains_key(&s.id));
            has(a)
                .cmp(&has(b))
                .then(a.available_ips.cmp(&b.available_ips))
                .then_with(|| b.id.cmp(&a.id))
        })
}

/// Decides the steps for one StatefulSet.
pub fn plan(input: &FixedIpInput<'_>) -> Vec<Step> {
    let mut steps = Vec::new();
    let pods: BTreeMap<&str, &PodView> = input.pods.iter().map(|p| (p.name.as_str(), p)).collect();
    let fixed: BTreeMap<&str, &FixedIP> = input
        .fixed
        .iter()
        .filter_map(|f| Some((f.metadata.name.as_deref()?, f)))
        .collect();
    let replicas = input.statefulset.map_or(0, |s| s.replicas);

    // New ordinals get an address.
    if let Some(sts) = input.statefulset {
        for ordinal in 0..sts.replicas {
            let pod = format!("{}-{ordinal}", sts.name);
            if fixed.contains_key(pod.as_str()) {
                continue;
            }
            let node = pods
                .get(pod.as_str())
                .and_then(|p| p.node.as_deref())
                .and_then(|n| input.nodes.get(n));
            match choose_subnet(input, sts, node) {
                Some(s) => steps.push(Step::Reserve {
                    pod,
                    ordinal,
                    subnet_id: s.id.clone(),
                    zone: s.zone.clone(),
                }),
                None => steps.push(Step::Blocked {
                    pod,
                    message: "no subnet of the StatefulSet has a free address".into(),
                }),
            }
        }
    }

    for (name, f) in &fixed {
        let Ok(ip) = f.spec.ip.parse::<Ipv4Addr>() else {
            steps.push(Step::Blocked {
                pod: (*name).to_owned(),
                message: format!("spec.ip {:?} is not an IPv4 address", f.spec.ip),
            });
            continue;
        };
        let status = f.status.clone().unwrap_or_default();
        let subnet_id = f.spec.subnet_id.clone().unwrap_or_default();
        let ordinal = ordinal_of(input.name, name).unwrap_or(f.spec.ordinal);
        let pod = pods.get(name).copied();
        let wanted = input.statefulset.is_some() && ordinal < replicas;
        let node_gone = status
            .node
            .as_deref()
            .is_some_and(|n| !input.nodes.contains_key(n));

        if !wanted {
            if pod.is_some() {
                // Still terminating: the address stays with it until it is gone.
                continue;
            }
            let release_after = parse_ts(status.release_after.as_deref());
            let due = match f.spec.reclaim_policy {
                ReclaimPolicy::Delete => true,
                ReclaimPolicy::Retain => release_after.is_some_and(|t| input.now >= t),
            };
            if due {
                steps.push(Step::Release {
                    pod: (*name).to_owned(),
                    ip,
                    eni: status.eni.clone(),
                });
                continue;
            }
            if node_gone {
                steps.push(Step::Park {
                    pod: (*name).to_owned(),
                    ip,
                    subnet_id: subnet_id.clone(),
                });
            }
            if release_after.is_none() {
                let ttl = i64::try_from(f.spec.retain_ttl_seconds()).unwrap_or(i64::MAX);
                let at = input
                    .now
                    .checked_add(SignedDuration::from_secs(ttl))
                    .unwrap_or(input.now);
                steps.push(Step::Status {
                    pod: (*name).to_owned(),
                    phase: FixedIPPhase::Reserved,
                    node: None,
                    release_after: Some(at),
                    pod_uid: status.pod_uid.clone(),
                    message: format!("ordinal {ordinal} is gone; address retained until {at}"),
                });
            }
            continue;
        }

        // A wanted ordinal: a retained address is claimed again.
        let scheduled = pod.and_then(|p| Some((p, p.node.as_deref()?)));
        match scheduled {
            Some((p, node_name)) => {
                let Some(node) = input.nodes.get(node_name) else {
                    steps.push(Step::Blocked {
                        pod: (*name).to_owned(),
                        message: format!("node {node_name} has no NodeNetwork yet"),
                    });
                    continue;
                };
                if node.provider == Provider::Static {
                    if !in_cidrs(ip, &node.pod_cidrs) {
                        steps.push(Step::Blocked {
                            pod: (*name).to_owned(),
                            message: format!("{ip} is not in node {node_name}'s pod CIDRs; only that node's route can carry it"),
                        });
                        continue;
                    }
                } else if f.spec.zone.is_some() && node.zone != f.spec.zone {
                    steps.push(Step::Blocked {
                        pod: (*name).to_owned(),
                        message: format!(
                            "node {node_name} is in zone {:?}, the address in {:?}",
                            node.zone.as_deref().unwrap_or("?"),
                            f.spec.zone.as_deref().unwrap_or("?")
                        ),
                    });
                    continue;
                }
                let here = status.node.as_deref() == Some(node_name);
                if !here && node.provider != Provider::Static {
                    let eni = node.eni_by_subnet.get(&subnet_id).cloned();
                    if eni.is_none() && node.free_device_index.is_none() {
                        steps.push(Step::Blocked {
                            pod: (*name).to_owned(),
                            message: format!(
                                "node {node_name} has no ENI in {subnet_id} and no free ENI slot"
                            ),
                        });
                        continue;
                    }
                    steps.push(Step::Move {
                        pod: (*name).to_owned(),
                        ip,
                        subnet_id: subnet_id.clone(),
                        node: node_name.to_owned(),
                        eni,
                    });
                }
                let bound_already = status.node.as_deref() == Some(node_name)
                    && status.phase == Some(FixedIPPhase::Bound)
                    && status.release_after.is_none()
                    && status.pod_uid.as_deref() == Some(p.uid.as_str());
                if (here || node.provider == Provider::Static) && !bound_already {
                    steps.push(Step::Status {
                        pod: (*name).to_owned(),
                        phase: FixedIPPhase::Bound,
                        node: Some(node_name.to_owned()),
                        release_after: None,
                        pod_uid: Some(p.uid.clone()),
                        message: format!("bound to pod {} on node {node_name}", p.name),
                    });
                }
            }
            None => {
                if node_gone {
                    steps.push(Step::Park {
                        pod: (*name).to_owned(),
                        ip,
                        subnet_id: subnet_id.clone(),
                    });
                }
                if status.phase != Some(FixedIPPhase::Reserved) || status.release_after.is_some() {
                    steps.push(Step::Status {
                        pod: (*name).to_owned(),
                        phase: FixedIPPhase::Reserved,
                        node: None,
                        release_after: None,
                        pod_uid: status.pod_uid.clone(),
                        message: format!(
                            "ordinal {ordinal} wanted; waiting for its pod to be scheduled"
                        ),
                    });
                }
            }
        }
    }
    steps
}
