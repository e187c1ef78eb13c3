//! Identity labels and the selectors that match them, with Cilium's
//! conventions: a pod's identity labels are its own labels plus its
//! namespace (`io.kubernetes.pod.namespace`) and its namespace's labels
//! (`io.cilium.k8s.namespace.labels.<key>`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use sextant_crds::wellknown::LABEL_CIDR;

use crate::identity::Prefix;

/// Identity label carrying the pod's namespace.
pub const POD_NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Prefix of identity labels carrying the namespace's own labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The identity label carrying a pod's service account (Cilium's key).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";

/// A pod's own labels as policy sees them: its labels plus its service
/// account under [`SERVICE_ACCOUNT_LABEL`] (agent and operator agree on it).
pub fn pod_labels(
    labels: Option<&BTreeMap<String, String>>,
    service_account: Option<&str>,
) -> BTreeMap<String, String> {
    let mut out = labels.cloned().unwrap_or_default();
    if let Some(sa) = service_account {
        out.insert(SERVICE_ACCOUNT_LABEL.to_owned(), sa.to_owned());
    }
    out
}

/// Pod labels that never take part in an identity: they differ per pod or per
/// rollout, and would give every pod its own identity (Cilium drops them too).
pub const IGNORED_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
];

/// A canonical identity label set: sorted, one value per key. Two endpoints
/// with equal `Labels` share one security identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Labels as given.
    pub fn new(labels: BTreeMap<String, String>) -> Self {
        Self(labels)
    }

    /// The identity labels of a pod in `namespace` whose namespace carries `namespace_labels`.
    pub fn for_pod(
        namespace: &str,
        pod_labels: &BTreeMap<String, String>,
        namespace_labels: &BTreeMap<String, String>,
    ) -> Self {
        let mut out: BTreeMap<String, String> = pod_labels
            .iter()
            .filter(|(k, _)| !IGNORED_POD_LABELS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, v) in namespace_labels {
            out.insert(format!("{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        out.insert(POD_NAMESPACE_LABEL.to_owned(), namespace.to_owned());
        Self(out)
    }

    /// The labels of the node-local identity standing for `prefix`.
    pub fn cidr(prefix: Prefix) -> Self {
        Self(BTreeMap::from([(
            LABEL_CIDR.to_owned(),
            prefix.to_string(),
        )]))
    }

    /// The prefix a CIDR identity's labels stand for.
    pub fn cidr_prefix(&self) -> Option<Prefix> {
        if self.0.len() != 1 {
            return None;
        }
        self.0.get(LABEL_CIDR)?.parse().ok()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The labels as a map (what a `SextantIdentity` stores).
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// A stable 64-bit FNV-1a hash of the canonical form (`k=v\n` per label,
    /// sorted): the same on every node and every build, which is what makes
    /// every node try the same identity numbers first.
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (k, v) in &self.0 {
            eat(k.as_bytes());
            eat(b"=");
            eat(v.as_bytes());
            eat(b"\n");
        }
        h
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        write!(f, "{{{}}}", parts.join(","))
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// A label selector over identity labels: all requirements must hold; no
/// requirement selects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Selector {
    /// Requirements, AND-ed.
    pub requirements: Vec<Requirement>,
}

/// One requirement on one label key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Requirement {
    /// Label key, without any `k8s:`/`any:` source prefix.
    pub key: String,
    /// What the key's value must be.
    pub op: Operator,
}

/// Kubernetes label selector operators.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operator {
    /// Present with one of these values.
    In(BTreeSet<String>),
    /// Absent, or present with none of these values.
    NotIn(BTreeSet<String>),
    /// Present.
    Exists,
    /// Absent.
    DoesNotExist,
}

impl Selector {
    /// The selector that selects everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// `key` must equal `value`.
    pub fn with(mut self, key: &str, value: &str) -> Self {
        self.requirements.push(Requirement {
            key: key.to_owned(),
            op: Operator::In(BTreeSet::from([value.to_owned()])),
        });
        self
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.requirements.iter().all(|r| {
            let value = labels.get(&r.key);
            match &r.op {
                Operator::In(set) => value.is_some_and(|v| set.contains(v)),
                Operator::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                Operator::Exists => value.is_some(),
                Operator::DoesNotExist => value.is_none(),
            }
        })
    }

    /// Whether some requirement is about `key`.
    pub fn names_key(&self, key: &str) -> bool {
        self.requirements.iter().any(|r| r.key == key)
    }
}
