//! What the datapath reports about one packet or connection event, decoded
//! from the kernel's record, and how it becomes a Hubble [`Flow`].

use std::{net::IpAddr, time::SystemTime};

use crate::{
    api::flow::{
        self, CiliumEventType, Flow, FlowType, IpVersion, Layer4, TcpFlags, TrafficDirection,
        layer4::Protocol,
    },
    source::{EndpointInfo, Enricher, ServiceRef},
};

/// Cilium monitor message type of a drop notification.
pub const EVENT_DROP: i32 = 1;
/// Cilium monitor message type of a trace (forwarded) notification.
pub const EVENT_TRACE: i32 = 4;
/// Cilium monitor message type of a policy verdict notification.
pub const EVENT_POLICY_VERDICT: i32 = 5;

/// The fate of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Passed on.
    Forwarded,
    /// Dropped, for this reason (Hubble's `flow.DropReason` numbers, e.g.
    /// 133 policy denied, 132 invalid source IP).
    Dropped(i32),
    /// Would have been dropped by a policy in audit mode.
    Audit,
    /// Processing failed.
    Error,
}

/// The packet's layer 4.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with ports and the header's flag byte (FIN 0x01 .. CWR 0x80).
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// TCP flag byte.
        flags: u8,
    },
    /// UDP with ports.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMPv4 type and code.
    Icmp4 {
        /// ICMP type.
        typ: u8,
        /// ICMP code.
        code: u8,
    },
    /// ICMPv6 type and code.
    Icmp6 {
        /// ICMP type.
        typ: u8,
        /// ICMP code.
        code: u8,
    },
    /// Another IP protocol.
    Other(u8),
}

/// Which way the packet went relative to the observed pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards the pod.
    Ingress,
    /// Away from the pod.
    Egress,
    /// Not known.
    Unknown,
}

/// One event as the kernel side reports it: plain data, no names yet.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowRecord {
    /// When the kernel saw it.
    pub time: SystemTime,
    /// Source address (after any translation the kernel reports separately).
    pub source: IpAddr,
    /// Destination address.
    pub destination: IpAddr,
    /// Layer 4.
    pub l4: L4,
    /// What the datapath did.
    pub verdict: Verdict,
    /// Direction relative to the pod.
    pub direction: Direction,
    /// Security identity of the source, 0 when unknown.
    pub source_identity: u32,
    /// Security identity of the destination, 0 when unknown.
    pub destination_identity: u32,
    /// Whether the packet is a reply, when the conntrack state says.
    pub is_reply: Option<bool>,
    /// The service the destination was translated from (VIP -> backend).
    pub destination_service: Option<ServiceRef>,
    /// The policy verdict event rather than a trace or drop.
    pub policy_verdict: bool,
}

/// Hubble's verdict number.
pub fn verdict_number(v: Verdict) -> i32 {
    (match v {
        Verdict::Forwarded => flow::Verdict::Forwarded,
        Verdict::Dropped(_) => flow::Verdict::Dropped,
        Verdict::Audit => flow::Verdict::Audit,
        Verdict::Error => flow::Verdict::Error,
    }) as i32
}

fn endpoint(info: Option<EndpointInfo>, identity: u32) -> flow::Endpoint {
    match info {
        Some(e) => flow::Endpoint {
            id: e.id,
            identity: if identity != 0 { identity } else { e.identity },
            namespace: e.namespace,
            labels: e.labels,
            pod_name: e.pod_name,
        },
        None => flow::Endpoint {
            identity,
            ..Default::default()
        },
    }
}

/// The Hubble flow-summary text for TCP flags, `TCP Flags: SYN, ACK`.
pub fn tcp_flags_summary(f: &TcpFlags) -> String {
    let names: Vec<&str> = [
        (f.syn, "SYN"),
        (f.fin, "FIN"),
        (f.rst, "RST"),
        (f.psh, "PSH"),
        (f.ack, "ACK"),
        (f.urg, "URG"),
        (f.ece, "ECE"),
        (f.cwr, "CWR"),
        (f.ns, "NS"),
    ]
    .into_iter()
    .filter_map(|(set, n)| set.then_some(n))
    .collect();
    format!("TCP Flags: {}", names.join(", "))
}

fn tcp_flags(b: u8) -> TcpFlags {
    TcpFlags {
        fin: b & 0x01 != 0,
        syn: b & 0x02 != 0,
        rst: b & 0x04 != 0,
        psh: b & 0x08 != 0,
        ack: b & 0x10 != 0,
        urg: b & 0x20 != 0,
        ece: b & 0x40 != 0,
        cwr: b & 0x80 != 0,
        ns: false,
    }
}

/// Builds the Hubble flow for `r` seen on `node`, with pod, namespace,
/// labels and services from `enricher`.
pub fn to_flow(r: &FlowRecord, node: &str, enricher: &dyn Enricher) -> Flow {
    let (l4, summary, dport) = match r.l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let flags = tcp_flags(flags);
            let summary = tcp_flags_summary(&flags);
            (
                Some(Protocol::Tcp(flow::Tcp {
                    source_port: sport.into(),
                    destination_port: dport.into(),
                    flags: Some(flags),
                })),
                summary,
                Some(dport),
            )
        }
        L4::Udp { sport, dport } => (
            Some(Protocol::Udp(flow::Udp {
                source_port: sport.into(),
                destination_port: dport.into(),
            })),
            "UDP".to_owned(),
            Some(dport),
        ),
        L4::Icmp4 { typ, code } => (
            Some(Protocol::IcmPv4(flow::IcmPv4 {
                r#type: typ.into(),
                code: code.into(),
            })),
            format!("ICMPv4 type {typ} code {code}"),
            None,
        ),
        L4::Icmp6 { typ, code } => (
            Some(Protocol::IcmPv6(flow::IcmPv6 {
                r#type: typ.into(),
                code: code.into(),
            })),
            format!("ICMPv6 type {typ} code {code}"),
            None,
        ),
        L4::Other(p) => (None, format!("IP protocol {p}"), None),
    };
    let destination_service = r
        .destination_service
        .clone()
        .or_else(|| dport.and_then(|p| enricher.service(r.destination, p)));
    let (drop_reason, event_type) = match r.verdict {
        Verdict::Dropped(reason) => (reason, EVENT_DROP),
        _ if r.policy_verdict => (0, EVENT_POLICY_VERDICT),
        _ => (0, EVENT_TRACE),
    };
    Flow {
        time: Some(r.time.into()),
        uuid: uuid::Uuid::new_v4().to_string(),
        verdict: verdict_number(r.verdict),
        drop_reason: u32::try_from(drop_reason).unwrap_or(0),
        ip: Some(flow::Ip {
            source: r.source.to_string(),
            destination: r.destination.to_string(),
            ip_version: if r.source.is_ipv4() {
                IpVersion::IPv4
            } else {
                IpVersion::IPv6
            } as i32,
            encrypted: false,
        }),
        l4: l4.map(|p| Layer4 { protocol: Some(p) }),
        source: Some(endpoint(enricher.endpoint(r.source), r.source_identity)),
        destination: Some(endpoint(
            enricher.endpoint(r.destination),
            r.destination_identity,
        )),
        r#type: FlowType::L3L4 as i32,
        node_name: node.to_owned(),
        reply: r.is_reply.unwrap_or(false),
        event_type: Some(CiliumEventType {
            r#type: event_type,
            sub_type: 0,
        }),
        source_service: None,
        destination_service: destination_service.map(|s| flow::Service {
            name: s.name,
            namespace: s.namespace,
        }),
        traffic_direction: match r.direction {
            Direction::Ingress => TrafficDirection::Ingress,
            Direction::Egress => TrafficDirection::Egress,
            Direction::Unknown => TrafficDirection::Unknown,
        } as i32,
        drop_reason_desc: drop_reason,
        is_reply: r.is_reply,
        summary,
    }
}
