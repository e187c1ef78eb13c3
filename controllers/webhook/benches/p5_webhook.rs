//! Benchmark P5: AdmissionReviews per second and p99 latency of the webhook
//! on loopback over TLS with keep-alive, against a baseline measured in the
//! same run: a plain-JSON echo server on the same stack (rustls, hyper
//! HTTP/1.1, the same certificate), so the ratio is what parsing, `mutate`
//! and encoding cost on top of TLS and HTTP.
//!
//! Goal (issue 4): >= 10,000 reviews/s on 2 cores, p99 <= 2 ms. Prints
//! figures; asserts nothing about time.
//!
//! Method: the two servers are measured in alternating rounds (baseline,
//! sextant, baseline, ...), and the figures are the medians over the
//! rounds, the ratio the median of each round's own ratio: whatever else the
//! machine does then weighs on both sides alike, so the ratio holds still
//! from run to run where one long run of each swung by a third.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use http::{Request, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use sextant_webhook::tls::server_config;
use support::{TestPki, TestWebhook, pod_create_review};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Concurrent keep-alive connections (the API server keeps a few per
/// webhook endpoint).
const CONNECTIONS: usize = 8;
const WARMUP: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_millis(700);
/// Alternating rounds of each server.
const ROUNDS: usize = 7;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run())
}

struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    count: usize,
}

async fn run() -> anyhow::Result<()> {
    let pki = TestPki::new("bench CA");
    let hook = TestWebhook::start(&pki).await;
    let echo = start_echo(&hook).await?;
    let connector = connector(&pki)?;
    let body = Bytes::from(serde_json::to_vec(&pod_create_review())?);

    // The webhook really patches this fixture: check once before timing.
    let first = one_request(&connector, hook.addr, &body).await?;
    if !first.contains("\"patch\"") {
        bail!("webhook answer without a patch: {first}");
    }

    let mut baselines = Vec::with_capacity(ROUNDS);
    let mut ours = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        baselines.push(load(&connector, echo, &body).await?);
        ours.push(load(&connector, hook.addr, &body).await?);
    }
    let ratios: Vec<f64> = ours
        .iter()
        .zip(&baselines)
        .map(|(s, b)| s.per_second / b.per_second.max(1.0))
        .collect();
    let sextant = Figures {
        per_second: median(ours.iter().map(|f| f.per_second)),
        p50_ms: median(ours.iter().map(|f| f.p50_ms)),
        p99_ms: median(ours.iter().map(|f| f.p99_ms)),
        count: ours.iter().map(|f| f.count).sum(),
    };
    let baseline_per_second = median(baselines.iter().map(|f| f.per_second));
    let baseline_p99 = median(baselines.iter().map(|f| f.p99_ms));
    let ratio = median(ratios.iter().copied());
    let (lo, hi) = ratios
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
    let met = sextant.per_second >= 10_000.0 && sextant.p99_ms <= 2.0;
    println!(
        "P5 webhook reviews/s: sextant {:.0}/s, p50 {:.2} ms, p99 {:.2} ms ({} reviews); \
         baseline JSON echo on the same TLS stack {:.0}/s, p99 {:.2} ms; ratio {:.2} \
         (rounds {lo:.2}..{hi:.2}; median of {ROUNDS} alternating rounds, {CONNECTIONS} keep-alive \
         connections, 2 worker threads; goal >= 10000/s, p99 <= 2 ms: {})",
        sextant.per_second,
        sextant.p50_ms,
        sextant.p99_ms,
        sextant.count,
        baseline_per_second,
        baseline_p99,
        ratio,
        if met { "MET" } else { "MISSED" },
    );
    hook.task.abort();
    Ok(())
}

fn connector(pki: &TestPki) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The baseline: answers every POST with its own body, same TLS and HTTP.
async fn start_echo(hook: &TestWebhook) -> anyhow::Result<SocketAddr> {
    let acceptor = TlsAcceptor::from(server_config(hook.cert.clone())?);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let body = req.into_body().collect().await.map(|b| b.to_bytes());
                    let mut resp = http::Response::new(Full::new(body.unwrap_or_default()));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("application/json"),
                    );
                    Ok::<_, Infallible>(resp)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(connector: &TlsConnector, addr: SocketAddr) -> anyhow::Result<Sender> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn send(sender: &mut Sender, body: &Bytes) -> anyhow::Result<Bytes> {
    let req = Request::post("/mutate")
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body.clone()))?;
    sender.ready().await?;
    let resp = sender.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("HTTP {}", resp.status());
    }
    Ok(resp.into_body().collect().await?.to_bytes())
}

async fn one_request(
    connector: &TlsConnector,
    addr: SocketAddr,
    body: &Bytes,
) -> anyhow::Result<String> {
    let mut sender = connect(connector, addr).await?;
    let answer = send(&mut sender, body).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `CONNECTIONS` clients, each sending one review after the other on its
/// own keep-alive connection; warm-up, then measure.
async fn load(connector: &TlsConnector, addr: SocketAddr, body: &Bytes) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + MEASURE;
    let mut tasks = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut sender = connect(connector, addr).await?;
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                send(&mut sender, &body).await?;
                if t0 >= measure_from {
                    latencies.push(t0.elapsed());
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.context("load task")??);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(Figures {
        per_second: all.len() as f64 / MEASURE.as_secs_f64(),
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        count: all.len(),
    })
}

/// The median of `values` (0 when empty).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
