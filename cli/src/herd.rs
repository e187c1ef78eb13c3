//! Thundering herd after a control-plane outage: every agent of a large
//! cluster loses the API server at the same instant and keeps reconnecting
//! with its backoff until the server is back. Then the server admits a fixed
//! rate and answers the rest `429 Too Many Requests`; each refused agent waits
//! out its backoff and tries again. With plain exponential backoff the agents,
//! having failed together, retry together: the whole herd lands on the
//! returning server in the same instant, minute after minute. With full jitter
//! their retries have spread over the backoff window by the time it returns.
//! The same seed replays the same herd with either policy.
//!
//! Each simulated agent draws its delays from the agent's own reconnect
//! policy, [`sextant_kit::backoff::WATCH`] through
//! [`sextant_kit::backoff::Retries`] (what `sextant-agent`'s watches use),
//! one seeded stream per agent.
//!
//! A discrete-event simulation on integer milliseconds: no clock, no IO.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap},
    time::Duration,
};

use sextant_kit::backoff::{Backoff, Retries};

/// One herd.
#[derive(Clone, Copy, Debug)]
pub struct HerdConfig {
    /// Agents that lose the server at once.
    pub agents: u32,
    /// How long the server stays down.
    pub outage: Duration,
    /// Requests per second the API server admits for agents (its API
    /// Priority and Fairness share); the rest are refused.
    pub admit_per_second: u32,
    /// The agents' retry policy.
    pub backoff: Backoff,
    /// Seed of the jitter.
    pub seed: u64,
}

/// The agents' reconnect policy: the agent's own watch backoff.
pub const AGENT_BACKOFF: Backoff = sextant_kit::backoff::WATCH;

/// What the API server saw once it was back.
#[derive(Clone, Debug, PartialEq)]
pub struct HerdReport {
    /// Most requests that arrived within one second.
    pub peak_per_second: u64,
    /// Requests in all, refused ones included.
    pub requests: u64,
    /// Requests refused with 429.
    pub refused: u64,
    /// From the server's return until the last agent got through.
    pub all_through: Duration,
    /// From the server's return until half the agents had got through.
    pub half_through: Duration,
}

/// Runs one herd to the end (every agent through).
pub fn simulate(config: &HerdConfig) -> HerdReport {
    let back = u64::try_from(config.outage.as_micros()).unwrap_or(u64::MAX);
    // Arrivals by (time in µs, agent); every agent loses the server at 0.
    let mut arrivals: BinaryHeap<Reverse<(u64, u32)>> =
        (0..config.agents).map(|a| Reverse((0, a))).collect();
    let mut retries: Vec<Retries> = (0..config.agents)
        .map(|a| {
            let seed = config
                .seed
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(u64::from(a));
            Retries::seeded(config.backoff, seed)
        })
        .collect();
    // The server's admission: a token bucket holding a tenth of a second.
    let rate = f64::from(config.admit_per_second.max(1));
    let burst = (rate / 10.0).max(1.0);
    let mut tokens = burst;
    let mut last = back;
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    let mut through = Vec::with_capacity(config.agents as usize);
    let mut requests = 0;
    let mut refused = 0;
    while let Some(Reverse((at, agent))) = arrivals.pop() {
        if at >= back {
            tokens = (tokens + (at - last) as f64 * rate / 1e6).min(burst);
            last = at;
            requests += 1;
            *per_second.entry((at - back) / 1_000_000).or_default() += 1;
            if tokens >= 1.0 {
                tokens -= 1.0;
                through.push(at - back);
                continue;
            }
            refused += 1;
        }
        let Some(wait) = retries[agent as usize].next() else {
            continue; // this agent gave up
        };
        let wait_us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX).max(1);
        arrivals.push(Reverse((at.saturating_add(wait_us), agent)));
    }
    through.sort_unstable();
    let at = |i: usize| Duration::from_micros(through.get(i).copied().unwrap_or(0));
    HerdReport {
        peak_per_second: per_second.values().copied().max().unwrap_or(0),
        requests,
        refused,
        all_through: at(through.len().saturating_sub(1)),
        half_through: at(through.len() / 2),
    }
}

#[cfg(test)]
mod tests {
    use sextant_kit::backoff::BackoffKind;

    use super::*;

    fn herd(kind: BackoffKind) -> HerdReport {
        simulate(&HerdConfig {
            agents: 6_000,
            outage: Duration::from_secs(120),
            admit_per_second: 500,
            backoff: Backoff {
                kind,
                ..AGENT_BACKOFF
            },
            seed: 42,
        })
    }

    #[test]
    fn jitter_flattens_the_retry_peaks_that_plain_backoff_synchronises() {
        let jittered = herd(BackoffKind::FullJitter);
        let plain = herd(BackoffKind::Plain);
        // Plain backoff lands the whole herd on the server in one instant.
        assert_eq!(plain.peak_per_second, 6_000);
        assert!(
            jittered.peak_per_second * 10 < plain.peak_per_second,
            "jittered peak {} vs plain {}",
            jittered.peak_per_second,
            plain.peak_per_second
        );
        assert!(
            jittered.refused * 2 < plain.refused,
            "jitter wastes fewer requests: {} vs {}",
            jittered.refused,
            plain.refused
        );
        assert!(
            jittered.all_through < plain.all_through,
            "jittered herd is through sooner: {:?} vs {:?}",
            jittered.all_through,
            plain.all_through
        );
    }

    #[test]
    fn every_agent_gets_through_and_the_server_never_admits_above_its_rate() {
        let r = herd(BackoffKind::FullJitter);
        assert_eq!(r.requests - r.refused, 6_000);
        // Never more admitted in a second than the rate plus the burst.
        let admitted_max = 500 + 50;
        assert!(r.requests - r.refused <= admitted_max * (r.all_through.as_secs() + 1));
    }

    #[test]
    fn the_same_seed_replays_the_same_herd() {
        assert_eq!(herd(BackoffKind::FullJitter), herd(BackoffKind::FullJitter));
    }
}
