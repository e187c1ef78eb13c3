//! A real Prometheus (Debian's `prometheus`) scrapes a running Sextant
//! component: the `sextant-webhook` binary, serving HTTPS with a certificate
//! made here and `/metrics` on plain HTTP. The test answers one review, then
//! asks Prometheus's HTTP API for the target's health and for the
//! `sextant_webhook_reviews_total` series.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use sextant_testkit::prometheus::{Prometheus, get, wait_for};

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

#[test]
fn prometheus_scrapes_the_webhooks_sextant_series() -> Result<()> {
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

    let prom = Prometheus::start(
        &[("sextant-webhook", format!("127.0.0.1:{metrics}"))],
        prom,
        None,
    )?;
    let (_, up) = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the webhook",
        || {
            prom.query("up{job=\"sextant-webhook\"}")
                .filter(|(_, v)| v == "1")
        },
    )?;
    assert_eq!(up, "1");
    let (labels, count) = wait_for(
        Duration::from_secs(30),
        "sextant_webhook_reviews_total",
        || prom.query("sextant_webhook_reviews_total"),
    )?;
    assert_eq!(count, "1", "one review answered: {labels}");
    assert_eq!(labels["job"], "sextant-webhook");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
