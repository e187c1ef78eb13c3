//! The JSON bodies of the agent API, one type per body, shared by the agent
//! that serves them and every client that reads them.
//!
//! Readers are lenient where an older or newer agent may differ: missing
//! numbers read as 0 and an unknown `state` as [`AgentState::Unknown`], so a
//! device plugin of one release reads the agent of the next.

use std::{fmt, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

/// The agent's `state` in `GET /v1/healthz`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    /// Serving with final counts.
    Ready,
    /// Reading its checkpoint: counts are not final.
    Restoring,
    /// Serving with reduced function (datapath failed to load); counts are
    /// still the truth.
    Degraded,
    /// A state this build does not know (or none): counts taken as given.
    /// An agent never sends it.
    #[default]
    #[serde(other)]
    Unknown,
}

impl AgentState {
    /// The wire spelling (`ready`, `restoring`, `degraded`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Ready => "ready",
            AgentState::Restoring => "restoring",
            AgentState::Degraded => "degraded",
            AgentState::Unknown => "unknown",
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `GET /v1/healthz`; unknown fields are ignored, missing ones read as
/// their defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Health {
    /// `ready`, `restoring` or `degraded`.
    pub state: AgentState,
    /// Pool counts.
    pub ipam: IpamHealth,
    /// Datapath state.
    pub datapath: DatapathHealth,
}

impl Health {
    /// Whether counts are not final yet.
    pub fn is_restoring(&self) -> bool {
        self.state == AgentState::Restoring
    }
}

/// `ipam` of `GET /v1/healthz`. Missing numbers read as 0.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct IpamHealth {
    /// `IPv4: <allocated>/<pool> allocated`.
    pub status: String,
    /// Pod IPs handed out and not yet freed.
    pub allocated: usize,
    /// IPs attached to this node for pods: allocated + free + cooldown.
    pub pool: usize,
    /// IPs ready for the next CNI ADD.
    pub free: usize,
    /// Freed IPs waiting out the reuse cooldown.
    pub cooldown: usize,
    /// Pod IPs this node can ever hold.
    pub capacity: usize,
    /// Of `capacity`, how many the agent cannot provide now.
    pub unavailable: usize,
}

/// `datapath` of `GET /v1/healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct DatapathHealth {
    /// Program loaded (or re-adopted) and maps open.
    pub loaded: bool,
    /// The bpffs root.
    pub pinned: String,
    /// Entries in the endpoint map.
    pub endpoints: usize,
    /// Entries in the service map.
    pub services: usize,
}

/// What identifies one pod interface: CNI's container id + interface name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllocKey {
    /// CNI `CNI_CONTAINERID`.
    pub container_id: String,
    /// CNI `CNI_IFNAME`.
    pub ifname: String,
}

impl fmt::Display for AllocKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.container_id, self.ifname)
    }
}

/// One IP handed to a pod interface; the `GET /v1/ipam` row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Allocation {
    /// The pod IP.
    pub ip: Ipv4Addr,
    /// CNI container id.
    pub container_id: String,
    /// Interface name in the pod.
    pub ifname: String,
    /// Network namespace path of the pod.
    pub netns: String,
    /// Pod namespace (from `CNI_ARGS` `K8S_POD_NAMESPACE`), empty if unknown.
    #[serde(default)]
    pub pod_namespace: String,
    /// Pod name (from `CNI_ARGS` `K8S_POD_NAME`), empty if unknown.
    #[serde(default)]
    pub pod_name: String,
    /// When the IP was handed out (RFC 3339).
    pub since: String,
}

impl Allocation {
    /// The key this allocation is stored under.
    pub fn key(&self) -> AllocKey {
        AllocKey {
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }

    /// Owner string for the usage report: `namespace/pod`, or the container id.
    pub fn owner(&self) -> String {
        if self.pod_name.is_empty() {
            self.container_id.clone()
        } else {
            format!("{}/{}", self.pod_namespace, self.pod_name)
        }
    }
}

/// `GET /v1/ipam`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct IpamList {
    /// Every allocation.
    pub allocations: Vec<Allocation>,
}

/// IP protocols the service map knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// The IP protocol number (6, 17).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
        }
    }

    /// The protocol of an IP protocol number, if the service map knows it.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
}

/// A ClusterIP service frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Frontend {
    /// Virtual IP.
    pub vip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub proto: Proto,
}

/// A service backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Backend {
    /// Backend pod IP.
    pub ip: Ipv4Addr,
    /// Backend port.
    pub port: u16,
}

/// Body of `POST /v1/services`: sets one frontend's backends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// The frontend.
    pub frontend: Frontend,
    /// Its backends; empty removes the frontend.
    pub backends: Vec<Backend>,
}

/// `GET /v1/services`: the datapath's service map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ServiceList {
    /// Every ClusterIP frontend with its backends (none without a datapath).
    pub services: Vec<ServiceSpec>,
}

/// Body of `POST /v1/cni/add`, `/v1/cni/del`, `/v1/cni/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRequest {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` (may be empty on DEL).
    #[serde(default)]
    pub netns: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_namespace: String,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    #[serde(default)]
    pub pod_name: String,
}

/// Answer to `POST /v1/cni/add` and `/v1/cni/check`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniReply {
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Gateway the pod routes through.
    pub gateway: Ipv4Addr,
    /// Host veth name.
    pub host_ifname: String,
    /// Host veth MAC (`aa:bb:..`).
    pub host_mac: String,
    /// Pod interface MAC.
    pub pod_mac: String,
}

/// Error body of every failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Metric label of the error.
    pub code: String,
    /// Human message with its causes.
    pub message: String,
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_healthz_example() {
        let body = br#"{
          "state": "ready",
          "ipam": { "status": "IPv4: 2/10 allocated", "allocated": 2, "pool": 10,
                    "free": 7, "cooldown": 1, "capacity": 234, "unavailable": 0 },
          "datapath": { "loaded": true, "pinned": "/sys/fs/bpf/sextant", "endpoints": 2, "services": 0 }
        }"#;
        let h: Health = serde_json::from_slice(body).expect("documented example parses");
        assert_eq!(h.state, AgentState::Ready);
        assert_eq!(h.ipam.capacity, 234);
        assert_eq!(h.ipam.allocated, 2);
        assert!(h.datapath.loaded);
    }

    #[test]
    fn missing_numbers_read_as_zero_and_unknown_state_is_kept_apart() {
        let h: Health =
            serde_json::from_slice(br#"{"state":"warming","ipam":{"capacity":3},"x":1}"#)
                .expect("parses");
        assert_eq!(h.state, AgentState::Unknown);
        assert_eq!(h.ipam.unavailable, 0);
        assert_eq!(h.ipam.capacity, 3);
    }

    #[test]
    fn the_agent_writes_states_in_lowercase() {
        for (s, want) in [
            (AgentState::Ready, "\"ready\""),
            (AgentState::Restoring, "\"restoring\""),
            (AgentState::Degraded, "\"degraded\""),
        ] {
            assert_eq!(serde_json::to_string(&s).expect("encodes"), want);
            assert_eq!(format!("\"{s}\""), want);
        }
    }

    #[test]
    fn protocols_round_trip_through_their_numbers() {
        for p in [Proto::Tcp, Proto::Udp] {
            assert_eq!(Proto::from_number(p.number()), Some(p));
        }
        assert_eq!(Proto::from_number(1), None);
    }

    #[test]
    fn macs_print_as_colon_separated_hex() {
        assert_eq!(
            fmt_mac(&[0xaa, 0xbb, 0, 1, 0x0f, 0xff]),
            "aa:bb:00:01:0f:ff"
        );
    }
}
