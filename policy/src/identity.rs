//! Security identities: numbers standing for label sets, which is what the
//! datapath's policy map is keyed by.
//!
//! ```text
//!  0                      any peer (wildcard in policy keys only)
//!  1                      host (this node's own addresses only)
//!  2                      world (0.0.0.0/0, outside everything else)
//!  6                      remote-node (every other node's InternalIPs)
//!  3 ..= 255              reserved (numbers as Cilium's: 4 health, 7 kube-apiserver)
//!  256 .. 0x0100_0000     cluster identities, one per pod label set (SextantIdentity objects)
//!  0x0100_0000 ..         node-local CIDR identities, one per CIDR a policy names
//! ```
//!
//! Cluster identities are agreed on through the API server: every node
//! starts probing at the same number (a hash of the canonical labels) and
//! creates `SextantIdentity/<number>` only if absent. `AlreadyExists` with
//! the same labels means "use it"; with other labels, "try the next
//! candidate". The API server serializes creates, so a number is bound to
//! one label set cluster-wide, whichever node got there first.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::Ipv4Addr,
    str::FromStr,
};

use crate::labels::Labels;

/// Wildcard peer in policy keys: any identity.
pub const IDENTITY_ANY: u32 = 0;
/// This node itself: its own addresses only. The datapath lets it reach
/// local pods whatever their ingress policy (kubelet probes).
pub const IDENTITY_HOST: u32 = 1;
/// Every other node's addresses (Cilium's `remote-node`): subject to policy
/// like any peer, allowed only by `fromEntities: [remote-node]` / `cluster`.
pub const IDENTITY_REMOTE_NODE: u32 = 6;
/// Anything outside the cluster not covered by a CIDR identity.
pub const IDENTITY_WORLD: u32 = 2;
/// First cluster identity number.
pub const CLUSTER_IDENTITY_MIN: u32 = 256;
/// First node-local CIDR identity number; cluster identities stay below it.
pub const CIDR_IDENTITY_MIN: u32 = 0x0100_0000;
/// Last node-local CIDR identity number.
pub const CIDR_IDENTITY_MAX: u32 = 0x01ff_ffff;

/// Whether `id` is a cluster identity (a pod label set).
pub fn is_cluster_identity(id: u32) -> bool {
    (CLUSTER_IDENTITY_MIN..CIDR_IDENTITY_MIN).contains(&id)
}

/// Whether `id` is a node-local CIDR identity.
pub fn is_cidr_identity(id: u32) -> bool {
    (CIDR_IDENTITY_MIN..=CIDR_IDENTITY_MAX).contains(&id)
}

/// The cluster identity numbers to try for `labels`, in order: a start
/// derived from the labels' fingerprint, then linear probing through the
/// whole cluster range (wrapping). Every node computes the same sequence.
pub fn candidates(labels: &Labels) -> impl Iterator<Item = u32> {
    let span = u64::from(CIDR_IDENTITY_MIN - CLUSTER_IDENTITY_MIN);
    let start = labels.fingerprint() % span;
    (0..span).map(move |i| {
        // Both terms are below 2^24, so the sum and the cast are exact.
        CLUSTER_IDENTITY_MIN + ((start + i) % span) as u32
    })
}

/// The identity `labels` get given the identities already bound (`taken`):
/// the number already bound to the same labels, else the first free
/// candidate. `None` only when all 16.7M cluster numbers are bound.
///
/// This is the pure half of allocation: the caller then creates
/// `SextantIdentity/<number>` if absent; on `AlreadyExists` it adds the
/// winner to `taken` and calls again, which yields the next candidate.
pub fn allocate(labels: &Labels, taken: &BTreeMap<u32, Labels>) -> Option<u32> {
    candidates(labels).find(|id| taken.get(id).is_none_or(|l| l == labels))
}

/// An IPv4 prefix with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub len: u8,
}

impl Prefix {
    /// The whole IPv4 space, the world identity's prefix.
    pub const ALL: Prefix = Prefix {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };

    /// `addr/len` with host bits cleared; `len` is capped at 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        }
    }

    /// A single address.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Prefix) -> bool {
        other.len >= self.len && u32::from(other.addr) & mask(self.len) == u32::from(self.addr)
    }

    /// As the ipcache key `(address, prefix length)`.
    pub fn key(&self) -> (Ipv4Addr, u8) {
        (self.addr, self.len)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a string is not an IPv4 prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PrefixError {
    /// An IPv6 prefix; the datapath is IPv4 only.
    Ipv6,
    /// Not an address or prefix at all.
    Malformed,
}

impl FromStr for Prefix {
    type Err = PrefixError;

    /// `a.b.c.d/len` (host bits are cleared) or a bare address (`/32`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            return Err(PrefixError::Ipv6);
        }
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, l.parse::<u8>().map_err(|_| PrefixError::Malformed)?),
            None => (s, 32),
        };
        if len > 32 {
            return Err(PrefixError::Malformed);
        }
        let addr: Ipv4Addr = addr.parse().map_err(|_| PrefixError::Malformed)?;
        Ok(Prefix::new(addr, len))
    }
}

/// Prefixes that gained (first) and lost (second) their CIDR identity in a `sync`.
pub type CidrChanges = (Vec<(Prefix, u32)>, Vec<(Prefix, u32)>);

/// Node-local identities for the CIDRs policies name. A prefix keeps its
/// number for as long as some policy names it; new prefixes take numbers
/// never handed out before (until the range wraps), so a number freed a
/// moment ago does not come back while stale flows may still carry it.
#[derive(Clone, Debug)]
pub struct CidrIdentities {
    by_prefix: BTreeMap<Prefix, u32>,
    in_use: BTreeSet<u32>,
    next: u32,
}

impl Default for CidrIdentities {
    fn default() -> Self {
        Self {
            by_prefix: BTreeMap::new(),
            in_use: BTreeSet::new(),
            next: CIDR_IDENTITY_MIN,
        }
    }
}

impl CidrIdentities {
    /// Makes the set of prefixes with an identity exactly `wanted` (the
    /// world prefix `0.0.0.0/0` never gets one: it is identity 2). Returns
    /// what was added and removed.
    pub fn sync(&mut self, wanted: &BTreeSet<Prefix>) -> CidrChanges {
        let removed: Vec<(Prefix, u32)> = self
            .by_prefix
            .iter()
            .filter(|(p, _)| !wanted.contains(p))
            .map(|(p, id)| (*p, *id))
            .collect();
        for (p, id) in &removed {
            self.by_prefix.remove(p);
            self.in_use.remove(id);
        }
        let mut added = Vec::new();
        for p in wanted {
            if *p == Prefix::ALL || self.by_prefix.contains_key(p) {
                continue;
            }
            if let Some(id) = self.take_number() {
                self.by_prefix.insert(*p, id);
                added.push((*p, id));
            }
        }
        (added, removed)
    }

    fn take_number(&mut self) -> Option<u32> {
        let span = CIDR_IDENTITY_MAX - CIDR_IDENTITY_MIN + 1;
        for _ in 0..span {
            let id = self.next;
            self.next = if id >= CIDR_IDENTITY_MAX {
                CIDR_IDENTITY_MIN
            } else {
                id + 1
            };
            if self.in_use.insert(id) {
                return Some(id);
            }
        }
        None
    }

    /// The identity of `prefix`, if some policy names it.
    pub fn get(&self, prefix: &Prefix) -> Option<u32> {
        self.by_prefix.get(prefix).copied()
    }

    /// Every prefix and its identity.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix, u32)> + '_ {
        self.by_prefix.iter().map(|(p, id)| (*p, *id))
    }

    /// The identities with their labels (`sextant.io/cidr=<prefix>`), as `compute` takes them.
    pub fn identities(&self) -> BTreeMap<u32, Labels> {
        self.iter().map(|(p, id)| (id, Labels::cidr(p))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn same_labels_get_the_same_number_on_every_node() {
        let db = labels(&[("app", "db"), ("io.kubernetes.pod.namespace", "prod")]);
        let a = allocate(&db, &BTreeMap::new()).unwrap();
        let b = allocate(&db.clone(), &BTreeMap::new()).unwrap();
        assert_eq!(a, b);
        assert!(is_cluster_identity(a));
        // Once bound, it is found again even with other bindings around.
        let taken = BTreeMap::from([(a, db.clone()), (a + 1, labels(&[("x", "y")]))]);
        assert_eq!(allocate(&db, &taken), Some(a));
    }

    #[test]
    fn a_number_taken_by_other_labels_probes_the_next_candidate() {
        let db = labels(&[("app", "db")]);
        let first = allocate(&db, &BTreeMap::new()).unwrap();
        let taken = BTreeMap::from([(first, labels(&[("app", "web")]))]);
        let second = allocate(&db, &taken).unwrap();
        assert_ne!(first, second);
        assert_eq!(candidates(&db).nth(1), Some(second));
    }

    #[test]
    fn cidr_identities_stay_stable_as_other_cidrs_come_and_go() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let mut c = CidrIdentities::default();
        c.sync(&BTreeSet::from([p("10.0.0.0/8"), p("0.0.0.0/0")]));
        let ten = c.get(&p("10.0.0.0/8")).unwrap();
        assert!(is_cidr_identity(ten));
        assert_eq!(c.get(&Prefix::ALL), None, "world is identity 2");
        let (added, removed) = c.sync(&BTreeSet::from([p("10.0.0.0/8"), p("192.168.0.0/16")]));
        assert_eq!(added.len(), 1);
        assert!(removed.is_empty());
        assert_eq!(c.get(&p("10.0.0.0/8")), Some(ten));
        let (_, removed) = c.sync(&BTreeSet::from([p("192.168.0.0/16")]));
        assert_eq!(removed, vec![(p("10.0.0.0/8"), ten)]);
        c.sync(&BTreeSet::from([p("192.168.0.0/16"), p("10.0.0.0/8")]));
        assert_ne!(
            c.get(&p("10.0.0.0/8")),
            Some(ten),
            "freed numbers are not reused at once"
        );
    }

    #[test]
    fn prefixes_parse_clear_host_bits_and_nest() {
        let p: Prefix = "10.1.2.3/8".parse().unwrap();
        assert_eq!(p.to_string(), "10.0.0.0/8");
        assert!(p.contains(&"10.200.0.0/16".parse().unwrap()));
        assert!(!p.contains(&"11.0.0.0/16".parse().unwrap()));
        assert!(Prefix::ALL.contains(&p));
        assert_eq!("1.2.3.4".parse::<Prefix>().unwrap().len, 32);
        assert_eq!("fd00::/8".parse::<Prefix>(), Err(PrefixError::Ipv6));
        assert_eq!("1.2.3.4/33".parse::<Prefix>(), Err(PrefixError::Malformed));
    }
}
