//! `sextantctl simulate`: the operator's real node IPAM code (`NodeIpam`:
//! plan, execute, resync) against the simulated cloud, with an in-memory
//! store of NodeNetworks and simulated agents that run pods on the IPs.
//!
//! ```text
//!   node waves ─▶ SimCloud::add_instance + NodeNetwork ─▶ store ─▶ queue ─▶ workers: NodeIpam::reconcile ─▶ Cloud ─▶ SimCloud
//!                                                          ▲                                  │ merge patch
//!   agents (one per node): pods come and go, handshake ───┘◀─────────────────────────────────┘
//!   every full-resync interval: paged VPC listing ─▶ every node's ENIs; ENI garbage collection
//! ```
//!
//! Time is tokio's paused clock: a simulated hour of a thousand nodes takes
//! seconds. The same seed replays the same run, so strategies compare fairly.

mod agent;
pub mod baselines;
mod report;
mod store;
mod world;

pub use report::{Report, print_comparison};
pub use world::run;

use std::time::Duration;

use sextant_cloud::{RateLimits, sim::SimProvider};

/// How the reconciler refreshes an instance after mutating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Sextant: one describe filtered by instance.
    InstanceScoped,
    /// The pre-fix behaviour from the seeds: one describe per subnet.
    PerSubnet,
    /// A paged listing of the whole VPC.
    VpcWide,
}

impl Strategy {
    /// Column name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::InstanceScoped => "sextant (instance-scoped)",
            Strategy::PerSubnet => "baseline: per-subnet",
            Strategy::VpcWide => "baseline: VPC-wide",
        }
    }
}

/// One simulation.
#[derive(Clone, Debug)]
pub struct SimulateConfig {
    /// Nodes in all.
    pub nodes: usize,
    /// Nodes created at once (one wave).
    pub burst: usize,
    /// Time between waves.
    pub wave_interval: Duration,
    /// Throttling model and limits.
    pub provider: SimProvider,
    /// Instance type of every node.
    pub instance_type: String,
    /// Pods each node runs.
    pub pods_per_node: u32,
    /// Fraction of a node's pods replaced per minute.
    pub churn_per_minute: f64,
    /// Fraction of cloud calls answered "throttled" on top of the buckets.
    pub throttle_ratio: f64,
    /// Fraction of cloud calls failing with a 5xx.
    pub error_ratio: f64,
    /// Seed of every random choice.
    pub seed: u64,
    /// Subnets in the VPC (all in the nodes' zone).
    pub subnets: usize,
    /// The operator's preAllocate default.
    pub pre_allocate: u32,
    /// The operator's maxAboveWatermark default.
    pub max_above_watermark: u32,
    /// Simulated time to keep running after the last wave.
    pub run_for: Duration,
    /// Concurrent reconciles.
    pub workers: usize,
    /// Agents' usage report interval (the agent's `--usage-report-interval`).
    pub agent_report_interval: Duration,
    /// Full resync (and ENI GC) interval.
    pub full_resync_interval: Duration,
    /// Resync strategy after mutations.
    pub strategy: Strategy,
    /// The operator's client-side rate limits; `None` takes the provider's
    /// defaults ([`RateLimits::aws`], [`RateLimits::alibaba`]).
    pub client_limits: Option<RateLimits>,
    /// Every node's `ipam.firstInterfaceIndex` (`None`: unset, the CRD's
    /// default of 1, the primary ENI left alone; 0 uses its secondary slots).
    pub first_interface_index: Option<u32>,
}

impl Default for SimulateConfig {
    fn default() -> Self {
        SimulateConfig {
            nodes: 300,
            burst: 100,
            wave_interval: Duration::from_secs(30),
            provider: SimProvider::Aws,
            instance_type: "m5.4xlarge".into(),
            pods_per_node: 30,
            churn_per_minute: 0.1,
            throttle_ratio: 0.0,
            error_ratio: 0.0,
            seed: 1,
            subnets: 4,
            pre_allocate: 8,
            max_above_watermark: 8,
            run_for: Duration::from_secs(600),
            workers: 64,
            agent_report_interval: Duration::from_secs(15),
            full_resync_interval: Duration::from_secs(300),
            strategy: Strategy::InstanceScoped,
            client_limits: None,
            first_interface_index: None,
        }
    }
}
