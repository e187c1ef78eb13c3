//! The observer API end to end over real sockets: a node's server fed
//! through the kernel-facing channel, a slow client, bad filters, and the
//! relay over several nodes.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sextant_observer::{
    api::{
        flow::{FlowFilter, Verdict},
        observer::{
            GetFlowsRequest, GetFlowsResponse, ServerStatusRequest,
            get_flows_response::ResponseTypes, observer_client::ObserverClient,
        },
        relay::NodeState,
    },
    client::{Address, connect},
    record::{Direction, FlowRecord, L4},
    relay::{Peer, RelayConfig, RelayService},
    server::{Hub, ObserverService, ingest, serve_unix},
    source::{FlowEvent, NoEnrichment, Sent, channel},
    store::StoreConfig,
};
use tonic::transport::Channel;

fn mk_record(i: u64, verdict: sextant_observer::record::Verdict, at: SystemTime) -> FlowRecord {
    FlowRecord {
        time: at,
        source: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        destination: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        l4: L4::Tcp {
            sport: 10_000 + (i % 50_000) as u16,
            dport: 80,
            flags: 0x02,
        },
        verdict,
        direction: Direction::Egress,
        source_identity: 100,
        destination_identity: 200,
        is_reply: Some(false),
        destination_service: None,
        policy_verdict: false,
    }
}

/// A node's observer on a unix socket in `dir`, fed by the returned sender.
async fn node(
    dir: &Path,
    name: &str,
    config: StoreConfig,
    client_buffer: usize,
) -> (sextant_observer::source::FlowSender, Arc<Hub>, PathBuf) {
    let (tx, source) = channel(65_536);
    let hub = Hub::with_client_buffer(name, config, client_buffer);
    tokio::spawn(ingest(source, hub.clone(), Arc::new(NoEnrichment)));
    let path = dir.join(format!("{name}.sock"));
    let service = ObserverService::new(hub.clone()).into_server();
    let p = path.clone();
    tokio::spawn(async move { serve_unix(service, &p, std::future::pending()).await });
    wait_for_socket(&path).await;
    (tx, hub, path)
}

async fn wait_for_socket(path: &Path) {
    for _ in 0..200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} never appeared", path.display());
}

async fn client(path: &Path) -> ObserverClient<Channel> {
    connect(&Address::Unix(path.to_owned()), Duration::from_secs(5))
        .await
        .expect("connect")
}

async fn until_seen(hub: &Hub, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while hub.status().seen < n {
        assert!(Instant::now() < deadline, "store saw {:?}", hub.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_counted_flows_and_never_stalls_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut tx, hub, path) = node(dir.path(), "node-a", StoreConfig::default(), 16).await;
    let mut slow = client(&path).await;
    let mut stream = slow
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("get_flows")
        .into_inner();
    // Make sure the subscription is registered before the burst.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let burst = 20_000u64;
    let started = Instant::now();
    for seq in 0..burst {
        while tx.send(FlowEvent {
            cpu: 0,
            seq,
            record: mk_record(
                seq,
                sextant_observer::record::Verdict::Forwarded,
                SystemTime::now(),
            ),
        }) == Sent::Lost
        {
            // The test wants no queue loss here, only export loss.
            tokio::task::yield_now().await;
        }
    }
    until_seen(&hub, burst).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the store kept up: {took:?}"
    );
    let status = hub.status();
    assert_eq!(status.seen, burst);
    assert!(
        status.export_lost > 0,
        "the slow client lost flows: {status:?}"
    );

    // One more flow after the client starts reading carries the loss notice.
    let reader = tokio::spawn(async move {
        let (mut flows, mut lost) = (0u64, 0u64);
        while flows + lost < burst + 1 {
            match stream.message().await.expect("stream").expect("open") {
                GetFlowsResponse {
                    response_types: Some(ResponseTypes::Flow(_)),
                    ..
                } => flows += 1,
                GetFlowsResponse {
                    response_types: Some(ResponseTypes::LostEvents(l)),
                    ..
                } => lost += l.num_events_lost,
                other => panic!("unexpected {other:?}"),
            }
        }
        (flows, lost)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        tx.send(FlowEvent {
            cpu: 0,
            seq: burst,
            record: mk_record(
                0,
                sextant_observer::record::Verdict::Forwarded,
                SystemTime::now()
            ),
        }),
        Sent::Queued
    );
    let (flows, lost) = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("reader finished")
        .expect("reader");
    assert_eq!(flows + lost, burst + 1, "every flow delivered or counted");
    assert_eq!(
        lost,
        hub.status().export_lost,
        "the client was told exactly"
    );

    let s = client(&path)
        .await
        .server_status(ServerStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.seen_flows, burst + 1);
    assert_eq!(s.seen_flows, s.num_flows + s.lost_flows);
    assert!(
        s.lost
            .iter()
            .any(|l| l.stage == "export" && l.count == lost),
        "{s:?}"
    );
}

#[tokio::test]
async fn queue_and_sequence_losses_are_counted_to_the_one() {
    let (mut tx, source) = channel(8);
    // Nothing reads yet: 8 fit, the rest are lost at the queue.
    let mut lost = 0;
    for seq in 0..100u64 {
        if tx.send(FlowEvent {
            cpu: 1,
            seq,
            record: mk_record(
                seq,
                sextant_observer::record::Verdict::Forwarded,
                SystemTime::now(),
            ),
        }) == Sent::Lost
        {
            lost += 1;
        }
    }
    assert_eq!(lost, 92);
    let hub = Hub::new("n", StoreConfig::default());
    tokio::spawn(ingest(source, hub.clone(), Arc::new(NoEnrichment)));
    until_seen(&hub, 8).await;
    // The next flow first reports the pending queue loss, then goes.
    // Skip 5 sequence numbers the kernel will report late.
    assert_eq!(
        tx.send(FlowEvent {
            cpu: 1,
            seq: 105,
            record: mk_record(
                0,
                sextant_observer::record::Verdict::Forwarded,
                SystemTime::now()
            ),
        }),
        Sent::Queued
    );
    until_seen(&hub, 106).await;
    let s = hub.status();
    assert_eq!((s.seen, s.kept, s.lost), (106, 9, 97), "{s:?}");
    assert_eq!(tx.kernel_lost(1, 5), Sent::Queued);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let s = hub.status();
    assert_eq!(
        (s.seen, s.lost),
        (106, 97),
        "the late report explained the gap"
    );
    let by: Vec<_> = s
        .lost_by
        .iter()
        .map(|l| (l.stage.as_str(), l.count))
        .collect();
    assert_eq!(by, [("ring", 5), ("queue", 92)]);
}

#[tokio::test]
async fn malformed_filters_get_invalid_argument_over_grpc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_tx, _hub, path) = node(dir.path(), "n", StoreConfig::default(), 16).await;
    let err = client(&path)
        .await
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                destination_port: vec!["eighty".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("destination_port"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_merges_nodes_in_time_order_and_names_the_unreachable_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, hub_a, path_a) = node(dir.path(), "node-a", StoreConfig::default(), 64).await;
    let (mut b, hub_b, path_b) = node(dir.path(), "node-b", StoreConfig::default(), 64).await;
    let t0 = SystemTime::now() - Duration::from_secs(60);
    for i in 0..10u64 {
        let at = t0 + Duration::from_millis(10 * i);
        let verdict = if i == 7 {
            sextant_observer::record::Verdict::Dropped(133)
        } else {
            sextant_observer::record::Verdict::Forwarded
        };
        let tx = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(
            tx.send(FlowEvent {
                cpu: 0,
                seq: i / 2,
                record: mk_record(i, verdict, at),
            }),
            Sent::Queued
        );
    }
    until_seen(&hub_a, 5).await;
    until_seen(&hub_b, 5).await;
    let relay = RelayService::new(
        vec![
            Peer {
                name: "node-a".into(),
                address: Address::Unix(path_a),
            },
            Peer {
                name: "node-b".into(),
                address: Address::Unix(path_b),
            },
            Peer {
                name: "node-c".into(),
                address: Address::Unix(dir.path().join("nobody.sock")),
            },
        ],
        RelayConfig {
            timeout: Duration::from_secs(1),
            ..RelayConfig::default()
        },
    );
    let relay_path = dir.path().join("relay.sock");
    let p = relay_path.clone();
    let server = relay.into_server();
    tokio::spawn(async move { serve_unix(server, &p, std::future::pending()).await });
    wait_for_socket(&relay_path).await;
    let mut c = client(&relay_path).await;

    let mut stream = c
        .get_flows(GetFlowsRequest {
            number: 6,
            ..Default::default()
        })
        .await
        .expect("get_flows")
        .into_inner();
    let (mut nodes, mut times, mut unavailable, mut connected) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = stream.message().await.expect("stream") {
        match r.response_types {
            Some(ResponseTypes::Flow(f)) => {
                nodes.push(f.node_name.clone());
                times.push(SystemTime::try_from(f.time.expect("time")).expect("valid"));
            }
            Some(ResponseTypes::NodeStatus(s))
                if s.state_change == NodeState::NodeUnavailable as i32 =>
            {
                unavailable.extend(s.node_names)
            }
            Some(ResponseTypes::NodeStatus(s)) => connected.extend(s.node_names),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(unavailable, ["node-c"]);
    connected.sort();
    assert_eq!(connected, ["node-a", "node-b"]);
    assert_eq!(times.len(), 6, "the last 6 of the merge");
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order");
    assert_eq!(
        nodes,
        ["node-a", "node-b", "node-a", "node-b", "node-a", "node-b"]
    );
    assert_eq!(times[0], t0 + Duration::from_millis(40));

    // Filters travel to the nodes.
    let mut dropped = c
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                verdict: vec![Verdict::Dropped as i32],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect("get_flows")
        .into_inner();
    let mut drops = 0;
    while let Some(r) = dropped.message().await.expect("stream") {
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            assert_eq!(f.node_name, "node-b");
            drops += 1;
        }
    }
    assert_eq!(drops, 1);

    let s = c
        .server_status(ServerStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(s.num_connected_nodes, Some(2));
    assert_eq!(s.num_unavailable_nodes, Some(1));
    assert_eq!(s.unavailable_nodes, ["node-c"]);
    assert_eq!(s.seen_flows, 10);

    // Bad filters are refused by the relay itself.
    let err = c
        .get_flows(GetFlowsRequest {
            whitelist: vec![FlowFilter {
                source_ip: vec!["not-an-ip".into()],
                ..Default::default()
            }],
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[test]
fn metrics_follow_the_store_account_exactly() {
    let hub = Hub::new(
        "n",
        StoreConfig {
            normal: 10,
            priority: 5,
        },
    );
    let mut registry = prometheus_client::registry::Registry::default();
    hub.metrics.register(&mut registry);
    let msgs = (0..25u64)
        .map(|seq| {
            sextant_observer::source::SourceMsg::Flow(FlowEvent {
                cpu: 0,
                seq: if seq < 20 { seq } else { seq + 3 },
                record: mk_record(
                    seq,
                    if seq % 5 == 0 {
                        sextant_observer::record::Verdict::Dropped(133)
                    } else {
                        sextant_observer::record::Verdict::Forwarded
                    },
                    SystemTime::now(),
                ),
            })
        })
        .collect();
    hub.apply(msgs, &NoEnrichment);
    let s = hub.status();
    assert_eq!((s.seen, s.kept, s.lost), (28, 15, 13));
    let text = sextant_kit::admin::metrics_text(&registry).expect("encode");
    for line in [
        "sextant_observer_flows_seen_total 28",
        "sextant_observer_flows_lost_total{stage=\"store\",reason=\"normal_lane_full\"} 10",
        "sextant_observer_flows_unexplained_gap 3",
        "sextant_observer_store_flows{lane=\"priority\"} 5",
        "sextant_observer_store_flows{lane=\"normal\"} 10",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    // A late report moves the gap to its stage; counters only grow.
    hub.apply(
        vec![sextant_observer::source::SourceMsg::Lost {
            cpu: 0,
            stage: sextant_observer::source::LossStage::Ring,
            reason: "ring_full",
            count: 3,
        }],
        &NoEnrichment,
    );
    hub.status();
    let text = sextant_kit::admin::metrics_text(&registry).expect("encode");
    for line in [
        "sextant_observer_flows_seen_total 28",
        "sextant_observer_flows_lost_total{stage=\"ring\",reason=\"ring_full\"} 3",
        "sextant_observer_flows_unexplained_gap 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_nodes_in_time_order_within_its_window() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, _hub_a, path_a) = node(dir.path(), "node-a", StoreConfig::default(), 64).await;
    // node-b can be stopped.
    let (mut b, source_b) = channel(1_024);
    let hub_b = Hub::new("node-b", StoreConfig::default());
    tokio::spawn(ingest(source_b, hub_b.clone(), Arc::new(NoEnrichment)));
    let path_b = dir.path().join("node-b.sock");
    let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
    let service_b = ObserverService::new(hub_b).into_server();
    let p = path_b.clone();
    let server_b = tokio::spawn(async move {
        serve_unix(service_b, &p, async {
            let _ = stopped_b.await;
        })
        .await
    });
    wait_for_socket(&path_b).await;

    let relay = RelayService::new(
        vec![
            Peer {
                name: "node-a".into(),
                address: Address::Unix(path_a),
            },
            Peer {
                name: "node-b".into(),
                address: Address::Unix(path_b),
            },
        ],
        RelayConfig {
            timeout: Duration::from_secs(1),
            window: Duration::from_millis(100),
            ..RelayConfig::default()
        },
    );
    let relay_path = dir.path().join("relay.sock");
    let p = relay_path.clone();
    let server = relay.into_server();
    tokio::spawn(async move { serve_unix(server, &p, std::future::pending()).await });
    wait_for_socket(&relay_path).await;
    let mut stream = client(&relay_path)
        .await
        .get_flows(GetFlowsRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .expect("get_flows")
        .into_inner();
    match stream
        .message()
        .await
        .expect("stream")
        .and_then(|r| r.response_types)
    {
        Some(ResponseTypes::NodeStatus(s)) => {
            assert_eq!(s.state_change, NodeState::NodeConnected as i32);
            assert_eq!(s.node_names.len(), 2);
        }
        other => panic!("first a node status, got {other:?}"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // node-b's flows are older than node-a's interleaved ones but arrive later.
    let t0 = SystemTime::now();
    for i in 0..4u64 {
        let at = t0 + Duration::from_millis(2 * i + 1);
        assert_eq!(
            a.send(FlowEvent {
                cpu: 0,
                seq: i,
                record: mk_record(i, sextant_observer::record::Verdict::Forwarded, at),
            }),
            Sent::Queued
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..4u64 {
        let at = t0 + Duration::from_millis(2 * i);
        assert_eq!(
            b.send(FlowEvent {
                cpu: 0,
                seq: i,
                record: mk_record(i, sextant_observer::record::Verdict::Forwarded, at),
            }),
            Sent::Queued
        );
    }
    let mut got = Vec::new();
    while got.len() < 8 {
        let r = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("flows within the window")
            .expect("stream")
            .expect("open");
        if let Some(ResponseTypes::Flow(f)) = r.response_types {
            got.push((
                SystemTime::try_from(f.time.expect("time")).expect("valid"),
                f.node_name,
            ));
        }
    }
    assert!(
        got.windows(2).all(|w| w[0].0 <= w[1].0),
        "time order: {got:?}"
    );
    let nodes: Vec<&str> = got.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "node-b", "node-a", "node-b", "node-a", "node-b", "node-a", "node-b", "node-a"
        ]
    );
    drop(stop_b);
    server_b.abort();
}
