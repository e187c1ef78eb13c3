//! `sextantctl observe` against a real observer server task on a unix
//! socket, fed through the kernel-facing channel.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use sextant_observer::{
    record::{Direction, FlowRecord, L4, Verdict},
    server::{Hub, ObserverService, ingest, serve_unix},
    source::{EndpointInfo, FlowEvent, FlowSender, Sent, StaticEnricher, channel},
    store::StoreConfig,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 5);
const DB: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 9);

fn enricher() -> StaticEnricher {
    let mut endpoints = HashMap::new();
    endpoints.insert(
        IpAddr::V4(CLIENT),
        EndpointInfo {
            id: 11,
            identity: 1001,
            namespace: "shop".into(),
            pod_name: "web-1".into(),
            labels: vec!["k8s:app=web".into()],
        },
    );
    endpoints.insert(
        IpAddr::V4(DB),
        EndpointInfo {
            id: 12,
            identity: 2002,
            namespace: "data".into(),
            pod_name: "db-0".into(),
            labels: vec!["k8s:app=db".into()],
        },
    );
    StaticEnricher { endpoints }
}

fn record(verdict: Verdict, dport: u16) -> FlowRecord {
    FlowRecord {
        time: SystemTime::now(),
        source: IpAddr::V4(CLIENT),
        destination: IpAddr::V4(DB),
        l4: L4::Tcp {
            sport: 40_000,
            dport,
            flags: 0x02,
        },
        verdict,
        direction: Direction::Ingress,
        source_identity: 1001,
        destination_identity: 2002,
        is_reply: Some(false),
        destination_service: None,
        policy_verdict: false,
    }
}

struct Node {
    tx: FlowSender,
    seq: u64,
    socket: PathBuf,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Node {
    fn send(&mut self, r: FlowRecord) {
        let sent = self.tx.send(FlowEvent {
            cpu: 0,
            seq: self.seq,
            record: r,
        });
        assert_eq!(sent, Sent::Queued);
        self.seq += 1;
    }
}

fn start(rt: &tokio::runtime::Runtime, name: &str) -> Node {
    let dir = std::env::temp_dir().join(format!(
        "sextantctl-observe-{name}-{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let socket = dir.join("observer.sock");
    let (tx, source) = channel(1_024);
    let hub = Hub::new("node-a", StoreConfig::default());
    let s = socket.clone();
    rt.spawn(ingest(source, hub.clone(), Arc::new(enricher())));
    rt.spawn(async move {
        serve_unix(
            ObserverService::new(hub).into_server(),
            &s,
            std::future::pending(),
        )
        .await
    });
    for _ in 0..200 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Node {
        tx,
        seq: 0,
        socket,
        _dir: TempDir(dir),
    }
}

fn sextantctl(socket: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sextantctl"))
        .arg("observe")
        .arg("--server")
        .arg(socket)
        .args(args)
        .output()
        .expect("sextantctl runs")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn observe_prints_the_last_flows_filtered_by_verdict_in_compact_and_json() {
    let rt = runtime();
    let mut node = start(&rt, "last");
    for _ in 0..5 {
        node.send(record(Verdict::Forwarded, 80));
    }
    node.send(record(Verdict::Dropped(133), 5432));
    std::thread::sleep(Duration::from_millis(200));

    let out = sextantctl(&node.socket, &["--last", "3"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[2].contains("shop/web-1:40000 (ID:1001) -> data/db-0:5432 (ID:2002) policy-denied DROPPED (TCP Flags: SYN)"),
        "{text}"
    );

    let out = sextantctl(
        &node.socket,
        &[
            "--verdict",
            "DROPPED",
            "--pod",
            "db",
            "-n",
            "data",
            "-o",
            "json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
    assert_eq!(v["flow"]["verdict"], "DROPPED");
    assert_eq!(v["flow"]["drop_reason_desc"], "POLICY_DENIED");
    assert_eq!(v["flow"]["source"]["pod_name"], "web-1");
    assert_eq!(v["flow"]["destination"]["identity"], 2002);
    assert_eq!(v["flow"]["l4"]["TCP"]["destination_port"], 5432);
    assert_eq!(v["node_name"], "node-a");

    let out = sextantctl(&node.socket, &["--to-port", "80", "-o", "table"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 6, "a header and five rows: {text}");
    assert!(text.starts_with("TIMESTAMP"), "{text}");
}

#[test]
fn observe_follows_new_flows() {
    let rt = runtime();
    let mut node = start(&rt, "follow");
    node.send(record(Verdict::Forwarded, 80));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextantctl"))
        .arg("observe")
        .arg("--server")
        .arg(&node.socket)
        .args(["--follow", "--protocol", "tcp", "--to-port", "443"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("sextantctl runs");
    std::thread::sleep(Duration::from_millis(500));
    node.send(record(Verdict::Forwarded, 80));
    node.send(record(Verdict::Forwarded, 443));
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(l)) = lines.next() {
            let _ = tx.send(l);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("a followed flow");
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("data/db-0:443"), "{line}");
    assert!(line.contains("FORWARDED"), "{line}");
}

#[test]
fn observe_reports_a_malformed_filter_and_exits_non_zero() {
    let rt = runtime();
    let node = start(&rt, "bad");
    let out = sextantctl(&node.socket, &["--port", "http"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("InvalidArgument"), "{err}");
    assert!(err.contains("port"), "{err}");
}
