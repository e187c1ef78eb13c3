//! `PolicyEngine`: the inputs of `compute` kept in memory, with each change
//! answered by the `MapDiff` of only the entries it affects.
//!
//! A change recomputes only the local identities it can affect: those a
//! changed policy selects (before or after), those whose policies can see a
//! changed identity as a peer, and, when the set of policy CIDRs changes,
//! those selected by policies with CIDR or world peers. Pods and nodes only
//! touch their ipcache entry. After any sequence of changes the contents
//! equal `compute` on the same inputs (a property test checks it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::{
    compute::{
        Direction, LabelIndex, MapContents, MapDiff, Nodes, PolicyKey, View, compute, diff_into,
        ipcache_value,
    },
    identity::{CIDR_IDENTITY_MAX, CidrIdentities, Prefix, is_cluster_identity},
    labels::Labels,
    model::{Entity, Peer, Peers, Policy, PolicyRef},
};

/// The node's policy state and the map contents derived from it.
#[derive(Clone, Debug)]
pub struct PolicyEngine {
    /// Policy per index; a removed policy leaves a hole the next new one fills.
    slots: Vec<Option<Policy>>,
    slot_of: BTreeMap<PolicyRef, u32>,
    identities: BTreeMap<u32, Labels>,
    index: LabelIndex,
    cidr_refs: BTreeMap<Prefix, usize>,
    cidr_identities: CidrIdentities,
    cidrs: BTreeMap<Prefix, u32>,
    pods: BTreeMap<Ipv4Addr, u32>,
    nodes: Nodes,
    locals: BTreeSet<u32>,
    contents: MapContents,
}

impl Default for PolicyEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl PolicyEngine {
    /// No policies, identities or endpoints: only `0.0.0.0/0` -> world.
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            slot_of: BTreeMap::new(),
            identities: BTreeMap::new(),
            index: LabelIndex::default(),
            cidr_refs: BTreeMap::new(),
            cidr_identities: CidrIdentities::default(),
            cidrs: BTreeMap::new(),
            pods: BTreeMap::new(),
            nodes: Nodes::default(),
            locals: BTreeSet::new(),
            contents: compute(
                &[],
                &BTreeMap::new(),
                &BTreeMap::new(),
                &Nodes::default(),
                &BTreeSet::new(),
            ),
        }
    }

    /// What the maps hold now (for a full load, e.g. after an agent restart).
    pub fn contents(&self) -> &MapContents {
        &self.contents
    }

    /// The policies by index, holes skipped.
    pub fn policies(&self) -> impl Iterator<Item = (u32, &Policy)> {
        indexed(&self.slots)
    }

    /// The `policy_index` of a policy.
    pub fn policy_index(&self, id: &PolicyRef) -> Option<u32> {
        self.slot_of.get(id).copied()
    }

    /// Cluster identities and the node's CIDR identities, as `compute` takes them.
    pub fn identities(&self) -> BTreeMap<u32, Labels> {
        let mut all = self.identities.clone();
        all.extend(self.cidr_identities.identities());
        all
    }

    /// Pod IP -> identity.
    pub fn pods(&self) -> &BTreeMap<Ipv4Addr, u32> {
        &self.pods
    }

    /// Node addresses: this node's and the others'.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Identities of this node's pods.
    pub fn local_identities(&self) -> &BTreeSet<u32> {
        &self.locals
    }

    /// Adds or replaces the policy named by `policy.id`; a replaced policy keeps its index.
    pub fn upsert_policy(&mut self, policy: Policy) -> MapDiff {
        let mut d = MapDiff::default();
        let slot = match self.slot_of.get(&policy.id) {
            Some(s) => *s,
            None => {
                let free = self.slots.iter().position(Option::is_none);
                let s = free.unwrap_or(self.slots.len());
                if s == self.slots.len() {
                    self.slots.push(None);
                }
                // Indices stay below the number of slots, far below 2^32.
                let s = u32::try_from(s).unwrap_or(u32::MAX);
                self.slot_of.insert(policy.id.clone(), s);
                s
            }
        };
        let name = policy.id.to_string();
        if self.contents.policy_names.get(&slot) != Some(&name) {
            d.policy_names_upserts.insert(slot, name);
        }
        let mut affected = self.selected_locals(&policy);
        let new_cidrs: BTreeSet<Prefix> = policy.cidrs().collect();
        let old = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.replace(policy));
        let old_cidrs: BTreeSet<Prefix> = old.iter().flat_map(Policy::cidrs).collect();
        if let Some(old) = &old {
            affected.extend(self.selected_locals(old));
        }
        self.update_cidrs(&old_cidrs, &new_cidrs, &mut affected, &mut d);
        self.finish(affected, d)
    }

    /// Removes a policy; its index becomes free.
    pub fn remove_policy(&mut self, id: &PolicyRef) -> MapDiff {
        let mut d = MapDiff::default();
        let Some(slot) = self.slot_of.remove(id) else {
            return d;
        };
        if self.contents.policy_names.contains_key(&slot) {
            d.policy_names_deletes.insert(slot);
        }
        let Some(old) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return self.finish(BTreeSet::new(), d);
        };
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
        let mut affected = self.selected_locals(&old);
        let old_cidrs: BTreeSet<Prefix> = old.cidrs().collect();
        self.update_cidrs(&old_cidrs, &BTreeSet::new(), &mut affected, &mut d);
        self.finish(affected, d)
    }

    /// Binds a cluster identity to its labels (new, or learnt from a
    /// `SextantIdentity`). Numbers outside the cluster range are ignored:
    /// reserved and CIDR identities are the engine's own.
    pub fn upsert_identity(&mut self, id: u32, labels: Labels) -> MapDiff {
        if !is_cluster_identity(id) {
            return MapDiff::default();
        }
        let old = self.identities.insert(id, labels.clone());
        if old.as_ref() == Some(&labels) {
            return MapDiff::default();
        }
        if let Some(o) = &old {
            self.index.remove(id, o);
        }
        self.index.insert(id, &labels);
        let affected = self.identity_affects(id, old.as_ref(), Some(&labels));
        self.finish(affected, MapDiff::default())
    }

    /// Forgets a cluster identity.
    pub fn remove_identity(&mut self, id: u32) -> MapDiff {
        let Some(old) = self.identities.remove(&id) else {
            return MapDiff::default();
        };
        self.index.remove(id, &old);
        let affected = self.identity_affects(id, Some(&old), None);
        self.finish(affected, MapDiff::default())
    }

    /// A pod's address and identity (any pod in the cluster, for the ipcache).
    pub fn upsert_pod(&mut self, ip: Ipv4Addr, identity: u32) -> MapDiff {
        self.pods.insert(ip, identity);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// A pod's address is gone.
    pub fn remove_pod(&mut self, ip: Ipv4Addr) -> MapDiff {
        self.pods.remove(&ip);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// A node's InternalIP (identity remote-node unless it is also one of
    /// this node's own addresses).
    pub fn upsert_node(&mut self, ip: Ipv4Addr) -> MapDiff {
        self.nodes.remote.insert(ip);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// A node address is gone.
    pub fn remove_node(&mut self, ip: Ipv4Addr) -> MapDiff {
        self.nodes.remote.remove(&ip);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// One of this node's own addresses (identity host).
    pub fn upsert_host(&mut self, ip: Ipv4Addr) -> MapDiff {
        self.nodes.host.insert(ip);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// An address of this node is gone.
    pub fn remove_host(&mut self, ip: Ipv4Addr) -> MapDiff {
        self.nodes.host.remove(&ip);
        self.ipcache_keys([Prefix::host(ip)])
    }

    /// A pod with this identity now runs on this node.
    pub fn add_local_identity(&mut self, id: u32) -> MapDiff {
        if !self.locals.insert(id) {
            return MapDiff::default();
        }
        self.finish(BTreeSet::from([id]), MapDiff::default())
    }

    /// No pod with this identity runs on this node any more.
    pub fn remove_local_identity(&mut self, id: u32) -> MapDiff {
        if !self.locals.remove(&id) {
            return MapDiff::default();
        }
        self.finish(BTreeSet::from([id]), MapDiff::default())
    }

    /// The allow entries `policy` alone would put in the policy map on this
    /// node with local identities `locals` (the engine's identities must
    /// know their labels): what a per-policy budget is checked against
    /// before the policy is applied. CIDRs it names that have no identity
    /// yet are counted as if they had one.
    pub fn expansion(&self, policy: &Policy, locals: &BTreeSet<u32>) -> usize {
        let mut cidrs = self.cidrs.clone();
        let mut placeholder = CIDR_IDENTITY_MAX;
        for p in policy.cidrs() {
            if p != Prefix::ALL && !cidrs.contains_key(&p) {
                // Numbers from the top of the range, only for counting.
                cidrs.insert(p, placeholder);
                placeholder = placeholder.saturating_sub(1);
            }
        }
        let view = View {
            identities: &self.identities,
            index: &self.index,
            cidrs: &cidrs,
        };
        let mut total = 0;
        let selected = locals.iter().copied().filter(|id| {
            self.identities
                .get(id)
                .is_some_and(|l| policy.specs.iter().any(|s| s.subject.matches(l)))
        });
        for local in selected {
            let mut entries = BTreeMap::new();
            view.local_entries(std::iter::once((0, policy)), local, &mut entries);
            total += entries.len();
        }
        total
    }

    /// Local identities some spec of `policy` selects.
    fn selected_locals(&self, policy: &Policy) -> BTreeSet<u32> {
        self.locals
            .iter()
            .copied()
            .filter(|id| {
                self.identities
                    .get(id)
                    .is_some_and(|l| policy.specs.iter().any(|s| s.subject.matches(l)))
            })
            .collect()
    }

    /// Local identities whose entries can change when `id` changes labels.
    fn identity_affects(
        &self,
        id: u32,
        old: Option<&Labels>,
        new: Option<&Labels>,
    ) -> BTreeSet<u32> {
        let mut affected = BTreeSet::new();
        if self.locals.contains(&id) {
            affected.insert(id);
        }
        let sees = |peers: &Peers| match peers {
            Peers::Any => false,
            Peers::Only(list) => list.iter().any(|p| match p {
                Peer::Endpoints(sel) => {
                    old.is_some_and(|l| sel.matches(l)) || new.is_some_and(|l| sel.matches(l))
                }
                Peer::Entity(Entity::Cluster) => true,
                _ => false,
            }),
        };
        for (_, policy) in indexed(&self.slots) {
            for spec in &policy.specs {
                let touched = spec
                    .ingress
                    .iter()
                    .chain(spec.egress.iter())
                    .flatten()
                    .any(|r| sees(&r.peers));
                if touched {
                    affected.extend(self.locals.iter().copied().filter(|l| {
                        self.identities
                            .get(l)
                            .is_some_and(|labels| spec.subject.matches(labels))
                    }));
                }
            }
        }
        affected
    }

    /// Moves the CIDR reference counts from `old` to `new`, syncs the CIDR
    /// identities, and when they change, marks the locals whose policies
    /// resolve CIDR or world peers.
    fn update_cidrs(
        &mut self,
        old: &BTreeSet<Prefix>,
        new: &BTreeSet<Prefix>,
        affected: &mut BTreeSet<u32>,
        d: &mut MapDiff,
    ) {
        for p in old {
            if let Some(n) = self.cidr_refs.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    self.cidr_refs.remove(p);
                }
            }
        }
        for p in new {
            *self.cidr_refs.entry(*p).or_default() += 1;
        }
        let wanted: BTreeSet<Prefix> = self.cidr_refs.keys().copied().collect();
        let (added, removed) = self.cidr_identities.sync(&wanted);
        if added.is_empty() && removed.is_empty() {
            return;
        }
        self.cidrs = self.cidr_identities.iter().collect();
        let keys: Vec<Prefix> = added.iter().chain(&removed).map(|(p, _)| *p).collect();
        let ipc = self.ipcache_keys(keys);
        d.ipcache_upserts.extend(ipc.ipcache_upserts);
        d.ipcache_deletes.extend(ipc.ipcache_deletes);
        let uses_outside = |p: &Policy| {
            p.rules().any(|r| match &r.peers {
                Peers::Any => false,
                Peers::Only(list) => list
                    .iter()
                    .any(|x| matches!(x, Peer::Cidr { .. } | Peer::Entity(Entity::World))),
            })
        };
        let users: Vec<Policy> = indexed(&self.slots)
            .filter(|(_, p)| uses_outside(p))
            .map(|(_, p)| p.clone())
            .collect();
        for p in &users {
            affected.extend(self.selected_locals(p));
        }
    }

    /// Brings the ipcache entries at `keys` in line with the layers and
    /// applies the change.
    fn ipcache_keys(&mut self, keys: impl IntoIterator<Item = Prefix>) -> MapDiff {
        let mut d = MapDiff::default();
        for key in keys {
            let want = ipcache_value(key, &self.pods, &self.nodes, &self.cidrs);
            let have = self.contents.ipcache.get(&key.key()).copied();
            match want {
                Some(id) if have != Some(id) => {
                    d.ipcache_upserts.insert(key.key(), id);
                }
                None if have.is_some() => {
                    d.ipcache_deletes.insert(key.key());
                }
                _ => {}
            }
        }
        d.apply(&mut self.contents);
        d
    }

    /// Recomputes the entries of `affected` local identities into `d`, then
    /// applies `d` and returns it.
    fn finish(&mut self, affected: BTreeSet<u32>, mut d: MapDiff) -> MapDiff {
        let view = View {
            identities: &self.identities,
            index: &self.index,
            cidrs: &self.cidrs,
        };
        for local in affected {
            let mut new = BTreeMap::new();
            let bits = if self.locals.contains(&local) {
                view.local_entries(indexed(&self.slots), local, &mut new)
            } else {
                0
            };
            let old: BTreeMap<PolicyKey, _> = self
                .contents
                .policy
                .range(key_range(local))
                .map(|(k, v)| (*k, *v))
                .collect();
            diff_into(&old, &new, &mut d.policy_upserts, &mut d.policy_deletes);
            let old_bits: BTreeMap<u32, u8> = self
                .contents
                .enforced
                .get(&local)
                .map(|b| (local, *b))
                .into_iter()
                .collect();
            let new_bits: BTreeMap<u32, u8> =
                (bits != 0).then_some((local, bits)).into_iter().collect();
            diff_into(
                &old_bits,
                &new_bits,
                &mut d.enforced_upserts,
                &mut d.enforced_deletes,
            );
        }
        let mut applied = d.clone();
        // ipcache changes were applied when they were computed.
        applied.ipcache_upserts.clear();
        applied.ipcache_deletes.clear();
        applied.apply(&mut self.contents);
        d
    }
}

fn key_range(local: u32) -> std::ops::RangeInclusive<PolicyKey> {
    PolicyKey {
        local_identity: local,
        direction: Direction::Ingress,
        proto: 0,
        remote_identity: 0,
        port: 0,
        port_prefix: 0,
    }..=PolicyKey {
        local_identity: local,
        direction: Direction::Egress,
        proto: u8::MAX,
        remote_identity: u32::MAX,
        port: u16::MAX,
        port_prefix: u8::MAX,
    }
}

fn indexed(slots: &[Option<Policy>]) -> impl Iterator<Item = (u32, &Policy)> {
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((u32::try_from(i).ok()?, p.as_ref()?)))
}
