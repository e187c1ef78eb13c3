//! How a simulated cloud behaves: which provider it follows, its latencies,
//! whether the provider's throttling applies, and injected faults.

use std::time::Duration;

/// Which provider's throttling model and limits the simulation follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimProvider {
    /// EC2 token buckets.
    Aws,
    /// ECS per-minute windows.
    Alibaba,
}

/// Injected faults, each a probability per call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Calls answered "throttled" regardless of the buckets.
    pub throttle_ratio: f64,
    /// Calls failing with `Unavailable` (a 5xx) before doing anything.
    pub error_ratio: f64,
    /// Calls taking `spike` longer than usual.
    pub spike_ratio: f64,
    /// Extra latency of a spike.
    pub spike: Duration,
    /// Mutating calls that take effect but whose answer is lost: the
    /// caller sees [`crate::Error::DeadlineExceeded`] (a timeout after the
    /// request reached the provider).
    pub lost_answer_ratio: f64,
}

/// Settings of a simulated cloud.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Throttling model.
    pub provider: SimProvider,
    /// Seed of every random choice.
    pub seed: u64,
    /// Latency of a describe call.
    pub describe_latency: Duration,
    /// Latency of a mutating call.
    pub mutate_latency: Duration,
    /// Uniform extra latency in `[0, latency_jitter]`.
    pub latency_jitter: Duration,
    /// Whether the provider's own throttling applies.
    pub server_throttling: bool,
    /// Injected faults.
    pub faults: Faults,
}

impl SimConfig {
    /// Defaults for `provider`: 50 ms describes, 150 ms mutations, throttling on, no faults.
    pub fn new(provider: SimProvider, seed: u64) -> Self {
        SimConfig {
            provider,
            seed,
            describe_latency: Duration::from_millis(50),
            mutate_latency: Duration::from_millis(150),
            latency_jitter: Duration::from_millis(50),
            server_throttling: true,
            faults: Faults::default(),
        }
    }

    /// For tests that look at what calls do, not how long they take: no
    /// latency and no provider throttling.
    pub fn instant(provider: SimProvider, seed: u64) -> Self {
        SimConfig {
            describe_latency: Duration::ZERO,
            mutate_latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            server_throttling: false,
            ..SimConfig::new(provider, seed)
        }
    }
}
