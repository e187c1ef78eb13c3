//! Flows as JSON the way `hubble observe -o json` prints them: protobuf
//! JSON with the proto field names (`node_name`, `drop_reason_desc`,
//! `IP`, `Type`), enums by name, timestamps in RFC 3339, default values
//! left out.

use std::time::{Duration, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use crate::api::{
    flow::{
        DropReason, Endpoint, Flow, FlowType, IpVersion, LostEventSource, Service, TcpFlags,
        TrafficDirection, Verdict, layer4::Protocol,
    },
    observer::{GetFlowsResponse, get_flows_response::ResponseTypes},
    relay::NodeState,
};

/// RFC 3339 with nanoseconds, UTC, as protobuf JSON writes a Timestamp.
pub fn timestamp(t: &prost_types::Timestamp) -> String {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let nanos = u32::try_from(t.nanos).unwrap_or(0);
    rfc3339(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// A time as `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (civil from days,
/// Howard Hinnant's algorithm).
pub fn rfc3339(at: std::time::SystemTime) -> String {
    let d = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

fn put(m: &mut Map<String, Value>, k: &str, v: Value) {
    let empty = match &v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    if !empty {
        m.insert(k.to_owned(), v);
    }
}

fn enum_name<E: TryFrom<i32>>(v: i32, name: impl Fn(E) -> &'static str) -> Value {
    match E::try_from(v) {
        Ok(e) => Value::String(name(e).to_owned()),
        Err(_) => json!(v),
    }
}

fn endpoint(e: &Endpoint) -> Value {
    let mut m = Map::new();
    put(&mut m, "ID", json!(e.id));
    put(&mut m, "identity", json!(e.identity));
    put(&mut m, "namespace", json!(e.namespace));
    put(&mut m, "labels", json!(e.labels));
    put(&mut m, "pod_name", json!(e.pod_name));
    Value::Object(m)
}

fn service(s: &Service) -> Value {
    let mut m = Map::new();
    put(&mut m, "name", json!(s.name));
    put(&mut m, "namespace", json!(s.namespace));
    Value::Object(m)
}

fn flags(f: &TcpFlags) -> Value {
    let mut m = Map::new();
    for (k, v) in [
        ("FIN", f.fin),
        ("SYN", f.syn),
        ("RST", f.rst),
        ("PSH", f.psh),
        ("ACK", f.ack),
        ("URG", f.urg),
        ("ECE", f.ece),
        ("CWR", f.cwr),
        ("NS", f.ns),
    ] {
        put(&mut m, k, json!(v));
    }
    Value::Object(m)
}

/// A flow as protobuf JSON with proto field names.
pub fn flow(f: &Flow) -> Value {
    let mut m = Map::new();
    put(
        &mut m,
        "time",
        f.time.as_ref().map_or(Value::Null, |t| json!(timestamp(t))),
    );
    put(&mut m, "uuid", json!(f.uuid));
    put(
        &mut m,
        "verdict",
        enum_name(f.verdict, |v: Verdict| v.as_str_name()),
    );
    put(&mut m, "drop_reason", json!(f.drop_reason));
    if let Some(ip) = &f.ip {
        let mut i = Map::new();
        put(&mut i, "source", json!(ip.source));
        put(&mut i, "destination", json!(ip.destination));
        put(
            &mut i,
            "ipVersion",
            enum_name(ip.ip_version, |v: IpVersion| v.as_str_name()),
        );
        put(&mut i, "encrypted", json!(ip.encrypted));
        put(&mut m, "IP", Value::Object(i));
    }
    if let Some(p) = f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        let (k, v) = match p {
            Protocol::Tcp(t) => {
                let mut o = Map::new();
                put(&mut o, "source_port", json!(t.source_port));
                put(&mut o, "destination_port", json!(t.destination_port));
                put(&mut o, "flags", t.flags.as_ref().map_or(Value::Null, flags));
                ("TCP", o)
            }
            Protocol::Udp(u) => {
                let mut o = Map::new();
                put(&mut o, "source_port", json!(u.source_port));
                put(&mut o, "destination_port", json!(u.destination_port));
                ("UDP", o)
            }
            Protocol::Sctp(u) => {
                let mut o = Map::new();
                put(&mut o, "source_port", json!(u.source_port));
                put(&mut o, "destination_port", json!(u.destination_port));
                ("SCTP", o)
            }
            Protocol::IcmPv4(i) => {
                let mut o = Map::new();
                put(&mut o, "type", json!(i.r#type));
                put(&mut o, "code", json!(i.code));
                ("ICMPv4", o)
            }
            Protocol::IcmPv6(i) => {
                let mut o = Map::new();
                put(&mut o, "type", json!(i.r#type));
                put(&mut o, "code", json!(i.code));
                ("ICMPv6", o)
            }
        };
        m.insert("l4".into(), json!({ k: Value::Object(v) }));
    }
    put(
        &mut m,
        "source",
        f.source.as_ref().map_or(Value::Null, endpoint),
    );
    put(
        &mut m,
        "destination",
        f.destination.as_ref().map_or(Value::Null, endpoint),
    );
    put(
        &mut m,
        "Type",
        enum_name(f.r#type, |v: FlowType| v.as_str_name()),
    );
    put(&mut m, "node_name", json!(f.node_name));
    put(&mut m, "reply", json!(f.reply));
    if let Some(e) = &f.event_type {
        let mut o = Map::new();
        put(&mut o, "type", json!(e.r#type));
        put(&mut o, "sub_type", json!(e.sub_type));
        put(&mut m, "event_type", Value::Object(o));
    }
    put(
        &mut m,
        "source_service",
        f.source_service.as_ref().map_or(Value::Null, service),
    );
    put(
        &mut m,
        "destination_service",
        f.destination_service.as_ref().map_or(Value::Null, service),
    );
    put(
        &mut m,
        "traffic_direction",
        enum_name(f.traffic_direction, |v: TrafficDirection| v.as_str_name()),
    );
    put(
        &mut m,
        "drop_reason_desc",
        enum_name(f.drop_reason_desc, |v: DropReason| v.as_str_name()),
    );
    // A wrapper is written as its bare value, `false` included.
    if let Some(r) = f.is_reply {
        m.insert("is_reply".into(), json!(r));
    }
    put(&mut m, "Summary", json!(f.summary));
    Value::Object(m)
}

/// A GetFlows response as protobuf JSON with proto field names.
pub fn response(r: &GetFlowsResponse) -> Value {
    let mut m = Map::new();
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            m.insert("flow".into(), flow(f));
        }
        Some(ResponseTypes::NodeStatus(s)) => {
            let mut o = Map::new();
            put(
                &mut o,
                "state_change",
                enum_name(s.state_change, |v: NodeState| v.as_str_name()),
            );
            put(&mut o, "node_names", json!(s.node_names));
            put(&mut o, "message", json!(s.message));
            m.insert("node_status".into(), Value::Object(o));
        }
        Some(ResponseTypes::LostEvents(l)) => {
            let mut o = Map::new();
            put(
                &mut o,
                "source",
                enum_name(l.source, |v: LostEventSource| v.as_str_name()),
            );
            // protobuf JSON writes 64-bit integers as strings.
            put(
                &mut o,
                "num_events_lost",
                json!(l.num_events_lost.to_string()),
            );
            if let Some(cpu) = l.cpu {
                o.insert("cpu".into(), json!(cpu));
            }
            m.insert("lost_events".into(), Value::Object(o));
        }
        None => {}
    }
    put(&mut m, "node_name", json!(r.node_name));
    put(
        &mut m,
        "time",
        r.time.as_ref().map_or(Value::Null, |t| json!(timestamp(t))),
    );
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::flow::{self, Layer4};

    #[test]
    fn json_uses_hubbles_proto_field_names_and_enum_names() {
        let f = Flow {
            time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            verdict: Verdict::Dropped as i32,
            drop_reason_desc: DropReason::PolicyDenied as i32,
            ip: Some(flow::Ip {
                source: "10.0.0.1".into(),
                destination: "10.0.0.2".into(),
                ip_version: IpVersion::IPv4 as i32,
                encrypted: false,
            }),
            l4: Some(Layer4 {
                protocol: Some(Protocol::Tcp(flow::Tcp {
                    source_port: 1234,
                    destination_port: 80,
                    flags: Some(TcpFlags {
                        syn: true,
                        ..Default::default()
                    }),
                })),
            }),
            source: Some(Endpoint {
                pod_name: "web".into(),
                namespace: "shop".into(),
                ..Default::default()
            }),
            node_name: "n1".into(),
            r#type: FlowType::L3L4 as i32,
            is_reply: Some(false),
            traffic_direction: TrafficDirection::Egress as i32,
            ..Default::default()
        };
        let v = flow(&f);
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(v["verdict"], "DROPPED");
        assert_eq!(v["drop_reason_desc"], "POLICY_DENIED");
        assert_eq!(v["IP"]["ipVersion"], "IPv4");
        assert_eq!(v["l4"]["TCP"]["destination_port"], 80);
        assert_eq!(v["l4"]["TCP"]["flags"]["SYN"], true);
        assert_eq!(v["source"]["pod_name"], "web");
        assert_eq!(v["Type"], "L3_L4");
        assert_eq!(v["node_name"], "n1");
        assert_eq!(v["is_reply"], false);
        assert_eq!(v["traffic_direction"], "EGRESS");
        assert!(v.get("destination").is_none(), "absent messages left out");
        assert!(v.get("drop_reason").is_none(), "zero values left out");
    }
}
