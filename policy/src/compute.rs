//! From policies, identities and endpoints to the datapath's map contents:
//! a pure function, and the diff between two results.
//!
//! ```text
//!  packet ──▶ ipcache LPM (remote IP ──▶ remote identity)
//!         ──▶ enforced[local identity] & direction bit?  no ──▶ allow
//!         ──▶ policy LPM {local, direction, proto, remote, port/prefix}
//!             (looked up with the remote identity, then with remote 0)
//!             hit ──▶ allow, count verdict at policy_index; miss ──▶ drop
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    identity::{
        IDENTITY_ANY, IDENTITY_HOST, IDENTITY_REMOTE_NODE, IDENTITY_WORLD, Prefix,
        is_cidr_identity, is_cluster_identity,
    },
    labels::{Labels, Operator, Selector},
    model::{Entity, Peer, Peers, Policy, PortRange},
    ports::decompose,
};

/// Traffic direction, seen from the local endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Towards the local endpoint.
    Ingress,
    /// From the local endpoint.
    Egress,
}

/// One allow entry of the POLICY LPM map. `local_identity`: the identity of
/// the local pod the policy selects; `remote_identity` 0 = any peer; `proto`
/// 0 = any protocol (then `port` and `port_prefix` are 0); `port` /
/// `port_prefix`: a port range as a prefix over the 16 port bits
/// (`port_prefix` 16 = exactly `port`, 0 = any port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    /// Identity of the local (selected) endpoint.
    pub local_identity: u32,
    /// Ingress or egress.
    pub direction: Direction,
    /// IP protocol number, 0 = any.
    pub proto: u8,
    /// Identity of the peer, 0 = any.
    pub remote_identity: u32,
    /// First port of the block (host order).
    pub port: u16,
    /// Significant leading bits of `port`.
    pub port_prefix: u8,
}

/// What an allow entry carries: the policy that allowed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyValue {
    /// Index into the verdict counter array; `MapContents::policy_names`
    /// names it. When several policies allow the same key, the lowest index wins.
    pub policy_index: u32,
}

/// `enforced` bit: the endpoint is default-deny for ingress.
pub const ENFORCE_INGRESS: u8 = 1;
/// `enforced` bit: the endpoint is default-deny for egress.
pub const ENFORCE_EGRESS: u8 = 2;

/// Everything the datapath's policy maps should hold on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapContents {
    /// Allow entries.
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// Local identity -> `ENFORCE_INGRESS` | `ENFORCE_EGRESS`; identities no
    /// policy selects are absent (allow everything).
    pub enforced: BTreeMap<u32, u8>,
    /// IPv4 LPM `(address, prefix length)` -> identity: pod IPs /32 -> pod
    /// identity, policy CIDRs and excepts -> CIDR identities, this node's IPs
    /// /32 -> host (1), other nodes' IPs /32 -> remote-node (6), 0.0.0.0/0 ->
    /// world (2).
    pub ipcache: BTreeMap<(Ipv4Addr, u8), u32>,
    /// `policy_index` -> `kind/namespace/name`.
    pub policy_names: BTreeMap<u32, String>,
}

impl MapContents {
    /// The identity the ipcache gives `ip`: its longest matching prefix.
    pub fn identity_of(&self, ip: Ipv4Addr) -> Option<u32> {
        (0..=32u8)
            .rev()
            .find_map(|len| self.ipcache.get(&Prefix::new(ip, len).key()).copied())
    }

    /// The verdict the datapath must reach for a new connection, as a
    /// reference for the BPF lookup: allowed when `local` is not enforced in
    /// `direction`, else when some entry matches with the remote identity or
    /// 0, the protocol or 0, and a port block containing `port`. Returns the
    /// allowing `policy_index` (`u32::MAX` when not enforced), `None` for a drop.
    pub fn verdict(
        &self,
        local: u32,
        direction: Direction,
        proto: u8,
        remote: u32,
        port: u16,
    ) -> Option<u32> {
        let bit = match direction {
            Direction::Ingress => ENFORCE_INGRESS,
            Direction::Egress => ENFORCE_EGRESS,
        };
        if self.enforced.get(&local).is_none_or(|b| b & bit == 0) {
            return Some(u32::MAX);
        }
        for remote_identity in [remote, IDENTITY_ANY] {
            for p in [proto, 0] {
                let prefixes: Vec<u8> = if p == 0 {
                    vec![0]
                } else {
                    (0..=16).rev().collect()
                };
                for port_prefix in prefixes {
                    let mask = if port_prefix == 0 {
                        0
                    } else {
                        u16::MAX << (16 - u16::from(port_prefix))
                    };
                    let key = PolicyKey {
                        local_identity: local,
                        direction,
                        proto: p,
                        remote_identity,
                        port: if p == 0 { 0 } else { port & mask },
                        port_prefix,
                    };
                    if let Some(v) = self.policy.get(&key) {
                        return Some(v.policy_index);
                    }
                }
            }
        }
        None
    }
}

/// The changes that turn one `MapContents` into another.
///
/// Apply in this order so no allowed packet is dropped on the way:
/// ipcache upserts, policy upserts, enforced upserts, enforced deletes,
/// policy deletes, ipcache deletes (names whenever).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapDiff {
    /// New or changed allow entries.
    pub policy_upserts: BTreeMap<PolicyKey, PolicyValue>,
    /// Allow entries to remove.
    pub policy_deletes: BTreeSet<PolicyKey>,
    /// New or changed enforcement bits.
    pub enforced_upserts: BTreeMap<u32, u8>,
    /// Identities no longer enforced.
    pub enforced_deletes: BTreeSet<u32>,
    /// New or changed ipcache entries.
    pub ipcache_upserts: BTreeMap<(Ipv4Addr, u8), u32>,
    /// ipcache entries to remove.
    pub ipcache_deletes: BTreeSet<(Ipv4Addr, u8)>,
    /// New or renamed policy indices.
    pub policy_names_upserts: BTreeMap<u32, String>,
    /// Policy indices no longer used.
    pub policy_names_deletes: BTreeSet<u32>,
}

impl MapDiff {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.policy_upserts.is_empty()
            && self.policy_deletes.is_empty()
            && self.enforced_upserts.is_empty()
            && self.enforced_deletes.is_empty()
            && self.ipcache_upserts.is_empty()
            && self.ipcache_deletes.is_empty()
            && self.policy_names_upserts.is_empty()
            && self.policy_names_deletes.is_empty()
    }

    /// Applies the changes to `contents` (what loading them into the maps does).
    pub fn apply(&self, contents: &mut MapContents) {
        apply_map(
            &mut contents.policy,
            &self.policy_upserts,
            &self.policy_deletes,
        );
        apply_map(
            &mut contents.enforced,
            &self.enforced_upserts,
            &self.enforced_deletes,
        );
        apply_map(
            &mut contents.ipcache,
            &self.ipcache_upserts,
            &self.ipcache_deletes,
        );
        apply_map(
            &mut contents.policy_names,
            &self.policy_names_upserts,
            &self.policy_names_deletes,
        );
    }

    /// Total entries touched.
    pub fn len(&self) -> usize {
        self.policy_upserts.len()
            + self.policy_deletes.len()
            + self.enforced_upserts.len()
            + self.enforced_deletes.len()
            + self.ipcache_upserts.len()
            + self.ipcache_deletes.len()
            + self.policy_names_upserts.len()
            + self.policy_names_deletes.len()
    }
}

fn apply_map<K: Ord + Clone, V: Clone>(
    map: &mut BTreeMap<K, V>,
    upserts: &BTreeMap<K, V>,
    deletes: &BTreeSet<K>,
) {
    for (k, v) in upserts {
        map.insert(k.clone(), v.clone());
    }
    for k in deletes {
        map.remove(k);
    }
}

/// Adds to `upserts`/`deletes` what turns `old` into `new`.
pub(crate) fn diff_into<K: Ord + Clone, V: PartialEq + Clone>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
    upserts: &mut BTreeMap<K, V>,
    deletes: &mut BTreeSet<K>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            upserts.insert(k.clone(), v.clone());
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            deletes.insert(k.clone());
        }
    }
}

/// The changes that turn `old` into `new`.
pub fn diff(old: &MapContents, new: &MapContents) -> MapDiff {
    let mut d = MapDiff::default();
    diff_into(
        &old.policy,
        &new.policy,
        &mut d.policy_upserts,
        &mut d.policy_deletes,
    );
    diff_into(
        &old.enforced,
        &new.enforced,
        &mut d.enforced_upserts,
        &mut d.enforced_deletes,
    );
    diff_into(
        &old.ipcache,
        &new.ipcache,
        &mut d.ipcache_upserts,
        &mut d.ipcache_deletes,
    );
    diff_into(
        &old.policy_names,
        &new.policy_names,
        &mut d.policy_names_upserts,
        &mut d.policy_names_deletes,
    );
    d
}

/// Cluster identities by label `key=value`, so a selector with an `In`
/// requirement looks at the identities carrying one of its values instead
/// of scanning every identity (3,000 policies over 3,000 identities would
/// otherwise cost 9M selector matches per local identity rebuilt).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LabelIndex(BTreeMap<(String, String), BTreeSet<u32>>);

impl LabelIndex {
    pub fn build(identities: &BTreeMap<u32, Labels>) -> Self {
        let mut ix = Self::default();
        for (id, labels) in identities {
            ix.insert(*id, labels);
        }
        ix
    }

    pub fn insert(&mut self, id: u32, labels: &Labels) {
        if !is_cluster_identity(id) {
            return;
        }
        for (k, v) in labels.as_map() {
            self.0.entry((k.clone(), v.clone())).or_default().insert(id);
        }
    }

    pub fn remove(&mut self, id: u32, labels: &Labels) {
        for (k, v) in labels.as_map() {
            let key = (k.clone(), v.clone());
            if let Some(ids) = self.0.get_mut(&key) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.0.remove(&key);
                }
            }
        }
    }

    /// The identities that can match `sel`: those of its most selective `In`
    /// requirement; `None` when it has none (scan everything).
    fn candidates(&self, sel: &Selector) -> Option<BTreeSet<u32>> {
        sel.requirements
            .iter()
            .filter_map(|r| match &r.op {
                Operator::In(values) => Some(
                    values
                        .iter()
                        .filter_map(|v| self.0.get(&(r.key.clone(), v.clone())))
                        .flatten()
                        .copied()
                        .collect::<BTreeSet<u32>>(),
                ),
                _ => None,
            })
            .min_by_key(BTreeSet::len)
    }
}

/// The identities and CIDR identities rules are resolved against.
pub(crate) struct View<'a> {
    /// Identity -> labels; only cluster identities are matched by selectors.
    pub identities: &'a BTreeMap<u32, Labels>,
    /// The same identities by label.
    pub index: &'a LabelIndex,
    /// Policy CIDR -> its node-local identity (never `0.0.0.0/0`).
    pub cidrs: &'a BTreeMap<Prefix, u32>,
}

impl View<'_> {
    /// The remote identities `peers` allow; `{0}` when any peer is.
    pub fn remotes(&self, peers: &Peers) -> BTreeSet<u32> {
        let mut out = BTreeSet::new();
        let Peers::Only(list) = peers else {
            return BTreeSet::from([IDENTITY_ANY]);
        };
        for peer in list {
            match peer {
                Peer::Endpoints(sel) => match self.index.candidates(sel) {
                    Some(ids) => out.extend(ids.into_iter().filter(|id| {
                        is_cluster_identity(*id)
                            && self.identities.get(id).is_some_and(|l| sel.matches(l))
                    })),
                    None => out.extend(
                        self.identities
                            .iter()
                            .filter(|(id, l)| is_cluster_identity(**id) && sel.matches(l))
                            .map(|(id, _)| *id),
                    ),
                },
                Peer::Cidr { cidr, except } => {
                    let allowed =
                        |p: &Prefix| cidr.contains(p) && !except.iter().any(|e| e.contains(p));
                    if allowed(&Prefix::ALL) {
                        out.insert(IDENTITY_WORLD);
                    }
                    out.extend(
                        self.cidrs
                            .iter()
                            .filter(|(p, _)| allowed(p))
                            .map(|(_, id)| *id),
                    );
                }
                Peer::Entity(Entity::All) => return BTreeSet::from([IDENTITY_ANY]),
                Peer::Entity(Entity::World) => {
                    out.insert(IDENTITY_WORLD);
                    out.extend(self.cidrs.values().copied());
                }
                Peer::Entity(Entity::Cluster) => {
                    out.insert(IDENTITY_HOST);
                    out.insert(IDENTITY_REMOTE_NODE);
                    out.extend(
                        self.identities
                            .keys()
                            .copied()
                            .filter(|id| is_cluster_identity(*id)),
                    );
                }
                Peer::Entity(Entity::Host) => {
                    out.insert(IDENTITY_HOST);
                }
                Peer::Entity(Entity::RemoteNode) => {
                    out.insert(IDENTITY_REMOTE_NODE);
                }
            }
        }
        out
    }

    /// Allow entries and enforcement bits of one local identity; `policies`
    /// in ascending index order (the lowest index wins a shared key).
    pub fn local_entries<'p>(
        &self,
        policies: impl Iterator<Item = (u32, &'p Policy)>,
        local: u32,
        entries: &mut BTreeMap<PolicyKey, PolicyValue>,
    ) -> u8 {
        let Some(labels) = self
            .identities
            .get(&local)
            .filter(|_| is_cluster_identity(local))
        else {
            return 0;
        };
        let mut bits = 0;
        for (index, policy) in policies {
            for spec in policy.specs.iter().filter(|s| s.subject.matches(labels)) {
                for (direction, rules, bit) in [
                    (Direction::Ingress, &spec.ingress, ENFORCE_INGRESS),
                    (Direction::Egress, &spec.egress, ENFORCE_EGRESS),
                ] {
                    let Some(rules) = rules else { continue };
                    bits |= bit;
                    for rule in rules {
                        let l4 = l4_keys(rule.ports.as_deref());
                        for remote in self.remotes(&rule.peers) {
                            for &(proto, port, port_prefix) in &l4 {
                                entries
                                    .entry(PolicyKey {
                                        local_identity: local,
                                        direction,
                                        proto,
                                        remote_identity: remote,
                                        port,
                                        port_prefix,
                                    })
                                    .or_insert(PolicyValue {
                                        policy_index: index,
                                    });
                            }
                        }
                    }
                }
            }
        }
        bits
    }
}

/// `(proto, port, port_prefix)` blocks of a rule's ports; `None` is any.
fn l4_keys(ports: Option<&[PortRange]>) -> Vec<(u8, u16, u8)> {
    match ports {
        None => vec![(0, 0, 0)],
        Some(ranges) => ranges
            .iter()
            .flat_map(|r| {
                decompose(r.first, r.last)
                    .into_iter()
                    .map(move |(port, len)| (r.proto, port, len))
            })
            .collect(),
    }
}

/// The ipcache value of one key given the layers: pods over this node's
/// addresses over other nodes' over policy CIDRs over world.
pub(crate) fn ipcache_value(
    key: Prefix,
    pods: &BTreeMap<Ipv4Addr, u32>,
    nodes: &Nodes,
    cidrs: &BTreeMap<Prefix, u32>,
) -> Option<u32> {
    if key.len == 32 {
        if let Some(id) = pods.get(&key.addr) {
            return Some(*id);
        }
        if nodes.host.contains(&key.addr) {
            return Some(IDENTITY_HOST);
        }
        if nodes.remote.contains(&key.addr) {
            return Some(IDENTITY_REMOTE_NODE);
        }
    }
    if key == Prefix::ALL {
        return Some(IDENTITY_WORLD);
    }
    cidrs.get(&key).copied()
}

/// Node addresses, as the ipcache classes them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nodes {
    /// This node's own addresses: identity `host` (1).
    pub host: BTreeSet<Ipv4Addr>,
    /// Every node's InternalIPs; those not in `host` get `remote-node` (6).
    pub remote: BTreeSet<Ipv4Addr>,
}

impl Nodes {
    /// Every address of either kind.
    pub fn addresses(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        self.host.union(&self.remote).copied()
    }
}

/// The map contents for one node.
///
/// - `policies`: policy `i` gets `policy_index` `i`; keep a policy at the
///   same position to keep its counters (`PolicyEngine` does).
/// - `identities`: cluster identities with their labels, and the node's CIDR
///   identities (`CidrIdentities::identities`) for the CIDRs the policies
///   name; a CIDR without an identity is matched only through the more
///   specific prefixes that have one.
/// - `pods`: pod IP -> identity, for the ipcache.
/// - `nodes`: this node's addresses (identity host, 1) and the other nodes'
///   (remote-node, 6); an address in both is this node's.
/// - `local_identities`: identities of the pods on this node; only they get
///   policy and enforcement entries.
///
/// An endpoint selected by a policy for a direction is default-deny in that
/// direction; its allow entries are the union of the rules selecting it.
pub fn compute(
    policies: &[Policy],
    identities: &BTreeMap<u32, Labels>,
    pods: &BTreeMap<Ipv4Addr, u32>,
    nodes: &Nodes,
    local_identities: &BTreeSet<u32>,
) -> MapContents {
    let cidrs: BTreeMap<Prefix, u32> = identities
        .iter()
        .filter(|(id, _)| is_cidr_identity(**id))
        .filter_map(|(id, l)| l.cidr_prefix().map(|p| (p, *id)))
        .filter(|(p, _)| *p != Prefix::ALL)
        .collect();
    let index = LabelIndex::build(identities);
    let view = View {
        identities,
        index: &index,
        cidrs: &cidrs,
    };
    let mut out = MapContents::default();
    for &local in local_identities {
        let bits = view.local_entries(indexed(policies), local, &mut out.policy);
        if bits != 0 {
            out.enforced.insert(local, bits);
        }
    }
    let keys = std::iter::once(Prefix::ALL)
        .chain(cidrs.keys().copied())
        .chain(nodes.addresses().map(Prefix::host))
        .chain(pods.keys().map(|ip| Prefix::host(*ip)));
    for key in keys {
        if let Some(id) = ipcache_value(key, pods, nodes, &cidrs) {
            out.ipcache.insert(key.key(), id);
        }
    }
    out.policy_names = indexed(policies)
        .map(|(i, p)| (i, p.id.to_string()))
        .collect();
    out
}

fn indexed(policies: &[Policy]) -> impl Iterator<Item = (u32, &Policy)> {
    // More than 2^32 policies cannot be loaded anyway; stop there.
    policies
        .iter()
        .enumerate()
        .map_while(|(i, p)| u32::try_from(i).ok().map(|i| (i, p)))
}
