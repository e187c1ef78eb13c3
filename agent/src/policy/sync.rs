//! Network policy on the node: what the API server (or the agent API) says
//! about policies, pods, namespaces and nodes goes into the policy engine
//! (`sextant-policy`), and the engine's map diffs go into the datapath's
//! `POLICY`, `POLICY_ENFORCED` and `IPCACHE` maps, safe order first.
//!
//! ```text
//!  snapshot (policies, namespaces, pods, nodes, identities)
//!     ──▶ NodePolicy::sync ──▶ PolicyEngine ops ──▶ MapDiff ──▶ write_diff ──▶ BPF maps
//!                         └──▶ local pod identities ──▶ ENDPOINTS[ip].identity
//! ```
//!
//! A snapshot is the whole desired state; `sync` turns the difference from
//! the last one into engine operations, so map writes stay incremental.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use serde::{Deserialize, Serialize};
use sextant_policy::{Direction, Labels, MapDiff, Policy, PolicyEngine, PolicyRef};

use crate::{
    datapath::{Datapath, PolicyEntry},
    error::Result,
};

/// A pod as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Pod labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Pod IP, when it has one.
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
}

/// Everything policy depends on, as one desired state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicySnapshot {
    /// `SextantNetworkPolicy`, `CiliumNetworkPolicy` or `networking.k8s.io/v1`
    /// `NetworkPolicy` objects, as JSON.
    #[serde(default)]
    pub policies: Vec<serde_json::Value>,
    /// Namespace name -> its labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Every pod of the cluster with an IP.
    #[serde(default)]
    pub pods: Vec<PodInfo>,
    /// Every node's InternalIPs: identity `remote-node`, unless also in `host`.
    #[serde(default)]
    pub nodes: Vec<Ipv4Addr>,
    /// This node's own addresses: identity `host`, which always reaches the
    /// node's pods (kubelet probes). Other nodes never get `host`.
    #[serde(default)]
    pub host: Vec<Ipv4Addr>,
    /// Cluster identities already bound (`SextantIdentity` objects): number -> labels.
    #[serde(default)]
    pub identities: BTreeMap<u32, BTreeMap<String, String>>,
}

/// A policy the node does not enforce, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    /// `kind/namespace/name` (or the document's position when it has no name).
    pub policy: String,
    /// `Unsupported` or `Invalid`.
    pub reason: String,
    /// Every problem, by field path.
    pub message: String,
}

/// What a sync did, as the agent API answers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyReport {
    /// Policies enforced, `kind/namespace/name`.
    pub enforced: Vec<String>,
    /// Policies refused.
    pub rejected: Vec<Rejected>,
    /// `namespace/name` -> identity of every pod with labels.
    pub identities: BTreeMap<String, u32>,
    /// Map entries written or removed by this sync.
    pub changes: usize,
    /// Allow entries in the policy map now.
    pub policy_entries: usize,
}

/// The node's policy state.
///
/// Every per-object map holds only what the last snapshot named: identity
/// bindings no pod uses and no `SextantIdentity` gives, policies and parsed
/// documents of deleted objects are evicted by the next [`NodePolicy::sync`],
/// so memory follows the cluster's size, not its history.
#[derive(Default)]
pub struct NodePolicy {
    engine: PolicyEngine,
    /// Identity numbers bound now: given by the snapshot, or allocated here
    /// for a label set a pod uses and nothing else binds.
    bound: BTreeMap<u32, Labels>,
    /// `bound` the other way round, so a pod's identity is one lookup.
    by_labels: BTreeMap<Labels, u32>,
    /// Each policy document of the last snapshot with its parse, by
    /// `kind/namespace/name`: an unchanged document is not parsed again.
    parsed: BTreeMap<String, (serde_json::Value, std::result::Result<Policy, Rejected>)>,
    policies: BTreeMap<PolicyRef, Policy>,
    pod_identity: BTreeMap<String, u32>,
    pods: BTreeMap<Ipv4Addr, u32>,
    nodes: BTreeSet<Ipv4Addr>,
    host: BTreeSet<Ipv4Addr>,
    identities_in_engine: BTreeSet<u32>,
    rejected: Vec<Rejected>,
    /// Most allow entries one policy may expand to on this node; `None`: no cap.
    entry_budget: Option<usize>,
    /// Policies refused for their size, `kind/namespace/name` -> entries:
    /// an Event is due when one appears (or grows) here.
    over_budget: BTreeMap<String, usize>,
    fresh_over_budget: Vec<(String, usize)>,
}

/// `Rejected::reason` of a policy refused for expanding past the budget.
pub const REASON_TOO_LARGE: &str = "TooLarge";

impl NodePolicy {
    /// The engine (map contents, policy names).
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }

    /// The identity of pod `namespace/name`, once a snapshot named it.
    pub fn identity_of_pod(&self, namespace: &str, name: &str) -> Option<u32> {
        self.pod_identity
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    /// Policies refused by the last sync.
    pub fn rejected(&self) -> &[Rejected] {
        &self.rejected
    }

    /// Caps the allow entries one policy may expand to on this node
    /// (`--policy-max-entries-per-policy`); 0 lifts the cap. A policy that
    /// would expand past it is refused (`TooLarge`) and not applied: its
    /// last accepted version, if any, stays; every other policy is unaffected.
    pub fn set_entry_budget(&mut self, max: usize) {
        self.entry_budget = (max > 0).then_some(max);
    }

    /// Policies refused for their size by the last sync that were not
    /// refused at that size by the one before: `(policy, entries)`, for Events.
    pub fn newly_over_budget(&self) -> &[(String, usize)] {
        &self.fresh_over_budget
    }

    /// Policies refused for their size now.
    pub fn over_budget(&self) -> usize {
        self.over_budget.len()
    }

    /// Brings the engine to `snap`, with `local` the pod IPs on this node.
    /// Returns the diffs in the order they must reach the maps, and the report.
    pub fn sync(
        &mut self,
        snap: &PolicySnapshot,
        local: &BTreeSet<Ipv4Addr>,
    ) -> (Vec<MapDiff>, PolicyReport) {
        let mut diffs = Vec::new();
        let mut report = PolicyReport::default();

        // Identities: given ones first, then one per new label set.
        for (id, labels) in &snap.identities {
            let labels = Labels::new(labels.clone());
            self.bind(*id, labels.clone());
            // A binding the cluster gives wins over one chosen here; of two
            // given for one label set (a race lost by both), the lower.
            let given_lower = self
                .by_labels
                .get(&labels)
                .is_some_and(|cur| cur < id && snap.identities.contains_key(cur));
            if !given_lower {
                self.by_labels.insert(labels, *id);
            }
        }
        let no_labels = BTreeMap::new();
        let mut pod_identity = BTreeMap::new();
        let mut pods = BTreeMap::new();
        for p in &snap.pods {
            let ns_labels = snap.namespaces.get(&p.namespace).unwrap_or(&no_labels);
            let labels = Labels::for_pod(&p.namespace, &p.labels, ns_labels);
            let Some(id) = self.identity_for(&labels) else {
                continue;
            };
            pod_identity.insert(format!("{}/{}", p.namespace, p.name), id);
            if let Some(ip) = p.ip {
                pods.insert(ip, id);
            }
        }
        let used: BTreeSet<u32> = pod_identity.values().copied().collect();
        for id in used.difference(&self.identities_in_engine.clone()) {
            if let Some(labels) = self.bound.get(id) {
                diffs.push(self.engine.upsert_identity(*id, labels.clone()));
            }
        }

        // Policies: parse every document; refused ones are reported, never half-applied.
        let mut wanted: BTreeMap<PolicyRef, Policy> = BTreeMap::new();
        self.rejected.clear();
        let mut last = std::mem::take(&mut self.parsed);
        for (i, doc) in snap.policies.iter().enumerate() {
            let name = doc_name(doc);
            let outcome = match name.as_ref().and_then(|n| last.remove(n)) {
                Some((seen, outcome)) if seen == *doc => outcome,
                _ => sextant_policy::parse_value(doc).map_err(|e| Rejected {
                    policy: name.clone().unwrap_or_else(|| format!("policies[{i}]")),
                    reason: e.reason().to_string(),
                    message: e.problems_text(),
                }),
            };
            match &outcome {
                Ok(p) => {
                    wanted.insert(p.id.clone(), p.clone());
                }
                Err(r) => self.rejected.push(r.clone()),
            }
            if let Some(name) = name {
                self.parsed.insert(name, (doc.clone(), outcome));
            }
        }
        // Budget: a changed policy that would expand past it is refused and
        // keeps its last accepted version (if any); nothing else is touched.
        let mut over_budget = BTreeMap::new();
        if let Some(budget) = self.entry_budget {
            // Measured against the local identities this sync ends with.
            let locals: BTreeSet<u32> = local
                .iter()
                .filter_map(|ip| pods.get(ip))
                .copied()
                .collect();
            let changed: Vec<PolicyRef> = wanted
                .iter()
                .filter(|(id, p)| self.policies.get(*id) != Some(*p))
                .map(|(id, _)| id.clone())
                .collect();
            for id in changed {
                let n = wanted
                    .get(&id)
                    .map_or(0, |p| self.engine.expansion(p, &locals));
                if n <= budget {
                    continue;
                }
                let name = id.to_string();
                self.rejected.push(Rejected {
                    policy: name.clone(),
                    reason: REASON_TOO_LARGE.to_string(),
                    message: format!(
                        "expands to {n} policy map entries on this node, over the per-policy budget of {budget} (--policy-max-entries-per-policy); {}",
                        if self.policies.contains_key(&id) {
                            "its last accepted version stays enforced"
                        } else {
                            "not enforced"
                        }
                    ),
                });
                over_budget.insert(name, n);
                match self.policies.get(&id) {
                    Some(old) => {
                        wanted.insert(id, old.clone());
                    }
                    None => {
                        wanted.remove(&id);
                    }
                }
            }
        }
        self.fresh_over_budget = over_budget
            .iter()
            .filter(|(p, n)| self.over_budget.get(*p) != Some(*n))
            .map(|(p, n)| (p.clone(), *n))
            .collect();
        self.over_budget = over_budget;
        for (id, p) in wanted.iter() {
            report.enforced.push(id.to_string());
            // An unchanged policy costs nothing: only changes reach the engine.
            if self.policies.get(id) != Some(p) {
                diffs.push(self.engine.upsert_policy(p.clone()));
            }
        }
        let gone: Vec<PolicyRef> = self
            .policies
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in &gone {
            diffs.push(self.engine.remove_policy(id));
        }
        self.policies = wanted;

        // Endpoints: cluster pods, local pods, nodes (this one and the others).
        for (ip, id) in &pods {
            if self.pods.get(ip) != Some(id) {
                diffs.push(self.engine.upsert_pod(*ip, *id));
            }
        }
        for ip in self.pods.keys().filter(|ip| !pods.contains_key(ip)) {
            diffs.push(self.engine.remove_pod(*ip));
        }
        let local_ids: BTreeSet<u32> = local
            .iter()
            .filter_map(|ip| pods.get(ip))
            .copied()
            .collect();
        for id in local_ids.difference(&self.engine.local_identities().clone()) {
            diffs.push(self.engine.add_local_identity(*id));
        }
        for id in self
            .engine
            .local_identities()
            .clone()
            .difference(&local_ids)
        {
            diffs.push(self.engine.remove_local_identity(*id));
        }
        let nodes: BTreeSet<Ipv4Addr> = snap.nodes.iter().copied().collect();
        for ip in nodes.difference(&self.nodes) {
            diffs.push(self.engine.upsert_node(*ip));
        }
        for ip in self.nodes.difference(&nodes) {
            diffs.push(self.engine.remove_node(*ip));
        }
        self.nodes = nodes;
        let host: BTreeSet<Ipv4Addr> = snap.host.iter().copied().collect();
        for ip in host.difference(&self.host) {
            diffs.push(self.engine.upsert_host(*ip));
        }
        for ip in self.host.difference(&host) {
            diffs.push(self.engine.remove_host(*ip));
        }
        self.host = host;
        self.pods = pods;

        // Identities no pod uses any more leave last, after their entries.
        for id in self.identities_in_engine.clone().difference(&used) {
            diffs.push(self.engine.remove_identity(*id));
        }
        // Bindings nobody gives and no pod uses go (a SextantIdentity
        // deleted, a label set gone): the map follows the cluster's size.
        self.bound
            .retain(|id, _| used.contains(id) || snap.identities.contains_key(id));
        let bound = &self.bound;
        self.by_labels.retain(|_, id| bound.contains_key(id));
        self.identities_in_engine = used;
        self.pod_identity = pod_identity;

        diffs.retain(|d| !d.is_empty());
        report.changes = diffs.iter().map(MapDiff::len).sum();
        report.rejected = self.rejected.clone();
        report.identities = self.pod_identity.clone();
        report.policy_entries = self.engine.contents().policy.len();
        (diffs, report)
    }

    /// Identities pods use that `given` (the cluster's `SextantIdentity`
    /// objects) does not bind yet: this node chose them and must publish them.
    pub fn unpublished(
        &self,
        given: &BTreeMap<u32, BTreeMap<String, String>>,
    ) -> Vec<(u32, BTreeMap<String, String>)> {
        self.identities_in_engine
            .iter()
            .filter(|id| !given.contains_key(id))
            .filter_map(|id| Some((*id, self.bound.get(id)?.as_map().clone())))
            .collect()
    }

    /// Entries in the per-object maps (identity bindings, parsed policy
    /// documents, policies, pods): what [`NodePolicy::sync`] must bring back
    /// down when objects are deleted.
    pub fn footprint(&self) -> usize {
        self.bound.len()
            + self.by_labels.len()
            + self.parsed.len()
            + self.policies.len()
            + self.pod_identity.len()
            + self.pods.len()
            + self.identities_in_engine.len()
    }

    /// Binds `id` to `labels`, replacing what `id` meant before.
    fn bind(&mut self, id: u32, labels: Labels) {
        if let Some(old) = self.bound.insert(id, labels.clone())
            && old != labels
            && self.by_labels.get(&old) == Some(&id)
        {
            self.by_labels.remove(&old);
        }
        self.by_labels.entry(labels).or_insert(id);
    }

    fn identity_for(&mut self, labels: &Labels) -> Option<u32> {
        if let Some(id) = self.by_labels.get(labels) {
            return Some(*id);
        }
        let id = sextant_policy::allocate(labels, &self.bound)?;
        self.bind(id, labels.clone());
        Some(id)
    }
}

fn doc_name(doc: &serde_json::Value) -> Option<String> {
    let kind = doc.get("kind")?.as_str()?;
    let meta = doc.get("metadata")?;
    let name = meta.get("name")?.as_str()?;
    let ns = meta
        .get("namespace")
        .and_then(|n| n.as_str())
        .unwrap_or("default");
    Some(format!("{kind}/{ns}/{name}"))
}

fn entry(k: &sextant_policy::PolicyKey) -> PolicyEntry {
    PolicyEntry {
        local: k.local_identity,
        remote: k.remote_identity,
        egress: k.direction == Direction::Egress,
        proto: k.proto,
        port: k.port,
        port_prefix: k.port_prefix,
    }
}

/// Writes one diff into the maps in the order that never drops an allowed
/// packet: ipcache and allow entries in, enforcement changed, then allow
/// entries and ipcache out. Returns the entries touched.
pub fn write_diff(dp: &mut Datapath, d: &MapDiff) -> Result<usize> {
    for ((addr, len), id) in &d.ipcache_upserts {
        dp.upsert_ipcache(*addr, *len, *id)?;
    }
    for (k, v) in &d.policy_upserts {
        dp.upsert_policy(&entry(k), v.policy_index)?;
    }
    for (id, bits) in &d.enforced_upserts {
        dp.set_enforced(*id, u32::from(*bits))?;
    }
    for id in &d.enforced_deletes {
        dp.set_enforced(*id, 0)?;
    }
    for k in &d.policy_deletes {
        dp.remove_policy(&entry(k))?;
    }
    for (addr, len) in &d.ipcache_deletes {
        dp.remove_ipcache(*addr, *len)?;
    }
    Ok(d.len())
}

/// Reconciles every policy map with the engine: loads the whole of its
/// contents, then removes what the maps hold beyond it (after an agent
/// restart the pinned maps may hold entries of policies, identities and pods
/// deleted while no agent ran; after a failed write, entries a lost diff
/// should have removed). In the order that never drops an allowed packet:
/// ipcache and allow entries in, enforcement set, stale enforcement out,
/// stale allow entries and ipcache out. Returns the stale entries removed.
pub fn write_all(dp: &mut Datapath, engine: &PolicyEngine) -> Result<usize> {
    let c = engine.contents();
    for ((addr, len), id) in &c.ipcache {
        dp.upsert_ipcache(*addr, *len, *id)?;
    }
    for (k, v) in &c.policy {
        dp.upsert_policy(&entry(k), v.policy_index)?;
    }
    for (id, bits) in &c.enforced {
        dp.set_enforced(*id, u32::from(*bits))?;
    }
    let mut removed = 0;
    for (id, _) in dp.enforced() {
        if !c.enforced.contains_key(&id) {
            dp.set_enforced(id, 0)?;
            removed += 1;
        }
    }
    let keep: Vec<PolicyEntry> = c.policy.keys().map(entry).collect();
    removed += dp.retain_policy(&keep)?;
    removed += dp.retain_ipcache(&c.ipcache.keys().copied().collect())?;
    removed += dp.retain_verdicts(&c.policy_names.keys().copied().collect())?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, app: &str, ip: [u8; 4]) -> PodInfo {
        PodInfo {
            namespace: ns.into(),
            name: name.into(),
            labels: [("app".to_string(), app.to_string())].into(),
            ip: Some(Ipv4Addr::from(ip)),
        }
    }

    fn protected_db() -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "sextant.io/v1alpha1",
            "kind": "SextantNetworkPolicy",
            "metadata": {"name": "db", "namespace": "prod"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "protected-db"}},
                "ingress": [{
                    "fromEndpoints": [{"matchLabels": {"app": "employee"}}],
                    "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]
                }]
            }
        })
    }

    #[test]
    fn snapshot_sync_enforces_only_what_the_policy_says_and_reports_refusals() {
        let mut np = NodePolicy::default();
        let l7 = serde_json::json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
            "metadata": {"name": "l7", "namespace": "prod"},
            "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": "80"}],
                "rules": {"http": [{"method": "GET"}]}}]}]}
        });
        let snap = PolicySnapshot {
            policies: vec![protected_db(), l7],
            pods: vec![
                pod("prod", "db-0", "protected-db", [10, 1, 0, 2]),
                pod("prod", "emp", "employee", [10, 1, 0, 3]),
                pod("prod", "other", "visitor", [10, 1, 0, 4]),
            ],
            nodes: vec![Ipv4Addr::new(192, 168, 0, 1)],
            ..Default::default()
        };
        let local: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 1, 0, 2)].into();
        let (diffs, report) = np.sync(&snap, &local);
        assert!(!diffs.is_empty());
        assert_eq!(
            report.enforced,
            vec!["SextantNetworkPolicy/prod/db".to_string()]
        );
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        assert_eq!(report.rejected[0].reason, "Unsupported");
        assert!(report.rejected[0].message.contains("rules"), "{report:?}");
        let c = np.engine().contents();
        let db = report.identities["prod/db-0"];
        let emp = report.identities["prod/emp"];
        let other = report.identities["prod/other"];
        assert!(c.verdict(db, Direction::Ingress, 6, emp, 6379).is_some());
        assert!(c.verdict(db, Direction::Ingress, 6, emp, 6380).is_none());
        assert!(c.verdict(db, Direction::Ingress, 6, other, 6379).is_none());
        assert!(
            c.verdict(db, Direction::Egress, 6, other, 80).is_some(),
            "egress not selected"
        );

        // The same snapshot again changes nothing.
        let (diffs, report) = np.sync(&snap, &local);
        assert!(diffs.is_empty(), "{diffs:?}");
        assert_eq!(report.changes, 0);

        // Dropping the policy lifts enforcement.
        let (diffs, _) = np.sync(
            &PolicySnapshot {
                policies: vec![],
                ..snap.clone()
            },
            &local,
        );
        assert!(!diffs.is_empty());
        assert!(np.engine().contents().enforced.is_empty());
    }

    #[test]
    fn a_policy_can_select_peers_by_service_account() {
        let mut np = NodePolicy::default();
        let sa = sextant_policy::SERVICE_ACCOUNT_LABEL;
        let mut front = pod("prod", "front", "web", [10, 1, 0, 3]);
        front.labels.insert(sa.into(), "frontend".into());
        let mut other = pod("prod", "other", "web", [10, 1, 0, 4]);
        other.labels.insert(sa.into(), "default".into());
        let policy = serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "db-sa", "namespace": "prod"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": "protected-db"}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {sa: "frontend"}}]}]
            }
        });
        let snap = PolicySnapshot {
            policies: vec![policy],
            pods: vec![
                pod("prod", "db-0", "protected-db", [10, 1, 0, 2]),
                front,
                other,
            ],
            ..Default::default()
        };
        let (_, report) = np.sync(&snap, &[Ipv4Addr::new(10, 1, 0, 2)].into());
        assert!(report.rejected.is_empty(), "{report:?}");
        let c = np.engine().contents();
        let db = report.identities["prod/db-0"];
        assert!(
            c.verdict(
                db,
                Direction::Ingress,
                6,
                report.identities["prod/front"],
                5432
            )
            .is_some()
        );
        assert!(
            c.verdict(
                db,
                Direction::Ingress,
                6,
                report.identities["prod/other"],
                5432
            )
            .is_none()
        );
    }

    #[test]
    fn pods_with_equal_labels_share_one_identity_and_given_identities_win() {
        let mut np = NodePolicy::default();
        let snap = PolicySnapshot {
            pods: vec![
                pod("a", "x-0", "x", [10, 0, 0, 1]),
                pod("a", "x-1", "x", [10, 0, 0, 2]),
                pod("b", "x-0", "x", [10, 0, 0, 3]),
            ],
            identities: [(
                4242,
                Labels::for_pod("b", &[("app".into(), "x".into())].into(), &BTreeMap::new())
                    .as_map()
                    .clone(),
            )]
            .into(),
            ..Default::default()
        };
        let (_, report) = np.sync(&snap, &BTreeSet::new());
        assert_eq!(report.identities["a/x-0"], report.identities["a/x-1"]);
        assert_ne!(report.identities["a/x-0"], report.identities["b/x-0"]);
        assert_eq!(report.identities["b/x-0"], 4242);
    }

    fn policy_for(app: &str) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "sextant.io/v1alpha1",
            "kind": "SextantNetworkPolicy",
            "metadata": {"name": app, "namespace": "prod"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": app}},
                "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "employee"}}]}]
            }
        })
    }

    #[test]
    fn ten_thousand_policies_created_and_deleted_leave_the_maps_at_their_size() {
        let mut np = NodePolicy::default();
        let base = PolicySnapshot {
            policies: vec![protected_db()],
            pods: vec![pod("prod", "db-0", "protected-db", [10, 1, 0, 2])],
            ..Default::default()
        };
        let local: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 1, 0, 2)].into();
        np.sync(&base, &local);
        let (footprint, bound) = (np.footprint(), np.bound.len());

        // 10,000 policies, each selecting pods of its own label set, and a
        // SextantIdentity given for a label set no pod has.
        let n = 10_000u32;
        let mut big = base.clone();
        for i in 0..n {
            let app = format!("app-{i}");
            big.policies.push(policy_for(&app));
            let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 2, 0, 0)) + i);
            big.pods
                .push(pod("prod", &format!("p-{i}"), &app, ip.octets()));
        }
        big.identities
            .insert(4242, [("app".to_string(), "gone".to_string())].into());
        let (_, report) = np.sync(&big, &local);
        assert_eq!(report.enforced.len(), n as usize + 1);
        assert!(np.bound.len() > n as usize, "{}", np.bound.len());

        // Everything deleted again: the maps are back to where they started
        // (before, every label set ever seen stayed bound).
        let (_, report) = np.sync(&base, &local);
        assert_eq!(report.enforced.len(), 1);
        assert_eq!(np.bound.len(), bound, "identity bindings");
        assert_eq!(np.by_labels.len(), bound, "label index");
        assert_eq!(np.footprint(), footprint, "per-object maps");
    }

    #[test]
    fn an_unchanged_policy_document_is_not_parsed_again_and_a_changed_one_is() {
        let mut np = NodePolicy::default();
        let snap = PolicySnapshot {
            policies: vec![protected_db()],
            ..Default::default()
        };
        np.sync(&snap, &BTreeSet::new());
        let first = np.parsed["SextantNetworkPolicy/prod/db"].clone();
        np.sync(&snap, &BTreeSet::new());
        assert_eq!(np.parsed["SextantNetworkPolicy/prod/db"].0, first.0);
        let mut changed = protected_db();
        changed["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "6380".into();
        let (_, report) = np.sync(
            &PolicySnapshot {
                policies: vec![changed.clone()],
                ..Default::default()
            },
            &BTreeSet::new(),
        );
        assert_eq!(report.enforced.len(), 1);
        assert_eq!(np.parsed["SextantNetworkPolicy/prod/db"].0, changed);
        assert_ne!(np.parsed["SextantNetworkPolicy/prod/db"].1, first.1);
    }

    fn ports_policy(name: &str, app: &str, ports: std::ops::Range<u16>) -> serde_json::Value {
        let ports: Vec<serde_json::Value> = ports
            .map(|p| serde_json::json!({"port": p.to_string(), "protocol": "TCP"}))
            .collect();
        serde_json::json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": name, "namespace": "prod"},
            "spec": {
                "endpointSelector": {"matchLabels": {"app": app}},
                "ingress": [{"toPorts": [{"ports": ports}]}]
            }
        })
    }

    #[test]
    fn a_policy_past_the_entry_budget_is_refused_and_keeps_its_last_accepted_version() {
        let mut np = NodePolicy::default();
        np.set_entry_budget(50);
        let pods = vec![
            pod("prod", "db-0", "protected-db", [10, 1, 0, 2]),
            pod("prod", "emp", "employee", [10, 1, 0, 3]),
            pod("prod", "web", "web", [10, 1, 0, 4]),
        ];
        let local: BTreeSet<Ipv4Addr> = [[10, 1, 0, 2], [10, 1, 0, 3], [10, 1, 0, 4]]
            .map(Ipv4Addr::from)
            .into();
        let snap = |policies| PolicySnapshot {
            policies,
            pods: pods.clone(),
            ..Default::default()
        };
        // 60 single ports: 60 entries, over 50; the small policies fit.
        let (_, report) = np.sync(
            &snap(vec![
                protected_db(),
                ports_policy("web", "web", 8000..8010),
                ports_policy("huge", "employee", 1000..1060),
            ]),
            &local,
        );
        assert_eq!(report.rejected.len(), 1, "{report:?}");
        let r = &report.rejected[0];
        assert_eq!(r.policy, "SextantNetworkPolicy/prod/huge");
        assert_eq!(r.reason, REASON_TOO_LARGE);
        assert!(r.message.contains("60 policy map entries"), "{}", r.message);
        assert_eq!(report.enforced.len(), 2, "the others are enforced");
        assert_eq!(
            np.newly_over_budget(),
            &[("SextantNetworkPolicy/prod/huge".to_string(), 60)]
        );
        let c = np.engine().contents();
        let emp = report.identities["prod/emp"];
        let web = report.identities["prod/web"];
        assert!(
            !c.enforced.contains_key(&emp),
            "the refused policy is not applied"
        );
        assert!(c.verdict(web, Direction::Ingress, 6, emp, 8005).is_some());
        assert!(c.verdict(web, Direction::Ingress, 6, emp, 8015).is_none());

        // Shrunk under the budget it is applied; grown again, the accepted
        // version stays and the Event is not repeated for the same size.
        np.sync(
            &snap(vec![
                protected_db(),
                ports_policy("huge", "employee", 1000..1005),
            ]),
            &local,
        );
        assert!(
            np.engine()
                .contents()
                .verdict(emp, Direction::Ingress, 6, web, 1004)
                .is_some()
        );
        let grown = snap(vec![
            protected_db(),
            ports_policy("huge", "employee", 1000..1100),
        ]);
        let (_, report) = np.sync(&grown, &local);
        assert!(
            report.rejected[0]
                .message
                .contains("last accepted version stays")
        );
        assert_eq!(np.newly_over_budget().len(), 1);
        let c = np.engine().contents();
        assert!(c.verdict(emp, Direction::Ingress, 6, web, 1004).is_some());
        assert!(c.verdict(emp, Direction::Ingress, 6, web, 1050).is_none());
        np.sync(&grown, &local);
        assert!(np.newly_over_budget().is_empty(), "one Event per refusal");
        assert_eq!(np.over_budget(), 1);
    }
}
