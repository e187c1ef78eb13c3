//! The node IPAM decision: from a NodeNetwork's spec and status, the
//! instance's limits and the candidate subnets, what to do next. Pure: no IO,
//! no clock.
//!
//! ```text
//!   available = pool − used − cooling − in release handshake
//!   wanted    = preAllocate + pending (pods the agent could not serve)
//!   deficit   = max(wanted − available, minAllocate − pool)        → cancel marks, assign, create ENI
//!   excess    = available − (wanted + maxAboveWatermark)             → mark for release
//!   ready-for-release and not used                                   → unassign
//!   released, address back in the pool                              → drop the entry
//!   released, address gone, agent silent past the bound             → drop the entry
//! ```
//!
//! "In release handshake" is every address the agent withholds: `marked`,
//! `ready-for-release` and `released`, so the operator never counts as
//! available an address the agent will not hand out.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use jiff::Timestamp;
use sextant_cloud::{InstanceLimits, SecurityGroup, Subnet};
use sextant_crds::{EniStatus, NodeNetworkSpec, NodeNetworkStatus, ReleaseState};

use super::watermark::Watermarks;

/// Most secondary addresses requested at ENI creation (ECS's bound; EC2's
/// largest types hold 49 secondaries per ENI).
pub const MAX_IPS_AT_CREATE: u32 = 49;

/// Everything `plan` looks at.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// The node's spec.
    pub spec: &'a NodeNetworkSpec,
    /// The node's status: ENIs as last resynced, agent usage, handshake.
    pub status: &'a NodeNetworkStatus,
    /// Watermarks with operator defaults applied.
    pub watermarks: Watermarks,
    /// ENI limits of the instance type.
    pub limits: &'a InstanceLimits,
    /// Subnets of the node's VPC.
    pub subnets: &'a [Subnet],
    /// Security groups of the node's VPC.
    pub security_groups: &'a [SecurityGroup],
    /// When this plan is made (no clock is read here).
    pub now: Timestamp,
    /// When the operator first saw each `released` entry of an address no
    /// longer in the pool (kept by the caller across reconciles; an entry
    /// missing here counts as first seen `now`).
    pub released_since: &'a BTreeMap<String, Timestamp>,
    /// How long, and how many, such entries may wait for the agent.
    pub released_bound: ReleasedBound,
}

/// How long `released` entries of addresses gone from the node may wait for
/// the agent to remove them, and how many may wait at once, before the
/// operator drops them itself: `status.release` stays bounded even when the
/// agent never answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReleasedBound {
    /// Age after which an entry is dropped.
    pub ttl: std::time::Duration,
    /// Most entries kept; beyond it the oldest are dropped.
    pub max: usize,
}

impl Default for ReleasedBound {
    fn default() -> Self {
        ReleasedBound {
            ttl: std::time::Duration::from_secs(600),
            max: 64,
        }
    }
}

/// One cloud mutation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create an ENI with `ips` secondary addresses and attach it at `device_index`.
    CreateEni {
        /// Subnet chosen for it.
        subnet_id: String,
        /// Security groups for it.
        security_groups: Vec<String>,
        /// Free device index on the instance.
        device_index: u32,
        /// Secondary addresses to assign at creation.
        ips: u32,
    },
    /// Assign `count` more addresses to an attached ENI.
    AssignIps {
        /// The ENI.
        eni_id: String,
        /// How many.
        count: u32,
    },
    /// Unassign addresses the agent agreed to release.
    UnassignIps {
        /// The ENI holding them.
        eni_id: String,
        /// The addresses.
        ips: Vec<Ipv4Addr>,
    },
}

impl Step {
    /// Metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::CreateEni { .. } => "create_eni",
            Step::AssignIps { .. } => "assign_ips",
            Step::UnassignIps { .. } => "unassign_ips",
        }
    }
}

/// Why the pool cannot reach its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `maxAllocate` caps the pool.
    MaxAllocate(u32),
    /// Every ENI slot of the instance is full.
    InstanceLimit {
        /// ENIs the instance type allows.
        max_enis: u32,
        /// Addresses per ENI it allows.
        ipv4_per_eni: u32,
    },
    /// No subnet matches the spec with enough free addresses.
    NoSubnet,
}

impl Limit {
    /// `reason` of the `LimitReached` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Limit::MaxAllocate(_) => "MaxAllocate",
            Limit::InstanceLimit { .. } => "InstanceLimit",
            Limit::NoSubnet => "NoSubnet",
        }
    }

    /// `message` of the `LimitReached` condition.
    pub fn message(&self, wanted: u32) -> String {
        match self {
            Limit::MaxAllocate(m) => {
                format!("{wanted} more IPs wanted but maxAllocate caps the pool at {m}")
            }
            Limit::InstanceLimit {
                max_enis,
                ipv4_per_eni,
            } => format!(
                "{wanted} more IPs wanted but the instance type allows {max_enis} ENIs x {ipv4_per_eni} IPv4 and every slot is in use"
            ),
            Limit::NoSubnet => format!(
                "{wanted} more IPs wanted but no subnet matching spec.ipam has free addresses in the node's zone"
            ),
        }
    }
}

/// Counts behind the decision.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// IPs in the pool.
    pub pool: u32,
    /// IPs the agent holds (in use or cooling).
    pub used: u32,
    /// IPs in the release handshake (marked or ready).
    pub releasing: u32,
    /// IPs free to hand out.
    pub available: u32,
    /// Addresses still wanted after this plan's steps.
    pub unmet: u32,
}

/// What to do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Cloud mutations, in order.
    pub steps: Vec<Step>,
    /// Handshake changes to write: `Some(state)` sets, `None` deletes the entry.
    pub release: BTreeMap<String, Option<ReleaseState>>,
    /// Set when the pool cannot reach its target.
    pub limit: Option<Limit>,
    /// Counts before the steps.
    pub counts: PoolCounts,
    /// Handshake entries this plan removes on the agent's behalf.
    pub cleanup: ReleaseCleanup,
}

/// `status.release` entries the operator removes itself (metrics count them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReleaseCleanup {
    /// `released` entries of addresses back in the pool (the cloud gave the
    /// address to the node again): the agent would withhold it forever.
    pub returned: u32,
    /// `released` entries of addresses gone from the node that the agent
    /// did not remove within the bound.
    pub stale: u32,
}

/// The pool as `plan` sees it.
struct Pool<'a> {
    pod_enis: Vec<&'a EniStatus>,
    ips: BTreeMap<Ipv4Addr, &'a str>,
    held: BTreeSet<Ipv4Addr>,
    releasing: BTreeMap<Ipv4Addr, ReleaseState>,
}

fn parse_ips<'a>(it: impl IntoIterator<Item = &'a String>) -> BTreeSet<Ipv4Addr> {
    it.into_iter().filter_map(|s| s.parse().ok()).collect()
}

impl<'a> Pool<'a> {
    fn new(input: &PlanInput<'a>) -> Self {
        let first = input.spec.ipam.first_interface_index();
        let pod_enis: Vec<&EniStatus> = input
            .status
            .enis
            .iter()
            .filter(|e| e.device_index >= first && !e.excluded)
            .collect();
        let mut ips = BTreeMap::new();
        for e in &pod_enis {
            for a in &e.addresses {
                if let Ok(ip) = a.parse::<Ipv4Addr>() {
                    ips.insert(ip, e.id.as_str());
                }
            }
        }
        // Fixed IPs belong to their pods wherever they are: held, never released.
        let mut held = parse_ips(input.status.fixed_ips.keys());
        if let Some(u) = &input.status.usage {
            held.extend(parse_ips(u.used.keys().chain(u.cooling.iter())));
        }
        let releasing = input
            .status
            .release
            .iter()
            .filter_map(|(ip, st)| Some((ip.parse().ok()?, *st)))
            .collect();
        Pool {
            pod_enis,
            ips,
            held,
            releasing,
        }
    }

    /// Free to hand out: in the pool, not held by the agent, and not
    /// withheld by it for the handshake (`marked`, `ready-for-release` and
    /// `released` entries all keep the agent from handing an address out).
    fn free(&self) -> impl Iterator<Item = (&Ipv4Addr, &&'a str)> {
        self.ips.iter().filter(|(ip, _)| {
            !self.held.contains(ip)
                && !matches!(
                    self.releasing.get(ip),
                    Some(
                        ReleaseState::Marked
                            | ReleaseState::ReadyForRelease
                            | ReleaseState::Released
                    )
                )
        })
    }
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Decides the next steps for one node.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let pool = Pool::new(input);
    let w = input.watermarks;
    let mut out = Plan::default();

    // The agent's answers first: they are independent of the watermarks.
    let mut unassign: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for (ip, state) in &pool.releasing {
        match state {
            ReleaseState::DoNotRelease => {
                out.release.insert(ip.to_string(), None);
            }
            ReleaseState::ReadyForRelease if pool.held.contains(ip) => {
                // The agent agreed, yet reports it in use: never release a used IP.
                out.release.insert(ip.to_string(), None);
            }
            ReleaseState::ReadyForRelease => match pool.ips.get(ip) {
                Some(eni) => unassign.entry(eni).or_default().push(*ip),
                None => {
                    out.release
                        .insert(ip.to_string(), Some(ReleaseState::Released));
                }
            },
            ReleaseState::Released if pool.ips.contains_key(ip) => {
                // The cloud gave the address back to this node: the old
                // entry would make the agent withhold it for good.
                out.release.insert(ip.to_string(), None);
                out.cleanup.returned += 1;
            }
            ReleaseState::Marked | ReleaseState::Released => {}
        }
    }
    drop_stale_released(input, &pool, &mut out);

    let pool_len = count(pool.ips.len());
    let releasing = pool
        .releasing
        .iter()
        .filter(|(ip, st)| {
            pool.ips.contains_key(ip)
                && matches!(
                    st,
                    ReleaseState::Marked | ReleaseState::ReadyForRelease | ReleaseState::Released
                )
        })
        .count();
    let available = count(pool.free().count());
    out.counts = PoolCounts {
        pool: pool_len,
        used: count(
            pool.held
                .intersection(&pool.ips.keys().copied().collect())
                .count(),
        ),
        releasing: count(releasing),
        available,
        unmet: 0,
    };

    let pending = input.status.usage.as_ref().map_or(0, |u| u.pending);
    let wanted = w.pre_allocate.saturating_add(pending);
    let deficit = wanted
        .saturating_sub(available)
        .max(w.min_allocate.saturating_sub(pool_len));
    if deficit > 0 {
        let mut remaining = deficit;
        // Cancel pending releases before asking the cloud for more.
        for (ip, state) in &pool.releasing {
            if remaining == 0 {
                break;
            }
            let cancellable = matches!(state, ReleaseState::Marked)
                || (matches!(state, ReleaseState::ReadyForRelease)
                    && !unassign.values().flatten().any(|x| x == ip));
            if cancellable && pool.ips.contains_key(ip) && !pool.held.contains(ip) {
                out.release.insert(ip.to_string(), None);
                remaining -= 1;
            }
        }
        // Ready-for-release IPs are kept when we are short.
        if remaining > 0 {
            for (eni, ips) in std::mem::take(&mut unassign) {
                for ip in ips {
                    if remaining > 0 {
                        out.release.insert(ip.to_string(), None);
                        remaining -= 1;
                    } else {
                        unassign.entry(eni).or_default().push(ip);
                    }
                }
            }
        }
        // The cloud is called anyway: one call fills to the high watermark
        // (a call costs the same for one address or many; the next few pods
        // or cooling addresses then need none).
        // Never past the high watermark (else the excess would be marked
        // at once): a deficit from minAllocate alone takes no headroom.
        let high = wanted.saturating_add(w.max_above_watermark);
        let headroom = high.saturating_sub(available.saturating_add(deficit));
        grow(input, &pool, remaining, headroom, &mut out);
    } else {
        let high = wanted.saturating_add(w.max_above_watermark);
        let excess = available
            .saturating_sub(high)
            .min(pool_len.saturating_sub(w.min_allocate));
        if excess > 0 {
            mark_excess(&pool, excess, &mut out);
        }
    }

    for (eni, ips) in unassign {
        out.steps.push(Step::UnassignIps {
            eni_id: eni.to_owned(),
            ips,
        });
    }
    out
}

/// Drops `released` entries of addresses gone from the node that the agent
/// has not removed: those first seen at least the bound's TTL ago, then the
/// oldest beyond its count (ties by address). Safe: the agent only hands
/// out addresses of `status.pool`, which these are not in.
fn drop_stale_released(input: &PlanInput<'_>, pool: &Pool<'_>, out: &mut Plan) {
    let ttl = jiff::SignedDuration::try_from(input.released_bound.ttl)
        .unwrap_or(jiff::SignedDuration::MAX);
    let mut waiting: Vec<(Timestamp, Ipv4Addr)> = pool
        .releasing
        .iter()
        .filter(|(ip, st)| **st == ReleaseState::Released && !pool.ips.contains_key(ip))
        .map(|(ip, _)| {
            let since = input
                .released_since
                .get(&ip.to_string())
                .copied()
                .unwrap_or(input.now);
            (since, *ip)
        })
        .collect();
    waiting.sort();
    let (stale, young): (Vec<_>, Vec<_>) = waiting
        .into_iter()
        .partition(|(since, _)| input.now.duration_since(*since) >= ttl);
    let over = young.len().saturating_sub(input.released_bound.max);
    for (_, ip) in stale.iter().chain(young.iter().take(over)) {
        out.release.insert(ip.to_string(), None);
        out.cleanup.stale += 1;
    }
}

/// Pod IPs an instance can hold on its pod ENIs: the device indexes from
/// `first_interface_index` up, each with its secondary addresses.
pub fn instance_capacity(limits: &InstanceLimits, first_interface_index: u32) -> u32 {
    limits
        .max_enis
        .saturating_sub(first_interface_index)
        .saturating_mul(limits.secondary_per_eni())
}

/// Pod IPs of bare-metal pod CIDRs: each IPv4 CIDR's addresses less its
/// network and gateway addresses; unparsable entries count nothing (the spec
/// validation reports them).
pub fn pod_cidr_capacity(cidrs: &[String]) -> u32 {
    cidrs
        .iter()
        .filter_map(|c| {
            let (addr, len) = c.split_once('/')?;
            addr.parse::<Ipv4Addr>().ok()?;
            let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
            let size = 1u64 << (32 - len);
            Some(if size > 2 { size - 2 } else { size })
        })
        .fold(0u32, |acc, n| {
            acc.saturating_add(u32::try_from(n).unwrap_or(u32::MAX))
        })
}

/// Adds assign / create steps for `wanted` more addresses and, in the same
/// calls where there is room, up to `headroom` beyond them (never past the
/// instance's capacity or `maxAllocate`; only `wanted` unmet is a limit).
fn grow(input: &PlanInput<'_>, pool: &Pool<'_>, wanted: u32, headroom: u32, out: &mut Plan) {
    if wanted == 0 {
        return;
    }
    let limits = input.limits;
    let per_eni = limits.secondary_per_eni();
    let first = input.spec.ipam.first_interface_index();
    let instance_cap = instance_capacity(limits, first);
    let pool_len = count(pool.ips.len());
    let mut cap = instance_cap;
    let mut limit = Limit::InstanceLimit {
        max_enis: limits.max_enis,
        ipv4_per_eni: limits.ipv4_per_eni,
    };
    if let Some(max) = input.watermarks.max_allocate
        && max < cap
    {
        cap = max;
        limit = Limit::MaxAllocate(max);
    }
    let room_total = cap.saturating_sub(pool_len);
    let needed = wanted.min(room_total);
    if needed < wanted {
        out.limit = Some(limit);
    }
    // `remaining` counts down what to ask for; the first `needed` of it is
    // owed, the rest headroom.
    let mut remaining = needed.saturating_add(headroom.min(room_total - needed));
    let extra = remaining - needed;
    let owed = |remaining: u32| remaining.saturating_sub(extra);

    // Fill attached ENIs first: one call each, lowest device index first.
    let mut enis = pool.pod_enis.clone();
    enis.sort_by_key(|e| e.device_index);
    for e in &enis {
        if remaining == 0 {
            break;
        }
        let room = per_eni.saturating_sub(count(e.addresses.len()));
        let n = room.min(remaining);
        if n > 0 {
            out.steps.push(Step::AssignIps {
                eni_id: e.id.clone(),
                count: n,
            });
            remaining -= n;
        }
    }

    // Then one new ENI per plan, for owed addresses only: the next plan
    // sees it after the resync.
    if owed(remaining) > 0 {
        let used_slots: BTreeSet<u32> = input.status.enis.iter().map(|e| e.device_index).collect();
        let free_slot = (first..limits.max_enis).find(|i| !used_slots.contains(i));
        match free_slot {
            None => out.limit = Some(limit),
            Some(device_index) => {
                let ips = remaining.min(per_eni).min(MAX_IPS_AT_CREATE);
                let owed_ips = owed(remaining).min(ips);
                // A subnet short of the headroom still takes what is owed.
                let chosen = choose_subnet(input, ips + 1)
                    .map(|s| (s, ips))
                    .or_else(|| choose_subnet(input, owed_ips + 1).map(|s| (s, owed_ips)));
                match chosen {
                    Some((subnet, ips)) => {
                        out.steps.push(Step::CreateEni {
                            subnet_id: subnet.id.clone(),
                            security_groups: choose_security_groups(input),
                            device_index,
                            ips,
                        });
                        remaining -= ips;
                    }
                    None => out.limit = Some(Limit::NoSubnet),
                }
            }
        }
    }
    out.counts.unmet = owed(remaining) + (wanted - needed);
}

/// The subnet for a new ENI: matching the spec's ids and tags, in the node's
/// zone and VPC, with room for `need` addresses; the one with most free
/// addresses wins (ties by id, for determinism).
pub fn choose_subnet<'s>(input: &PlanInput<'s>, need: u32) -> Option<&'s Subnet> {
    let ipam = &input.spec.ipam;
    input
        .subnets
        .iter()
        .filter(|s| input.spec.zone.as_deref().is_none_or(|z| z == s.zone))
        .filter(|s| input.spec.vpc_id.as_deref().is_none_or(|v| v == s.vpc_id))
        .filter(|s| ipam.subnet_ids.is_empty() || ipam.subnet_ids.contains(&s.id))
        .filter(|s| {
            ipam.subnet_tags
                .iter()
                .all(|(k, v)| s.tags.get(k) == Some(v))
        })
        .filter(|s| s.available_ips >= need)
        .max_by(|a, b| {
            a.available_ips
                .cmp(&b.available_ips)
                .then_with(|| b.id.cmp(&a.id))
        })
}

/// Security groups for a new ENI: the spec's ids plus groups matching its
/// tags; when the spec names none, those of the primary interface.
pub fn choose_security_groups(input: &PlanInput<'_>) -> Vec<String> {
    let ipam = &input.spec.ipam;
    let mut groups: BTreeSet<String> = ipam.security_group_ids.iter().cloned().collect();
    if !ipam.security_group_tags.is_empty() {
        groups.extend(
            input
                .security_groups
                .iter()
                .filter(|g| {
                    ipam.security_group_tags
                        .iter()
                        .all(|(k, v)| g.tags.get(k) == Some(v))
                })
                .map(|g| g.id.clone()),
        );
    }
    if groups.is_empty()
        && let Some(primary) = input.status.enis.iter().find(|e| e.device_index == 0)
    {
        groups.extend(primary.security_groups.iter().cloned());
    }
    groups.into_iter().collect()
}

/// Marks `n` free addresses for release: from the ENI with the fewest held
/// addresses first (so whole ENIs drain), highest address first.
fn mark_excess(pool: &Pool<'_>, n: u32, out: &mut Plan) {
    let mut held_per_eni: BTreeMap<&str, usize> = BTreeMap::new();
    for (ip, eni) in &pool.ips {
        if pool.held.contains(ip) {
            *held_per_eni.entry(eni).or_default() += 1;
        }
    }
    let mut free: Vec<(usize, Ipv4Addr)> = pool
        .free()
        .filter(|(ip, _)| !pool.releasing.contains_key(ip))
        .map(|(ip, eni)| (held_per_eni.get(*eni).copied().unwrap_or(0), *ip))
        .collect();
    free.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    for (_, ip) in free.into_iter().take(n as usize) {
        out.release
            .insert(ip.to_string(), Some(ReleaseState::Marked));
    }
}
