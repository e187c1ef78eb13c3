//! The endpoint's bounds over real loopback connections: HTTPS (and client
//! certificates), the body limit at 20,000 nodes, the connection cap, and a
//! flood of oversized and slow requests beyond the cap while kube-scheduler's
//! calls keep being answered within its `httpTimeout`.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use serde_json::{Value, json};
use sextant_crds::testing::mk_node_network;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::*;
use crate::{
    fixtures::{TestPki, mk_index},
    index::Index,
    tls::{ServingCert, server_config},
};

/// kube-scheduler's deadline for one extender call (the chart's `httpTimeout`).
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(index: Index, config: ServerConfig, tls: Option<(&TestPki, bool)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("bound");
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let extender = Arc::new(Extender::new(
        Arc::new(RwLock::new(index)),
        metrics.clone(),
        Arc::new(registry),
        config,
    ));
    let task = match tls {
        None => tokio::spawn(serve(listener, extender)),
        Some((pki, client_auth)) => {
            let cert = Arc::new(ServingCert::load(&pki.cert, &pki.key).expect("pair loads"));
            let ca = client_auth.then_some(pki.ca.as_path());
            let config = server_config(cert, ca).expect("TLS config");
            tokio::spawn(serve_tls(
                listener,
                extender,
                TlsAcceptor::from(Arc::new(config)),
            ))
        }
    };
    Server {
        addr,
        metrics,
        task,
    }
}

fn cluster() -> Index {
    mk_index(
        &[
            mk_node_network("n1", "z1").usage(1, 0).build(),
            mk_node_network("n2", "z1").usage(1, 0).build(),
        ],
        &[],
    )
}

fn plain_call() -> String {
    json!({"Pod": {"metadata": {"name": "web-0", "namespace": "shop"}}, "NodeNames": ["n1", "n2"]})
        .to_string()
}

async fn filter_with(client: &reqwest::Client, url: &str, body: String) -> Value {
    let resp = client.post(url).body(body).send().await.expect("answered");
    assert_eq!(resp.status(), 200);
    serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON")
}

#[tokio::test]
async fn serves_filter_over_https_and_never_over_plain_http() {
    let pki = TestPki::new();
    let server = start(cluster(), ServerConfig::default(), Some((&pki, false))).await;
    let url = format!("https://localhost:{}/filter", server.addr.port());
    let v = filter_with(&pki.client(false), &url, plain_call()).await;
    assert_eq!(v["NodeNames"], json!(["n1", "n2"]), "{v}");
    assert_eq!(v["Error"], "");

    // A plain-HTTP request on the same port gets no HTTP answer.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/filter", server.addr.port()))
        .body(plain_call())
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP was answered: {plain:?}");
}

#[tokio::test]
async fn with_a_client_ca_only_a_client_with_a_certificate_is_answered() {
    let pki = TestPki::new();
    let server = start(cluster(), ServerConfig::default(), Some((&pki, true))).await;
    let url = format!("https://localhost:{}/filter", server.addr.port());
    let anonymous = pki.client(false).post(&url).body(plain_call()).send().await;
    assert!(anonymous.is_err(), "answered without a client certificate");
    let v = filter_with(&pki.client(true), &url, plain_call()).await;
    assert_eq!(v["NodeNames"], json!(["n1", "n2"]), "{v}");
}

/// A pod as large as real ones get: a last-applied annotation, several
/// containers with environment, probes and mounts.
fn large_pod() -> Value {
    let env: Vec<Value> = (0..40)
        .map(|i| json!({"name": format!("SETTING_{i:03}"), "value": "x".repeat(60)}))
        .collect();
    let containers: Vec<Value> = (0..6)
        .map(|c| {
            json!({
                "name": format!("c{c}"), "image": "registry.example.com/team/app:1.2.3",
                "env": env, "resources": {"requests": {"cpu": "100m", "sextant.io/ip": "1"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
            })
        })
        .collect();
    json!({
        "metadata": {
            "name": "web-0", "namespace": "shop",
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "y".repeat(16_000)},
            "labels": {"app": "web"},
        },
        "spec": {"containers": containers, "schedulerName": "default-scheduler"},
    })
}

/// EKS-style node names (`ip-10-16-12-34.us-west-2.compute.internal`).
fn node_names(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            format!(
                "ip-10-{}-{}-{}.us-west-2.compute.internal",
                16 + i / 65_536,
                (i / 256) % 256,
                i % 256
            )
        })
        .collect()
}

#[tokio::test]
async fn a_20k_node_call_fits_the_default_body_limit_with_room() {
    let names = node_names(20_000);
    let pod = large_pod();
    let body = json!({"Pod": pod, "Nodes": null, "NodeNames": names}).to_string();
    let pod_bytes = pod.to_string().len();
    eprintln!(
        "nodeCacheCapable call at 20,000 nodes: {} bytes (pod {pod_bytes} bytes); limit {DEFAULT_MAX_BODY_BYTES}",
        body.len()
    );
    assert!(
        body.len() * 4 <= DEFAULT_MAX_BODY_BYTES,
        "{} bytes leave less than 4x headroom",
        body.len()
    );
    let mut index = Index::synced();
    for name in names.iter().step_by(997) {
        index.apply_node(&mk_node_network(name, "us-west-2a").build());
    }
    let server = start(index, ServerConfig::default(), None).await;
    let url = format!("http://{}/filter", server.addr);
    let v = filter_with(&reqwest::Client::new(), &url, body).await;
    assert_eq!(v["Error"], "", "{}", v["Error"]);
    assert_eq!(v["NodeNames"].as_array().map(Vec::len), Some(20_000));
}

#[tokio::test]
async fn a_body_over_the_default_limit_is_refused_with_an_error() {
    let server = start(cluster(), ServerConfig::default(), None).await;
    let url = format!("http://{}/filter", server.addr);
    // Well-formed, just too large: names of 200 characters.
    let names: Vec<String> = (0..25_000).map(|i| format!("{i:0>200}")).collect();
    let body = json!({"Pod": large_pod(), "NodeNames": names}).to_string();
    assert!(body.len() > DEFAULT_MAX_BODY_BYTES);
    let v = filter_with(&reqwest::Client::new(), &url, body).await;
    assert_eq!(
        v["Error"],
        format!("request body exceeds {DEFAULT_MAX_BODY_BYTES} bytes (--max-body-bytes)")
    );
}

/// Opens a connection and sends the start of a request head, never its end.
async fn stalled(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"POST /filter HTTP/1.1\r\nhost: x\r\n")
        .await
        .expect("write");
    s
}

/// Whether the server closed `s` within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A 408 before the close: keep reading to the end.
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn at_the_cap_the_longest_stalled_connection_is_closed_for_the_newcomer() {
    let config = ServerConfig {
        max_connections: 4,
        ..ServerConfig::default()
    };
    let server = start(cluster(), config, None).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(stalled(server.addr).await);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The newcomer is answered at once (well before the 10 s header deadline) ...
    let started = Instant::now();
    let url = format!("http://{}/filter", server.addr);
    let v = filter_with(&reqwest::Client::new(), &url, plain_call()).await;
    assert_eq!(v["NodeNames"], json!(["n1", "n2"]));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // ... because the first stalled connection was closed for it, and only that one.
    assert!(
        closed_within(&mut held[0], Duration::from_secs(1)).await,
        "the oldest stalled connection is still open"
    );
    for s in &mut held[1..] {
        assert!(!closed_within(s, Duration::from_millis(100)).await);
    }
    assert!(server.metrics.connections_evicted() >= 1);
}

/// One attacker: connects again and again until `stop`, each time doing
/// `what` to the server.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// TCP only: never starts the TLS handshake.
    Silent,
    /// TLS, then the request head a byte every 200 ms.
    SlowHead,
    /// TLS, a head announcing 64 MiB, then the body as fast as it goes.
    Oversized,
    /// TLS, a head announcing 100 kB, then a byte every 100 ms.
    SlowBody,
}

async fn attack(addr: SocketAddr, pki: Arc<TestPki>, what: Attack, stop: Arc<AtomicBool>) {
    let connector = pki.connector();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    while !stop.load(Ordering::Relaxed) {
        let Ok(tcp) = TcpStream::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            if let Attack::Silent = what {
                let mut tcp = tcp;
                let mut buf = [0u8; 64];
                // Until the server closes it.
                while !matches!(tcp.read(&mut buf).await, Ok(0) | Err(_)) {}
                return;
            }
            let Ok(mut tls) = connector.connect(name.clone(), tcp).await else {
                return;
            };
            match what {
                Attack::Silent => {}
                Attack::SlowHead => {
                    for b in b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n".iter() {
                        if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Attack::Oversized => {
                    let head =
                        b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: 67108864\r\n\r\n";
                    if tls.write_all(head).await.is_err() {
                        return;
                    }
                    let chunk = vec![b' '; 64 << 10];
                    for _ in 0..1024 {
                        if tls.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                }
                Attack::SlowBody => {
                    let head =
                        b"POST /filter HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n{";
                    if tls.write_all(head).await.is_err() || tls.flush().await.is_err() {
                        return;
                    }
                    loop {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if tls.write_all(b" ").await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
        .await;
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_oversized_and_slow_requests_beyond_the_cap_does_not_keep_kube_scheduler_waiting()
 {
    const CAP: usize = 8;
    let pki = Arc::new(TestPki::new());
    let config = ServerConfig {
        max_connections: CAP,
        ..ServerConfig::default()
    };
    let server = start(cluster(), config, Some((&pki, false))).await;
    let stop = Arc::new(AtomicBool::new(false));
    // Three times the cap, each reconnecting as soon as it is cut.
    let mut attackers = Vec::new();
    for (what, n) in [
        (Attack::Silent, 8),
        (Attack::SlowHead, 6),
        (Attack::Oversized, 4),
        (Attack::SlowBody, 6),
    ] {
        for _ in 0..n {
            attackers.push(tokio::spawn(attack(
                server.addr,
                pki.clone(),
                what,
                stop.clone(),
            )));
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let url = format!("https://localhost:{}/filter", server.addr.port());
    let keep_alive = pki.client(false);
    let mut slowest = Duration::ZERO;
    for k in 0..12 {
        // Half on kube-scheduler's kept-alive connection, half each on a new one.
        let client = if k % 2 == 0 {
            keep_alive.clone()
        } else {
            pki.client(false)
        };
        let started = Instant::now();
        let answer =
            tokio::time::timeout(HTTP_TIMEOUT, client.post(&url).body(plain_call()).send()).await;
        let took = started.elapsed();
        let resp = answer
            .unwrap_or_else(|_| panic!("call {k} not answered within {HTTP_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("call {k} failed after {took:?}: {e}"));
        let v: Value = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("JSON");
        assert_eq!(v["NodeNames"], json!(["n1", "n2"]), "call {k}: {v}");
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let evicted = server.metrics.connections_evicted();
    eprintln!(
        "flood of {} connections on a cap of {CAP}: slowest of 12 filter calls {slowest:?}, {evicted} connections evicted",
        attackers.len()
    );
    for a in attackers {
        a.abort();
    }
    assert!(evicted > 0, "the flood never reached the cap");
    assert!(slowest < HTTP_TIMEOUT);
}
