//! A real Prometheus (Debian's `prometheus`) scrapes a running Sextant
//! component: the `sextant-webhook` binary, serving HTTPS with a certificate
//! made here and `/metrics` on plain HTTP. The test answers one review, then
//! asks Prometheus's HTTP API for the target's health and for the
//! `sextant_webhook_reviews_total` series.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Kills and reaps a child process when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `target/<profile>/<name>` beside this test's own binary (`.../deps/`).
fn workspace_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target directory")?;
    let bin = dir.join(name);
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p sextant-operator -p sextant-webhook --bins` (make test builds every binary)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A plain HTTP/1.0 GET on loopback, returning the body.
fn get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no HTTP body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

/// Polls `f` until it returns `Some`, or fails after `within`.
fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > within {
            bail!("timed out after {within:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of the first result of an instant query, if any.
fn query(prom: u16, q: &str) -> Option<(Value, String)> {
    let encoded: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get(prom, &format!("/api/v1/query?query={encoded}")).ok()?;
    let v: Value = serde_json::from_str(&body).ok()?;
    let first = v["data"]["result"].get(0)?.clone();
    let value = first["value"][1].as_str()?.to_owned();
    Some((first["metric"].clone(), value))
}

#[test]
fn prometheus_scrapes_the_webhooks_sextant_series() -> Result<()> {
    let prometheus = Path::new("/usr/bin/prometheus");
    if !prometheus.exists() {
        bail!("Debian's prometheus is missing: run `make setup` (scripts/setup.sh installs it)");
    }
    let webhook = workspace_bin("sextant-webhook")?;
    let dir = std::env::temp_dir().join(format!("sextant-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .arg("-keyout")
        .arg(dir.join("tls.key"))
        .arg("-out")
        .arg(dir.join("tls.crt"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running openssl to make a certificate")?;
    if !status.success() {
        bail!("openssl failed to make a certificate");
    }

    let (https, metrics, prom) = (free_port()?, free_port()?, free_port()?);
    let _webhook = Running(
        Command::new(&webhook)
            .arg("--listen")
            .arg(format!("127.0.0.1:{https}"))
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{metrics}"))
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sextant-webhook")?,
    );
    wait_for(Duration::from_secs(20), "the webhook's /healthz", || {
        get(metrics, "/healthz").ok()
    })?;

    // One review, malformed on purpose: it is answered (allowed: false) and counted.
    let out = Command::new("curl")
        .args([
            "-sk",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data",
            "{\"not\": \"a review\"}",
        ])
        .arg(format!("https://127.0.0.1:{https}/mutate"))
        .output()
        .context("running curl")?;
    let answer: Value =
        serde_json::from_slice(&out.stdout).context("the webhook's answer is JSON")?;
    assert_eq!(answer["kind"], "AdmissionReview", "{answer}");

    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sextant-webhook\n    static_configs:\n      - targets: ['127.0.0.1:{metrics}']\n"
        ),
    )?;
    let _prometheus = Running(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prometheus")?,
    );

    let (_, up) = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the webhook",
        || query(prom, "up{job=\"sextant-webhook\"}").filter(|(_, v)| v == "1"),
    )?;
    assert_eq!(up, "1");
    let (labels, count) = wait_for(
        Duration::from_secs(30),
        "sextant_webhook_reviews_total",
        || query(prom, "sextant_webhook_reviews_total"),
    )?;
    assert_eq!(count, "1", "one review answered: {labels}");
    assert_eq!(labels["job"], "sextant-webhook");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
