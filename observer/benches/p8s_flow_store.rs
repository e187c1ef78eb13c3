//! P8s: the flow store's ingest rate and GetFlows throughput, each with a
//! baseline measured in the same run.
//!
//! - ingest: 500,000 flow events through `Hub::apply` in the ingest task's
//!   batches (conversion to Hubble flows, sequence check, two lanes, loss
//!   accounting) on one core, against a baseline that builds the same flows
//!   and pushes them into one plain `VecDeque` (no lanes, no accounting).
//!   The kernel-side ring and reader are not in it (P8, to come).
//! - GetFlows: 100,000 stored flows read by a client over a unix socket,
//!   against a baseline of only protobuf-encoding the same flows.
//!
//! Prints `P8s ...` lines; loss must be zero and every flow read.

use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use prost::Message;
use sextant_observer::{
    api::observer::{GetFlowsRequest, get_flows_response::ResponseTypes},
    client::{Address, connect},
    record::{Direction, FlowRecord, L4, Verdict, to_flow},
    server::{Hub, ObserverService, flow_response, serve_unix},
    source::{FlowEvent, NoEnrichment, SourceMsg},
    store::StoreConfig,
};

const INGEST: u64 = 500_000;
const READ: u64 = 100_000;

fn record(i: u64) -> FlowRecord {
    FlowRecord {
        time: SystemTime::now(),
        source: IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8)),
        destination: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)),
        l4: L4::Tcp {
            sport: (i % 60_000) as u16 + 1024,
            dport: 5432,
            flags: 0x12,
        },
        verdict: if i % 100 == 0 {
            Verdict::Dropped(133)
        } else {
            Verdict::Forwarded
        },
        direction: Direction::Ingress,
        source_identity: 1001,
        destination_identity: 2002,
        is_reply: Some(false),
        destination_service: None,
        policy_verdict: false,
    }
}

fn sextant_ingest() -> (f64, u64, u64) {
    let hub = Hub::new(
        "bench",
        StoreConfig {
            normal: 1 << 20,
            priority: 1 << 16,
        },
    );
    let msgs: Vec<_> = (0..INGEST)
        .map(|i| {
            SourceMsg::Flow(FlowEvent {
                cpu: (i % 4) as u32,
                seq: i / 4,
                record: record(i),
            })
        })
        .collect();
    let started = Instant::now();
    let mut it = msgs.into_iter();
    loop {
        let batch: Vec<_> = it.by_ref().take(256).collect();
        if batch.is_empty() {
            break;
        }
        hub.apply(batch, &NoEnrichment);
    }
    let took = started.elapsed().as_secs_f64();
    let s = hub.status();
    (INGEST as f64 / took, s.seen, s.lost)
}

fn baseline_ingest() -> f64 {
    let records: Vec<_> = (0..INGEST).map(record).collect();
    let started = Instant::now();
    let mut ring = VecDeque::with_capacity(1 << 20);
    for r in &records {
        ring.push_back(to_flow(r, "bench", &NoEnrichment));
    }
    assert_eq!(ring.len() as u64, INGEST);
    INGEST as f64 / started.elapsed().as_secs_f64()
}

fn get_flows(rt: &tokio::runtime::Runtime) -> anyhow::Result<(f64, f64)> {
    let hub = Hub::new(
        "bench",
        StoreConfig {
            normal: READ as usize,
            priority: READ as usize,
        },
    );
    let flows: Vec<_> = (0..READ)
        .map(|i| to_flow(&record(i), "bench", &NoEnrichment))
        .collect();
    for f in &flows {
        hub.push_flow(f.clone());
    }
    let started = Instant::now();
    let mut bytes = 0usize;
    for f in &flows {
        bytes += flow_response(f.clone()).encode_to_vec().len();
    }
    let encode_rate = READ as f64 / started.elapsed().as_secs_f64();
    assert!(bytes > 0);

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("observer.sock");
    let p = path.clone();
    let service = ObserverService::new(hub).into_server();
    rt.spawn(async move { serve_unix(service, &p, std::future::pending()).await });
    rt.block_on(async {
        while !path.exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut c = connect(&Address::Unix(path.clone()), Duration::from_secs(5)).await?;
        let started = Instant::now();
        let mut s = c
            .get_flows(GetFlowsRequest {
                number: READ,
                ..Default::default()
            })
            .await?
            .into_inner();
        let mut n = 0u64;
        while let Some(r) = s.message().await? {
            if let Some(ResponseTypes::Flow(_)) = r.response_types {
                n += 1;
            }
        }
        anyhow::ensure!(n == READ, "read {n} of {READ} flows");
        Ok((READ as f64 / started.elapsed().as_secs_f64(), encode_rate))
    })
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            println!("P8s: FAILED: {e}");
            return;
        }
    };
    let (sextant, seen, lost) = sextant_ingest();
    if seen != INGEST || lost != 0 {
        println!("P8s: FAILED: the store saw {seen} of {INGEST} flows, lost {lost}");
        return;
    }
    let baseline = baseline_ingest();
    println!(
        "P8s flow-store ingest: sextant {:.0}/s on one core ({INGEST} events in batches of 256: Hubble flow built, sequence checked, two-lane store, accounting; seen {seen}, lost {lost}), baseline {:.0}/s (the same flows built and pushed into one VecDeque, no lanes, no accounting), ratio {:.2}",
        sextant,
        baseline,
        sextant / baseline
    );
    match get_flows(&rt) {
        Ok((read, encode)) => println!(
            "P8s GetFlows: {read:.0} flows/s to one client over a unix socket ({READ} stored flows), baseline protobuf encoding alone {encode:.0} flows/s, ratio {:.2}",
            read / encode
        ),
        Err(e) => println!("P8s GetFlows: FAILED: {e:#}"),
    }
}
