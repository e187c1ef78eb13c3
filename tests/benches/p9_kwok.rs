//! P9: Sextant at scale on a real control plane: kwok nodes arriving 100 at
//! a time against the upstream kube-apiserver, the operator on the
//! simulated cloud (EC2's buckets) under its chart identity, and the real
//! kube-scheduler calling Sextant's extender.
//!
//! Prints:
//! - how many kwok nodes this machine held (`SEXTANT_P9_NODES`, default 1,000);
//! - time until every NodeNetwork holds `preAllocate` free addresses, and
//!   each node's own wait (creation → pool ready) p50/p99 against the
//!   seeds' goal of under a minute;
//! - operator reconciles per second over that window;
//! - API requests per second by each Sextant identity, from the API
//!   server's own audit log (user, verb, resource of every request);
//! - scheduling latency (pod created → bound, as seen by a watch) through
//!   kube-scheduler with the extender against the same kube-scheduler
//!   build with no extender, in the same run, and the extender's own
//!   filter p50/p99 from its histogram.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use sextant_crds::NodeNetwork;
use sextant_e2e::cluster::{
    Cluster, Options, Process, install,
    supervisor::{free_port, scheduler_config},
};

const PRE_ALLOCATE: usize = 8;
const BURST: usize = 100;
const PODS: usize = 200;
/// Sextant's components: the chart's ServiceAccounts (the bench itself and
/// kwok use the admin certificate).
const SEXTANT_USERS: &str = "system:serviceaccount:sextant-system:";

fn node(name: &str, i: usize) -> Node {
    let zone = ["us-east-1a", "us-east-1b"][i % 2];
    install::kwok_node(name, zone, &format!("i-0{i:016x}"), "m5.4xlarge")
}

fn free(nn: &NodeNetwork) -> usize {
    let Some(s) = &nn.status else { return 0 };
    let used = s.usage.as_ref().map(|u| u.used.len()).unwrap_or(0);
    s.pool
        .keys()
        .filter(|ip| !s.fixed_ips.contains_key(*ip) && !s.release.contains_key(*ip))
        .count()
        .saturating_sub(used)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// p50/p99 from a Prometheus histogram's cumulative buckets in `text`.
fn histogram_quantiles(text: &str, name: &str) -> Option<(f64, f64, u64)> {
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{")) {
            let le = rest.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count: u64 = rest.rsplit(' ').next()?.parse().ok()?;
            buckets.push((le, count));
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0 {
        return None;
    }
    let at = |q: f64| {
        let want = (total as f64 * q).ceil() as u64;
        let mut prev = (0.0, 0u64);
        for &(le, c) in &buckets {
            if c >= want {
                if le.is_infinite() {
                    return prev.0;
                }
                let span = (c - prev.1).max(1) as f64;
                return prev.0 + (le - prev.0) * ((want - prev.1) as f64 / span);
            }
            prev = (le, c);
        }
        prev.0
    };
    Some((at(0.5), at(0.99), total))
}

fn counter_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(addr: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Requests per user in the audit log between `from` and `to` (RFC 3339
/// stage timestamps compared as text, which sorts like time in UTC).
fn audit_by_user(c: &Cluster, from: &str, to: &str) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(c.info.dir.join("logs/audit.log")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if ev["stage"] != "ResponseComplete" {
            continue;
        }
        let ts = ev["stageTimestamp"].as_str().unwrap_or_default();
        if ts < from || ts > to {
            continue;
        }
        let user = ev["user"]["username"].as_str().unwrap_or("?").to_owned();
        *out.entry(user).or_default() += 1;
    }
    out
}

fn now_rfc3339() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Creates `PODS` pods for each of `schedulers`, interleaved (pod i goes
/// to `schedulers[i % n]`, both schedulers running at once, so neither is
/// favoured by what else the machine is doing), four creates in flight;
/// returns per scheduler each pod's wait from just before its create call
/// to a watch seeing it bound, in ms, sorted.
async fn schedule(client: &Client, ns: &str, schedulers: &[&str]) -> HashMap<String, Vec<f64>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let created: Arc<Mutex<HashMap<String, (String, Instant)>>> = Arc::default();
    let waits: Arc<Mutex<HashMap<String, Vec<f64>>>> = Arc::default();
    let watch = {
        let created = created.clone();
        let waits = waits.clone();
        let stream =
            watcher(pods.clone(), watcher::Config::default().labels("p9-pod=1")).applied_objects();
        tokio::spawn(async move {
            let mut seen = std::collections::HashSet::new();
            let mut stream = std::pin::pin!(stream);
            while let Ok(Some(pod)) = stream.try_next().await {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let bound = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.as_ref())
                    .is_some();
                if bound && seen.insert(name.clone()) {
                    let entry = created.lock().expect("lock").get(&name).cloned();
                    if let Some((scheduler, t0)) = entry {
                        waits
                            .lock()
                            .expect("lock")
                            .entry(scheduler)
                            .or_default()
                            .push(t0.elapsed().as_secs_f64() * 1e3);
                    }
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let total = PODS * schedulers.len();
    stream::iter(0..total)
        .for_each_concurrent(4, |i| {
            let pods = pods.clone();
            let created = created.clone();
            let scheduler = schedulers[i % schedulers.len()].to_owned();
            async move {
                let name = format!("{scheduler}-{i}");
                let pod: Pod = serde_json::from_value(serde_json::json!({
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": name, "labels": {"p9-pod": "1"}},
                    "spec": {
                        "schedulerName": scheduler,
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": "c", "image": "fake",
                            "resources": {"requests": {"sextant.io/ip": "1"}, "limits": {"sextant.io/ip": "1"}}}],
                    },
                }))
                .expect("pod");
                // Recorded before the call, so a watch event can't beat it.
                created
                    .lock()
                    .expect("lock")
                    .insert(name.clone(), (scheduler, Instant::now()));
                if pods.create(&PostParams::default(), &pod).await.is_err() {
                    created.lock().expect("lock").remove(&name);
                }
            }
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = |w: &HashMap<String, Vec<f64>>| w.values().map(Vec::len).sum::<usize>();
    while done(&waits.lock().expect("lock")) < created.lock().expect("lock").len()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    watch.abort();
    let mut out = waits.lock().expect("lock").clone();
    for w in out.values_mut() {
        w.sort_by(f64::total_cmp);
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes: usize = std::env::var("SEXTANT_P9_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let extender_port = free_port()?;
    let c = Cluster::start(
        std::path::Path::new(env!("CARGO_BIN_EXE_sextant-cluster")),
        &Options {
            extender_port: Some(extender_port),
            extender_ignorable: false,
            audit: true,
            ..Options::default()
        },
    )?;
    let values = format!(
        "provider: sim\nregion: us-east-1\nclusterName: p9\nvpcId: vpc-sim\nipam:\n  preAllocate: {PRE_ALLOCATE}\nsim:\n  instanceType: m5.4xlarge\n  vpcCidr: 10.0.0.0/16\n"
    );
    let rendered = install::install(&c, Some(values))?;
    let (op, op_addr) = install::run_operator(&c, &rendered, "sextant-operator-p9", vec![]).await?;
    let ext_addr = format!("127.0.0.1:{extender_port}");
    // The extender's metrics are on its plain-HTTP admin port (the extender
    // port is HTTPS with client certificates).
    let (ext, ext_admin) =
        install::run_scheduler_ext_with_admin(&c, &rendered, "sextant-scheduler-ext-p9", &ext_addr)
            .await?;
    let admin = c.admin().await?;

    // Nodes, 100 at a time; each one's NodeNetwork watched until its pool
    // holds preAllocate free addresses.
    let created_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let ready_after: Arc<Mutex<HashMap<String, f64>>> = Arc::default();
    let nn_watch = {
        let created_at = created_at.clone();
        let ready_after = ready_after.clone();
        let api: Api<NodeNetwork> = Api::all(admin.clone());
        tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher(api, watcher::Config::default()).applied_objects());
            while let Ok(Some(nn)) = s.try_next().await {
                let name = nn.metadata.name.clone().unwrap_or_default();
                if free(&nn) >= PRE_ALLOCATE {
                    let t0 = created_at.lock().expect("lock").get(&name).copied();
                    if let Some(t0) = t0 {
                        ready_after
                            .lock()
                            .expect("lock")
                            .entry(name)
                            .or_insert(t0.elapsed().as_secs_f64());
                    }
                }
            }
        })
    };
    let window_from = now_rfc3339();
    let reconciles_before = counter_sum(&scrape(&op_addr), "sextant_operator_reconciles");
    let start = Instant::now();
    let nodes_api: Api<Node> = Api::all(admin.clone());
    let mut held = 0;
    for burst in (0..nodes).collect::<Vec<_>>().chunks(BURST) {
        let results: Vec<bool> = stream::iter(burst.iter().copied())
            .map(|i| {
                let api = nodes_api.clone();
                let created_at = created_at.clone();
                async move {
                    let name = format!("p9-node-{i:05}");
                    created_at.lock().expect("lock").insert(name.clone(), Instant::now());
                    let ok = api.create(&PostParams::default(), &node(&name, i)).await.is_ok();
                    // What the device plugin would advertise.
                    let patch = serde_json::json!({"status": {"capacity": {"sextant.io/ip": "32"}, "allocatable": {"sextant.io/ip": "32"}}});
                    let _ = api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)).await;
                    ok
                }
            })
            .buffer_unordered(20)
            .collect()
            .await;
        held += results.iter().filter(|ok| **ok).count();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "P9: {held} kwok nodes created in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let n = ready_after.lock().expect("lock").len();
        if n >= held || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let all_ready = start.elapsed().as_secs_f64();
    let window_to = now_rfc3339();
    let op_metrics = scrape(&op_addr);
    let reconciles = counter_sum(&op_metrics, "sextant_operator_reconciles") - reconciles_before;
    nn_watch.abort();
    let mut waits: Vec<f64> = ready_after
        .lock()
        .expect("lock")
        .values()
        .copied()
        .collect();
    waits.sort_by(f64::total_cmp);
    let ready = waits.len();
    let by_user = audit_by_user(&c, &window_from, &window_to);

    // Scheduling with and without the extender, same scheduler build.
    let ns = c.namespace("p9").await?;
    let plain_cfg = c.info.dir.join("plain-scheduler.yaml");
    std::fs::write(
        &plain_cfg,
        scheduler_config(&c.info.scheduler.kubeconfig, "plain-scheduler", None, false),
    )?;
    let plain: Process = c.spawn(
        "plain-scheduler",
        &c.info.kube_bin.join("kube-scheduler"),
        &[
            format!("--config={}", plain_cfg.display()),
            format!(
                "--authentication-kubeconfig={}",
                c.info.scheduler.kubeconfig.display()
            ),
            format!(
                "--authorization-kubeconfig={}",
                c.info.scheduler.kubeconfig.display()
            ),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            format!(
                "--cert-dir={}",
                c.info.dir.join("plain-scheduler-certs").display()
            ),
        ],
        &[],
    )?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut bound = schedule(&admin, &ns, &["default-scheduler", "plain-scheduler"]).await;
    let with_ext = bound.remove("default-scheduler").unwrap_or_default();
    let without = bound.remove("plain-scheduler").unwrap_or_default();
    let ext_metrics = scrape(&ext_admin);
    drop(plain);

    println!("P9 kwok nodes held: {held} of {nodes} asked (this machine, 2 cores)");
    let ok = ready == held;
    println!(
        "P9 node-network bootstrap: {ready}/{held} NodeNetworks at preAllocate={PRE_ALLOCATE} after {all_ready:.1} s (nodes created 100 at a time) {}",
        if ok { "" } else { "(not all ready: MISSED)" }
    );
    let p99 = quantile(&waits, 0.99);
    println!(
        "P9 node ready wait: p50 {:.1} s, p99 {p99:.1} s, goal < 60 s per node: {}",
        quantile(&waits, 0.5),
        if ok && p99 < 60.0 { "MET" } else { "MISSED" }
    );
    println!(
        "P9 operator reconciles: {:.1}/s ({reconciles:.0} in {all_ready:.1} s)",
        reconciles / all_ready
    );
    let secs = all_ready.max(1.0);
    for (user, n) in &by_user {
        if user.starts_with(SEXTANT_USERS) {
            println!("P9 API requests by {user}: {:.1}/s ({n})", *n as f64 / secs);
        }
    }
    let total: u64 = by_user.values().sum();
    let sextant: u64 = by_user
        .iter()
        .filter(|(u, _)| u.starts_with(SEXTANT_USERS))
        .map(|(_, n)| n)
        .sum();
    println!(
        "P9 API requests: Sextant {:.1}/s of {:.1}/s in total ({:.0}%; kwok's heartbeats, kube-controller-manager and the bench itself are the rest)",
        sextant as f64 / secs,
        total as f64 / secs,
        100.0 * sextant as f64 / total.max(1) as f64
    );
    // What the cloud saw: the operator's own call counters by action.
    let mut calls: BTreeMap<String, f64> = BTreeMap::new();
    for line in op_metrics.lines() {
        if let Some(rest) = line.strip_prefix("sextant_cloud_api_calls_total{")
            && let Some(action) = rest
                .split("action=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
            && let Some(n) = rest.rsplit(' ').next().and_then(|n| n.parse::<f64>().ok())
        {
            *calls.entry(action.to_owned()).or_default() += n;
        }
    }
    let listed: Vec<String> = calls.iter().map(|(a, n)| format!("{a} {n:.0}")).collect();
    println!(
        "P9 cloud calls for {held} nodes (simulated EC2 with its buckets): {:.0} in total, {:.2} per node ({})",
        calls.values().sum::<f64>(),
        calls.values().sum::<f64>() / held.max(1) as f64,
        listed.join(", ")
    );
    let (a50, a99) = (quantile(&with_ext, 0.5), quantile(&with_ext, 0.99));
    let (b50, b99) = (quantile(&without, 0.5), quantile(&without, 0.99));
    println!(
        "P9 pod scheduling p50: with extender {a50:.1} ms, without {b50:.1} ms, ratio {:.2}x ({} / {} pods bound)",
        a50 / b50,
        with_ext.len(),
        without.len()
    );
    println!(
        "P9 pod scheduling p99: with extender {a99:.1} ms, without {b99:.1} ms, ratio {:.2}x; goal extender adds < 10 ms at p99: {}",
        a99 / b99,
        if with_ext.len() == PODS && a99 - b99 < 10.0 {
            "MET"
        } else {
            "MISSED"
        }
    );
    if let Some((f50, f99, n)) = histogram_quantiles(
        &ext_metrics,
        "sextant_scheduler_ext_filter_duration_seconds",
    ) {
        println!(
            "P9 extender filter (its histogram, {n} calls from kube-scheduler, {held} nodes): p50 {:.2} ms, p99 {:.2} ms",
            f50 * 1e3,
            f99 * 1e3
        );
    } else {
        println!("P9 extender filter: no calls recorded (MISSED)");
    }
    op.assert_no_forbidden()?;
    ext.assert_no_forbidden()?;
    Ok(())
}
