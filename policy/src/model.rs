//! The normalized policy every source (SextantNetworkPolicy,
//! CiliumNetworkPolicy, Kubernetes NetworkPolicy) is parsed into, and the
//! only thing `compute` reads.

use std::fmt;

use crate::{identity::Prefix, labels::Selector};

/// Which API a policy came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    /// `sextant.io/v1alpha1` SextantNetworkPolicy (the CiliumNetworkPolicy shape).
    SextantNetworkPolicy,
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PolicyKind::SextantNetworkPolicy => "SextantNetworkPolicy",
            PolicyKind::NetworkPolicy => "NetworkPolicy",
        })
    }
}

/// Names one policy object; shown as `kind/namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// Source API.
    pub kind: PolicyKind,
    /// Namespace of the object.
    pub namespace: String,
    /// Name of the object.
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
    }
}

/// One policy object, normalized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The object it came from.
    pub id: PolicyRef,
    /// Its rules (a CiliumNetworkPolicy's `spec` and `specs`; one for a NetworkPolicy).
    pub specs: Vec<PolicySpec>,
}

/// The part of a policy that applies to one set of local endpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// The local endpoints this applies to (namespace already folded in).
    pub subject: Selector,
    /// `Some`: the subject is default-deny for ingress and these rules allow
    /// (an empty list allows nothing). `None`: no say on ingress.
    pub ingress: Option<Vec<Rule>>,
    /// Same for egress.
    pub egress: Option<Vec<Rule>>,
}

/// One allow rule: traffic from (ingress) or to (egress) any of `peers` on any of `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// The remote side.
    pub peers: Peers,
    /// `None`: every protocol and port. `Some`: only these.
    pub ports: Option<Vec<PortRange>>,
}

/// The remote side of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Every peer, in or outside the cluster (remote identity 0).
    Any,
    /// Any of these.
    Only(Vec<Peer>),
}

/// One kind of remote peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Cluster endpoints whose identity labels match.
    Endpoints(Selector),
    /// Addresses in `cidr` but in none of `except` (pods' own addresses stay
    /// pods: the ipcache's longest prefix gives them their pod identity).
    Cidr {
        /// The range.
        cidr: Prefix,
        /// Holes in it.
        except: Vec<Prefix>,
    },
    /// A well-known group.
    Entity(Entity),
}

/// Cilium entities Sextant enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Entity {
    /// Everything (remote identity 0).
    All,
    /// Outside the cluster: identity 2 and every CIDR identity.
    World,
    /// Every cluster endpoint, the host and the other nodes.
    Cluster,
    /// This node (identity 1).
    Host,
    /// The other nodes of the cluster (identity 6).
    RemoteNode,
}

/// A protocol and an inclusive port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRange {
    /// IP protocol number (6 TCP, 17 UDP, 132 SCTP); never 0.
    pub proto: u8,
    /// First port.
    pub first: u16,
    /// Last port, `>= first`; `0..=65535` is every port.
    pub last: u16,
}

/// IP protocol number of TCP.
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of SCTP.
pub const PROTO_SCTP: u8 = 132;

impl Policy {
    /// Every CIDR (and except) the policy names: what needs a CIDR identity.
    pub fn cidrs(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.rules().flat_map(|r| match &r.peers {
            Peers::Any => Vec::new(),
            Peers::Only(peers) => peers
                .iter()
                .flat_map(|p| match p {
                    Peer::Cidr { cidr, except } => std::iter::once(*cidr)
                        .chain(except.iter().copied())
                        .collect(),
                    _ => Vec::new(),
                })
                .collect(),
        })
    }

    /// Every rule of every spec, both directions.
    pub fn rules(&self) -> impl Iterator<Item = &Rule> + '_ {
        self.specs
            .iter()
            .flat_map(|s| s.ingress.iter().flatten().chain(s.egress.iter().flatten()))
    }
}
