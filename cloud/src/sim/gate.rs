//! What every simulated call goes through before it touches the VPC: its
//! latency (with jitter and injected spikes), its count in [`SimStats`], the
//! provider's throttling (EC2 token buckets or Alibaba per-minute windows)
//! and injected throttles and errors.

use std::{collections::BTreeMap, time::Duration};

use rand::Rng;
use sextant_kit::sync::lock;
use tokio::time::Instant;

use super::{
    SimCloud, SimProvider, State,
    throttle::{self, MinuteWindow, TokenBucket},
};
use crate::{Action, ActionClass, Error, Result};

/// Counts of what reached the simulated provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionStats {
    /// Calls received.
    pub calls: u64,
    /// Calls answered "throttled".
    pub throttled: u64,
    /// Calls failed for another reason.
    pub failed: u64,
    /// Calls that took effect but whose answer was lost (injected).
    pub answers_lost: u64,
}

/// Per-action counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Counts per action.
    pub by_action: BTreeMap<Action, ActionStats>,
}

impl SimStats {
    /// Calls of every action.
    pub fn total_calls(&self) -> u64 {
        self.by_action.values().map(|s| s.calls).sum()
    }
    /// Throttled calls of every action.
    pub fn total_throttled(&self) -> u64 {
        self.by_action.values().map(|s| s.throttled).sum()
    }
}

impl SimCloud {
    /// Latency, counters, faults and throttling of one call; `Ok` means the
    /// call goes through.
    pub(super) async fn enter(&self, action: Action) -> Result<()> {
        let config = lock(&self.config).clone();
        let delay = {
            let mut st = lock(&self.state);
            let base = match action.class() {
                ActionClass::Describe => config.describe_latency,
                _ => config.mutate_latency,
            };
            let jitter_ns = u64::try_from(config.latency_jitter.as_nanos()).unwrap_or(0);
            let mut d = base + Duration::from_nanos(st.rng.random_range(0..=jitter_ns));
            if config.faults.spike_ratio > 0.0
                && st.rng.random_bool(config.faults.spike_ratio.min(1.0))
            {
                d += config.faults.spike;
            }
            d
        };
        tokio::time::sleep(delay).await;
        let now = Instant::now();
        let since_start = now.saturating_duration_since(self.started);
        let mut st = lock(&self.state);
        st.stats.by_action.entry(action).or_default().calls += 1;
        let throttled = if config.server_throttling {
            match config.provider {
                SimProvider::Aws => {
                    let (cap, refill) = throttle::ec2_bucket(action);
                    st.buckets
                        .entry(throttle::ec2_bucket_key(action))
                        .or_insert_with(|| TokenBucket::new(cap, refill, self.started))
                        .take(now)
                        .is_err()
                }
                SimProvider::Alibaba => st
                    .windows
                    .entry(action)
                    .or_insert_with(|| MinuteWindow::new(throttle::alibaba_per_minute(action)))
                    .take(since_start)
                    .is_err(),
            }
        } else {
            false
        };
        let injected_throttle = config.faults.throttle_ratio > 0.0
            && st.rng.random_bool(config.faults.throttle_ratio.min(1.0));
        if throttled || injected_throttle {
            st.stats.by_action.entry(action).or_default().throttled += 1;
            return Err(Error::Throttled {
                action,
                retry_after: None,
            });
        }
        if config.faults.error_ratio > 0.0 && st.rng.random_bool(config.faults.error_ratio.min(1.0))
        {
            st.stats.by_action.entry(action).or_default().failed += 1;
            return Err(Error::Unavailable {
                action,
                message: "injected fault: internal error".into(),
                source: None,
            });
        }
        Ok(())
    }

    /// Runs `op` on the state after `enter`, counting its failure.
    pub(super) async fn run<T>(
        &self,
        action: Action,
        op: impl FnOnce(&mut State) -> Result<T>,
    ) -> Result<T> {
        self.enter(action).await?;
        let lost = lock(&self.config).faults.lost_answer_ratio;
        let mut st = lock(&self.state);
        let r = op(&mut st);
        if r.is_err() {
            st.stats.by_action.entry(action).or_default().failed += 1;
        } else if action.class() != ActionClass::Describe
            && lost > 0.0
            && st.rng.random_bool(lost.min(1.0))
        {
            // Done, but the caller never hears of it.
            st.stats.by_action.entry(action).or_default().answers_lost += 1;
            return Err(Error::DeadlineExceeded {
                action,
                deadline: Duration::ZERO,
            });
        }
        r
    }
}
