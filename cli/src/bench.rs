//! Benchmarks: each prints its figure beside a baseline measured in the same
//! run, on the same seed, one line per figure named in the issues.
//!
//! - P1: cloud API calls per resync, instance-scoped vs per-subnet describes.
//! - P2: 100 nodes created at once reaching `preAllocate` under EC2's buckets.
//! - Herd: 6,000 agents reconnecting after a control-plane outage, full
//!   jitter vs plain exponential backoff.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use sextant_cloud::{
    Backoff, BackoffKind, Cloud, CloudConfig, CloudMetrics, CreateEni, EniCloud, RateLimit,
    RateLimits, Tags,
    sim::{SimCloud, SimConfig, SimProvider},
};
use sextant_ipam::resync::{InstanceResync, InstanceScoped, list_vpc};

use crate::{
    herd::{self, AGENT_BACKOFF, HerdConfig},
    simulate::{self, SimulateConfig, Strategy, baselines::PerSubnet},
};

/// Flags of `sextantctl bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Run only these benchmarks (p1, p2, herd); all when empty.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Runs the selected benchmarks.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let wants =
        |name: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(name));
    for name in &args.only {
        if !["p1", "p2", "herd"].contains(&name.to_ascii_lowercase().as_str()) {
            bail!("unknown benchmark {name:?}; known: p1, p2, herd");
        }
    }
    if wants("p1") {
        p1(args.seed)?;
    }
    if wants("p2") {
        p2(args.seed)?;
    }
    if wants("herd") {
        herd_bench(args.seed);
    }
    Ok(())
}

const VPC: &str = "vpc-bench";
const ZONE: &str = "us-east-1a";

/// Calls received by the provider so far.
fn calls(sim: &SimCloud) -> u64 {
    sim.stats().total_calls()
}

/// P1: 1,500 ENIs across 40 subnets (500 m5.large nodes with three ENIs
/// each). Counts what reaches the provider for (a) one node's refresh after a
/// mutation and (b) a round refreshing every node, for Sextant
/// (instance-scoped describe; one paged VPC listing per round) and for the
/// pre-fix per-subnet describes.
fn p1(seed: u64) -> anyhow::Result<()> {
    const SUBNETS: usize = 40;
    const NODES: usize = 500;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(async {
        let sim = Arc::new(SimCloud::new(SimConfig {
            server_throttling: false,
            ..SimConfig::new(SimProvider::Aws, seed)
        }));
        let mut subnets = Vec::new();
        for i in 0..SUBNETS {
            subnets.push(sim.add_subnet(VPC, ZONE, &format!("10.{i}.0.0/20"), Tags::new())?);
        }
        // Counting, not throttling: a limiter that never waits, no retries needed.
        let open = RateLimit {
            per_second: 1e6,
            burst: 1_000_000,
        };
        let cloud = Arc::new(Cloud::new(
            sim.clone(),
            CloudConfig {
                limits: RateLimits {
                    describe: open,
                    mutate_eni: open,
                    mutate_other: open,
                },
                seed: Some(seed),
                ..CloudConfig::default()
            },
            CloudMetrics::default(),
        ));
        let mut instances = Vec::new();
        for n in 0..NODES {
            let subnet = &subnets[n % SUBNETS];
            let instance = sim.add_instance("m5.large", subnet)?;
            for device_index in 1..3 {
                let eni = sim
                    .create_eni(&CreateEni {
                        subnet_id: subnet.clone(),
                        security_groups: vec![],
                        tags: Tags::new(),
                        secondary_ips: 9,
                        description: "bench".into(),
                    })
                    .await?;
                sim.attach_eni(&eni.id, &instance, device_index).await?;
            }
            instances.push(instance);
        }
        let enis = sim.all_enis().len();
        let per_subnet = PerSubnet {
            sim: sim.clone(),
            cloud: cloud.clone(),
            subnets: subnets.clone(),
        };

        // (a) one node's refresh after a mutation.
        let before = calls(&sim);
        let ours = InstanceScoped.instance(cloud.as_ref(), &instances[0], VPC).await?;
        let ours_calls = calls(&sim) - before;
        let before = calls(&sim);
        let theirs = per_subnet.instance(cloud.as_ref(), &instances[0], VPC).await?;
        let theirs_calls = calls(&sim) - before;
        if ours.enis.len() != 3 || theirs.enis.len() != ours.enis.len() {
            bail!(
                "P1: strategies disagree on node 0: instance-scoped saw {} ENIs, per-subnet {}",
                ours.enis.len(),
                theirs.enis.len()
            );
        }
        println!(
            "P1 resync calls per node refresh ({enis} ENIs, {SUBNETS} subnets): sextant {ours_calls}, per-subnet {theirs_calls}, ratio 1/{:.0} (goal 1/40 or better)",
            theirs_calls as f64 / ours_calls.max(1) as f64
        );

        // (b) a round over every node.
        let before = calls(&sim);
        let listed = list_vpc(cloud.as_ref(), VPC).await?;
        let ours_round = calls(&sim) - before;
        let before = calls(&sim);
        let mut theirs_enis = 0;
        for i in &instances {
            theirs_enis += per_subnet.instance(cloud.as_ref(), i, VPC).await?.enis.len();
        }
        let theirs_round = calls(&sim) - before;
        if listed.len() != enis || theirs_enis != enis {
            bail!("P1: a round saw {} ENIs by listing and {theirs_enis} per subnet; the cloud has {enis}", listed.len());
        }
        println!(
            "P1 resync calls per full round ({NODES} nodes): sextant {ours_round} (paged VPC listing), per-subnet {theirs_round}, ratio 1/{:.0}",
            theirs_round as f64 / ours_round.max(1) as f64
        );
        Ok(())
    })
}

/// P2: 100 nodes created at once, each reaching `preAllocate` free IPs,
/// under EC2's published buckets; Sextant against the per-subnet baseline on
/// the same seed.
fn p2(seed: u64) -> anyhow::Result<()> {
    let base = SimulateConfig {
        nodes: 100,
        burst: 100,
        pods_per_node: 0,
        churn_per_minute: 0.0,
        subnets: 40,
        run_for: Duration::from_secs(180),
        seed,
        ..SimulateConfig::default()
    };
    let run = |strategy| {
        simulate::run(
            SimulateConfig {
                strategy,
                ..base.clone()
            },
            None,
        )
        .with_context(|| format!("P2 {}", strategy.name()))
    };
    let ours = run(Strategy::InstanceScoped)?;
    let theirs = run(Strategy::PerSubnet)?;
    for r in [&ours, &theirs] {
        if !r.is_clean() {
            bail!(
                "P2 {}: safety violated (double allocations, released used IPs or leaks)",
                r.strategy.name()
            );
        }
    }
    let secs = |r: &simulate::Report| {
        r.all_ready_after
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .unwrap_or_else(|| format!("not within {} s", base.run_for.as_secs()))
    };
    let ratio = match (ours.all_ready_after, theirs.all_ready_after) {
        (Some(a), Some(b)) => format!("{:.1}x", b.as_secs_f64() / a.as_secs_f64().max(1e-9)),
        (Some(_), None) => format!(
            "> {:.1}x",
            base.run_for.as_secs_f64()
                / ours
                    .all_ready_after
                    .map_or(1.0, |d| d.as_secs_f64().max(1e-9))
        ),
        _ => "n/a".into(),
    };
    println!(
        "P2 100 nodes at once to preAllocate: sextant {} ({} calls, {} throttled by EC2), per-subnet {} ({} calls, {} throttled), ratio {ratio} (goal < 30 s)",
        secs(&ours),
        ours.api_calls,
        ours.throttled,
        secs(&theirs),
        theirs.api_calls,
        theirs.throttled,
    );
    println!(
        "P2 throttling errors surfaced to the reconciler: sextant {}, per-subnet {} (goal 0)",
        ours.throttles_surfaced(),
        theirs.throttles_surfaced()
    );
    Ok(())
}

/// Herd: 6,000 agents lose the API server for two minutes; what it sees when
/// it returns, with Sextant's full-jitter reconnects and with plain
/// exponential backoff, same seed.
fn herd_bench(seed: u64) {
    let config = |kind| HerdConfig {
        agents: 6_000,
        outage: Duration::from_secs(120),
        admit_per_second: 500,
        backoff: Backoff {
            kind,
            ..AGENT_BACKOFF
        },
        seed,
    };
    let ours = herd::simulate(&config(BackoffKind::FullJitter));
    let theirs = herd::simulate(&config(BackoffKind::Plain));
    println!(
        "Herd peak requests/s after a 120 s outage (6,000 agents, server admits 500/s): sextant {}/s, plain exponential {}/s, ratio {:.1}x",
        ours.peak_per_second,
        theirs.peak_per_second,
        theirs.peak_per_second as f64 / ours.peak_per_second.max(1) as f64
    );
    println!(
        "Herd time until every agent is back: sextant {:.1} s ({} refused), plain exponential {:.1} s ({} refused), ratio {:.1}x",
        ours.all_through.as_secs_f64(),
        ours.refused,
        theirs.all_through.as_secs_f64(),
        theirs.refused,
        theirs.all_through.as_secs_f64() / ours.all_through.as_secs_f64().max(1e-9)
    );
}
