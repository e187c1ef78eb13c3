use proptest::prelude::*;

use super::*;
use crate::api::flow::{self, CiliumEventType, Endpoint, Layer4, Service};

fn mk_flow() -> Flow {
    Flow {
        verdict: Verdict::Dropped as i32,
        drop_reason_desc: DropReason::PolicyDenied as i32,
        ip: Some(flow::Ip {
            source: "10.0.1.5".into(),
            destination: "10.0.2.9".into(),
            ip_version: IpVersion::IPv4 as i32,
            encrypted: false,
        }),
        l4: Some(Layer4 {
            protocol: Some(Protocol::Tcp(flow::Tcp {
                source_port: 40000,
                destination_port: 5432,
                flags: Some(TcpFlags {
                    syn: true,
                    ..Default::default()
                }),
            })),
        }),
        source: Some(Endpoint {
            id: 7,
            identity: 1001,
            namespace: "shop".into(),
            labels: vec!["k8s:app=web".into(), "k8s:tier=front".into()],
            pod_name: "web-7d9f".into(),
        }),
        destination: Some(Endpoint {
            id: 9,
            identity: 2002,
            namespace: "data".into(),
            labels: vec!["k8s:app=db".into()],
            pod_name: "db-0".into(),
        }),
        node_name: "node-a.example".into(),
        event_type: Some(CiliumEventType {
            r#type: 1,
            sub_type: 133,
        }),
        destination_service: Some(Service {
            name: "db".into(),
            namespace: "data".into(),
        }),
        traffic_direction: TrafficDirection::Ingress as i32,
        is_reply: Some(false),
        ..Default::default()
    }
}

fn set(white: Vec<FlowFilter>, black: Vec<FlowFilter>) -> FilterSet {
    FilterSet::new(&white, &black).expect("valid filters")
}

fn passes(f: FlowFilter) -> bool {
    set(vec![f], vec![]).matches(&mk_flow())
}

#[test]
fn pods_match_by_namespace_and_name_prefix() {
    let pod = |s: &str| FlowFilter {
        source_pod: vec![s.into()],
        ..Default::default()
    };
    assert!(passes(pod("shop/web-")));
    assert!(passes(pod("shop/")));
    assert!(passes(pod("web")));
    assert!(!passes(pod("data/web")));
    assert!(!passes(pod("shop/db")));
    assert!(passes(FlowFilter {
        destination_pod: vec!["data/db-0".into()],
        ..Default::default()
    }));
}

#[test]
fn ips_match_exactly_or_by_cidr() {
    let ip = |s: &str| FlowFilter {
        destination_ip: vec![s.into()],
        ..Default::default()
    };
    assert!(passes(ip("10.0.2.9")));
    assert!(passes(ip("10.0.2.0/24")));
    assert!(!passes(ip("10.0.1.0/24")));
}

#[test]
fn label_selectors_follow_kubernetes_syntax() {
    let lbl = |s: &str| FlowFilter {
        source_label: vec![s.into()],
        ..Default::default()
    };
    assert!(passes(lbl("app=web")));
    assert!(passes(lbl("k8s:app=web")));
    assert!(passes(lbl("app in (web, api),tier")));
    assert!(passes(lbl("app notin (db),!missing")));
    assert!(!passes(lbl("app!=web")));
    assert!(!passes(lbl("other:app=web")));
    assert!(!passes(lbl("app=web,tier=back")));
}

#[test]
fn fields_are_anded_and_filters_ored() {
    let both = FlowFilter {
        verdict: vec![Verdict::Dropped as i32],
        destination_port: vec!["5432".into()],
        protocol: vec!["TCP".into()],
        ..Default::default()
    };
    assert!(passes(both.clone()));
    let wrong_port = FlowFilter {
        destination_port: vec!["80".into()],
        ..both.clone()
    };
    assert!(!passes(wrong_port.clone()));
    assert!(set(vec![wrong_port.clone(), both], vec![]).matches(&mk_flow()));
    assert!(!set(vec![wrong_port], vec![]).matches(&mk_flow()));
}

#[test]
fn the_blacklist_removes_what_the_whitelist_let_in() {
    let all = FilterSet::new(&[], &[]).expect("empty");
    assert!(all.matches(&mk_flow()));
    let black = FlowFilter {
        source_identity: vec![1001],
        ..Default::default()
    };
    assert!(!set(vec![], vec![black.clone()]).matches(&mk_flow()));
    let white = FlowFilter {
        destination_identity: vec![2002],
        ..Default::default()
    };
    assert!(!set(vec![white], vec![black]).matches(&mk_flow()));
}

#[test]
fn verdict_drop_reason_event_type_node_and_flags_match() {
    assert!(passes(FlowFilter {
        drop_reason_desc: vec![DropReason::PolicyDenied as i32],
        ..Default::default()
    }));
    assert!(!passes(FlowFilter {
        drop_reason_desc: vec![DropReason::InvalidSourceIp as i32],
        ..Default::default()
    }));
    assert!(passes(FlowFilter {
        event_type: vec![EventTypeFilter {
            r#type: 1,
            match_sub_type: false,
            sub_type: 0
        }],
        ..Default::default()
    }));
    assert!(passes(FlowFilter {
        node_name: vec!["node-*.example".into()],
        ..Default::default()
    }));
    assert!(!passes(FlowFilter {
        node_name: vec!["node*".into()],
        ..Default::default()
    }));
    assert!(passes(FlowFilter {
        tcp_flags: vec![TcpFlags {
            syn: true,
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert!(!passes(FlowFilter {
        tcp_flags: vec![TcpFlags {
            ack: true,
            ..Default::default()
        }],
        ..Default::default()
    }));
    assert!(passes(FlowFilter {
        destination_service: vec!["data/db".into()],
        reply: vec![false],
        traffic_direction: vec![TrafficDirection::Ingress as i32],
        ip_version: vec![IpVersion::IPv4 as i32],
        ..Default::default()
    }));
}

#[test]
fn malformed_filters_are_refused_with_the_field_named() {
    for (f, field) in [
        (
            FlowFilter {
                source_ip: vec!["10.0.0.300".into()],
                ..Default::default()
            },
            "source_ip",
        ),
        (
            FlowFilter {
                destination_port: vec!["http".into()],
                ..Default::default()
            },
            "destination_port",
        ),
        (
            FlowFilter {
                protocol: vec!["quic".into()],
                ..Default::default()
            },
            "protocol",
        ),
        (
            FlowFilter {
                verdict: vec![99],
                ..Default::default()
            },
            "verdict",
        ),
        (
            FlowFilter {
                source_label: vec!["app in (a".into()],
                ..Default::default()
            },
            "source_label",
        ),
        (
            FlowFilter {
                source_pod: vec!["/x".into()],
                ..Default::default()
            },
            "source_pod",
        ),
        (
            FlowFilter {
                http_status_code: vec!["404".into()],
                ..Default::default()
            },
            "http_status_code",
        ),
    ] {
        let err = FilterSet::new(&[f], &[]).expect_err(field);
        assert!(
            matches!(&err, Error::InvalidFilter(m) if m.starts_with(field)),
            "{field}: {err}"
        );
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
}

fn strings() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(".{0,12}", 0..3)
}

prop_compose! {
    fn any_filter()(
        (source_ip, source_pod, source_label, source_service) in (strings(), strings(), strings(), strings()),
        (destination_ip, destination_pod, destination_label, destination_port) in (strings(), strings(), strings(), strings()),
        (protocol, node_name, source_port) in (strings(), strings(), strings()),
        verdict in proptest::collection::vec(any::<i32>(), 0..3),
        drop_reason_desc in proptest::collection::vec(any::<i32>(), 0..3),
        traffic_direction in proptest::collection::vec(any::<i32>(), 0..3),
        ip_version in proptest::collection::vec(any::<i32>(), 0..3),
        source_identity in proptest::collection::vec(any::<u32>(), 0..3),
        reply in proptest::collection::vec(any::<bool>(), 0..2),
        et in proptest::collection::vec((any::<i32>(), any::<bool>(), any::<i32>()), 0..2),
    ) -> FlowFilter {
        FlowFilter {
            source_ip, source_pod, source_label, source_service,
            destination_ip, destination_pod, destination_label, destination_port,
            protocol, node_name, source_port, verdict, drop_reason_desc,
            traffic_direction, ip_version, source_identity, reply,
            event_type: et.into_iter().map(|(t, m, s)| EventTypeFilter { r#type: t, match_sub_type: m, sub_type: s }).collect(),
            ..Default::default()
        }
    }
}

proptest! {
    /// Arbitrary filter messages are accepted or refused, never a panic,
    /// and an accepted one evaluates without panicking.
    #[test]
    fn arbitrary_filters_never_panic(
        white in proptest::collection::vec(any_filter(), 0..3),
        black in proptest::collection::vec(any_filter(), 0..2),
        node in "[a-z.*-]{0,10}",
    ) {
        if let Ok(set) = FilterSet::new(&white, &black) {
            let mut f = mk_flow();
            f.node_name = node;
            let _ = set.matches(&f);
            let _ = set.matches(&Flow::default());
        }
    }
}
