//! A real Prometheus (Debian's `prometheus`, installed by
//! `scripts/setup.sh`) scraping Sextant components for the tests, optionally
//! inside a network namespace (a lab node's), and its HTTP query API.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where Debian installs it.
const BINARY: &str = "/usr/bin/prometheus";

/// A running Prometheus; killed, reaped and its data removed when dropped.
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    port: u16,
    netns: Option<PathBuf>,
}

impl Prometheus {
    /// Starts Prometheus scraping each `(job, host:port)` every second,
    /// listening on `127.0.0.1:port`; with `netns` (a path such as
    /// `/var/run/netns/<name>`) it runs, and is queried, in that namespace.
    pub fn start(targets: &[(&str, String)], port: u16, netns: Option<&Path>) -> Result<Self> {
        if !Path::new(BINARY).exists() {
            bail!(
                "Debian's prometheus is missing: run `make setup` (scripts/setup.sh installs it)"
            );
        }
        let dir = std::env::temp_dir().join(format!("sextant-prom-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut config = String::from("global:\n  scrape_interval: 1s\nscrape_configs:\n");
        for (job, target) in targets {
            config.push_str(&format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        std::fs::write(dir.join("prometheus.yml"), config)?;
        let mut cmd = in_netns(netns, BINARY);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().context("starting prometheus")?;
        Ok(Prometheus {
            child,
            dir,
            port,
            netns: netns.map(Path::to_path_buf),
        })
    }

    /// The first result of an instant query: its labels and value.
    pub fn query(&self, q: &str) -> Option<(Value, String)> {
        let encoded: String = q
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let path = format!("/api/v1/query?query={encoded}");
        let body = match &self.netns {
            None => get(self.port, &path).ok()?,
            Some(ns) => {
                let out = in_netns(Some(ns), "curl")
                    .args(["-sf", "--max-time", "5"])
                    .arg(format!("http://127.0.0.1:{}{path}", self.port))
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).into_owned())?
            }
        };
        let v: Value = serde_json::from_str(&body).ok()?;
        let first = v["data"]["result"].get(0)?.clone();
        let value = first["value"][1].as_str()?.to_owned();
        Some((first["metric"].clone(), value))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` run in `netns` (through `nsenter`) or here.
fn in_netns(netns: Option<&Path>, program: &str) -> Command {
    match netns {
        None => Command::new(program),
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg(program);
            c
        }
    }
}

/// A plain HTTP/1.0 GET on loopback, returning the body of a 200.
pub fn get(port: u16, path: &str) -> Result<String> {
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

/// Polls `f` every 200 ms until it returns `Some`, or fails after `within`.
pub fn wait_for<T>(within: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T> {
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
