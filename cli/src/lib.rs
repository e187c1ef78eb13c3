//! `sextantctl`: run Sextant's node IPAM against a simulated cloud
//! (`simulate`, `roll`), print the benchmark figures (`bench`), show a node
//! in network namespaces (`lab`), convert CiliumNetworkPolicy YAML for
//! Sextant (`policy convert`) and show flows from an observer (`observe`).
//!
//! Boundaries: it drives the core crates (`sextant-ipam`, `sextant-cloud`'s
//! `sim`, `sextant-policy`) and, for `lab`, the `sextant-lab` binary; never
//! the operator's kube shell, so what it simulates is the code the operator
//! runs. Its simulated agents are still a model of the agent (issue 14 moves
//! them onto `sextant-agent-core`).

pub mod bench;
pub mod herd;
pub mod lab;
pub mod observe;
pub mod policy;
pub mod roll;
pub mod simulate;

use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use sextant_cloud::sim::SimProvider;
use simulate::{SimulateConfig, Strategy};

/// Sextant's command line.
#[derive(Parser, Debug)]
#[command(name = "sextantctl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator's node IPAM on a simulated cloud and compare resync strategies.
    Simulate(SimulateArgs),
    /// Roll a fixed-IP StatefulSet across simulated nodes while nodes fail, and audit its addresses.
    Roll(RollArgs),
    /// Build a small node with pods in network namespaces on this machine, run
    /// the real agent, CNI and eBPF datapath, and print a connectivity table (root).
    Lab(LabArgs),
    /// Print the benchmark figures (P1, P2, thundering herd) with their baselines.
    Bench(bench::BenchArgs),
    /// Network policy tools: convert CiliumNetworkPolicy YAML for Sextant.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Show flows from a node's observer or the relay, like `hubble observe`.
    Observe(Box<observe::ObserveArgs>),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProviderArg {
    Aws,
    Alibaba,
}

/// Flags of `sextantctl lab`.
#[derive(clap::Args, Debug)]
struct LabArgs {
    /// Pods in the lab node.
    #[arg(long, default_value_t = 4)]
    pods: usize,
}

/// `sextant-lab` beside this binary (a cargo target dir), or on PATH.
fn lab_binary() -> std::path::PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("sextant-lab")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| "sextant-lab".into())
}

/// Flags of `sextantctl roll`.
#[derive(clap::Args, Debug)]
struct RollArgs {
    /// Nodes.
    #[arg(long, default_value_t = 200)]
    nodes: usize,
    /// StatefulSet replicas.
    #[arg(long, default_value_t = 50)]
    replicas: u32,
    /// Rolling updates.
    #[arg(long, default_value_t = 3)]
    rolls: u32,
    /// Nodes failing during each roll.
    #[arg(long, default_value_t = 5)]
    failures_per_roll: usize,
    /// Seed of every choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Flags of `sextantctl simulate`.
#[derive(clap::Args, Debug)]
struct SimulateArgs {
    /// Nodes in all.
    #[arg(long, default_value_t = 300)]
    nodes: usize,
    /// Nodes created at once.
    #[arg(long, default_value_t = 100)]
    burst: usize,
    /// Seconds between waves of nodes.
    #[arg(long, default_value_t = 30)]
    wave_interval: u64,
    /// Cloud whose limits and throttling are simulated.
    #[arg(long, value_enum, default_value = "aws")]
    provider: ProviderArg,
    /// Instance type of every node (m5.large, m5.4xlarge, c5.18xlarge, ecs.g7.large, ...).
    #[arg(long)]
    instance_type: Option<String>,
    /// Pods per node.
    #[arg(long, default_value_t = 30)]
    pods_per_node: u32,
    /// Fraction of a node's pods replaced per minute.
    #[arg(long, default_value_t = 0.1)]
    churn: f64,
    /// Fraction of cloud calls answered "throttled" on top of the provider's buckets.
    #[arg(long, default_value_t = 0.0)]
    throttle_ratio: f64,
    /// Fraction of cloud calls failing with a server error.
    #[arg(long, default_value_t = 0.0)]
    error_ratio: f64,
    /// Subnets in the VPC.
    #[arg(long, default_value_t = 4)]
    subnets: usize,
    /// preAllocate default.
    #[arg(long, default_value_t = 8)]
    pre_allocate: u32,
    /// Simulated seconds to run after the last wave.
    #[arg(long, default_value_t = 600)]
    run_for: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run only Sextant's strategy, without the two baselines.
    #[arg(long)]
    no_baselines: bool,
    /// Every node's ipam.firstInterfaceIndex (unset: the CRD default 1, the
    /// primary ENI left alone; 0 fills the primary's secondary slots first).
    #[arg(long)]
    first_interface_index: Option<u32>,
}

impl SimulateArgs {
    fn config(&self) -> SimulateConfig {
        let (provider, default_type) = match self.provider {
            ProviderArg::Aws => (SimProvider::Aws, "m5.4xlarge"),
            ProviderArg::Alibaba => (SimProvider::Alibaba, "ecs.g7.2xlarge"),
        };
        SimulateConfig {
            nodes: self.nodes,
            burst: self.burst,
            wave_interval: Duration::from_secs(self.wave_interval),
            provider,
            instance_type: self
                .instance_type
                .clone()
                .unwrap_or_else(|| default_type.into()),
            pods_per_node: self.pods_per_node,
            churn_per_minute: self.churn,
            throttle_ratio: self.throttle_ratio,
            error_ratio: self.error_ratio,
            seed: self.seed,
            subnets: self.subnets,
            pre_allocate: self.pre_allocate,
            run_for: Duration::from_secs(self.run_for),
            first_interface_index: self.first_interface_index,
            ..SimulateConfig::default()
        }
    }
}

fn progress(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix:>28} [{bar:40}] {pos}/{len} simulated s ({elapsed} real)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(label.to_owned());
    bar
}

/// Runs the command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Simulate(args) => {
            let base = args.config();
            if base.instance_type.is_empty()
                || sextant_cloud::sim::instance_type(&base.instance_type).is_none()
            {
                let known: Vec<_> = sextant_cloud::sim::INSTANCE_TYPES
                    .iter()
                    .map(|t| t.0)
                    .collect();
                anyhow::bail!(
                    "unknown instance type {:?}; the simulator knows {}",
                    base.instance_type,
                    known.join(", ")
                );
            }
            if !(0.0..1.0).contains(&base.throttle_ratio) || !(0.0..1.0).contains(&base.error_ratio)
            {
                anyhow::bail!("--throttle-ratio and --error-ratio must be in [0, 1)");
            }
            println!(
                "Simulating {} {} nodes on {:?} ({} at once, {} pods each, churn {}/min, throttle ratio {}, seed {})",
                base.nodes,
                base.instance_type,
                base.provider,
                base.burst,
                base.pods_per_node,
                base.churn_per_minute,
                base.throttle_ratio,
                base.seed
            );
            let strategies = if args.no_baselines {
                vec![Strategy::InstanceScoped]
            } else {
                vec![
                    Strategy::InstanceScoped,
                    Strategy::PerSubnet,
                    Strategy::VpcWide,
                ]
            };
            let mut reports = Vec::new();
            for s in strategies {
                let config = SimulateConfig {
                    strategy: s,
                    ..base.clone()
                };
                reports.push(simulate::run(config, Some(progress(s.name())))?);
            }
            println!("{}", simulate::print_comparison(&reports));
            let bad: Vec<_> = reports.iter().filter(|r| !r.is_clean()).collect();
            if !bad.is_empty() {
                anyhow::bail!(
                    "safety violated in {}: double allocations, released used IPs or leaks above",
                    bad.iter()
                        .map(|r| r.strategy.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(())
        }
        Command::Roll(args) => {
            if args.replicas == 0 || args.nodes == 0 {
                anyhow::bail!("--replicas and --nodes must be at least 1");
            }
            println!(
                "Rolling a {}-replica fixed-IP StatefulSet {} times across {} nodes, {} node failures per roll (seed {})",
                args.replicas, args.rolls, args.nodes, args.failures_per_roll, args.seed
            );
            let report = roll::run(
                roll::RollConfig {
                    nodes: args.nodes,
                    replicas: args.replicas,
                    rolls: args.rolls,
                    failures_per_roll: args.failures_per_roll,
                    seed: args.seed,
                    ..roll::RollConfig::default()
                },
                Some(progress("fixed-IP roll")),
            )?;
            println!("{}", report.table());
            if !report.is_clean() {
                anyhow::bail!("fixed-IP promises broken: see the table above");
            }
            Ok(())
        }
        Command::Lab(args) => {
            if args.pods < 3 {
                anyhow::bail!("--pods must be at least 3 (a client and a service with backends)");
            }
            lab::run(args.pods, &lab_binary()).map(|_| ())
        }
        Command::Bench(args) => bench::run(&args),
        Command::Policy(cmd) => policy::run(&cmd),
        Command::Observe(args) => observe::run(&args),
    }
}
