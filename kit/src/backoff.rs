//! Retry delays: exponential backoff with full jitter (the AWS Architecture
//! Blog's "full jitter"), honouring a provider's `retry_after`. The cloud
//! clients retry with it, and the agent's watches reconnect with
//! [`WATCH`] through [`Retries`], the same delays the thundering-herd
//! simulation (`sextantctl bench`) draws.
//!
//! Full jitter draws each delay uniformly from `[0, min(cap, base * 2^n)]`, so
//! clients that failed together do not retry together. Plain exponential
//! backoff is kept as [`BackoffKind::Plain`] only as the baseline the
//! simulator compares against.

use std::time::Duration;

use rand::{Rng, SeedableRng, rngs::SmallRng};

/// How the agent's watches reconnect after the API server was lost: full
/// jitter from 1 s up to a minute, so thousands of agents that lost it
/// together do not come back together.
pub const WATCH: Backoff = Backoff {
    base: Duration::from_secs(1),
    cap: Duration::from_secs(60),
    max_attempts: u32::MAX,
    kind: BackoffKind::FullJitter,
};

/// How delays are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackoffKind {
    /// Uniform in `[0, min(cap, base * 2^attempt)]`.
    FullJitter,
    /// Exactly `min(cap, base * 2^attempt)`: synchronised retries, for comparison only.
    Plain,
}

/// A retry policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay scale of the first retry.
    pub base: Duration,
    /// Largest delay before jitter.
    pub cap: Duration,
    /// Attempts in all, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// How delays are drawn.
    pub kind: BackoffKind,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
            max_attempts: 8,
            kind: BackoffKind::FullJitter,
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before retry number `attempt` (0 for the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before retry number `attempt`: never shorter than
    /// `retry_after`, with the jitter added on top of it so that clients told
    /// the same `retry_after` still spread out.
    pub fn delay(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let ceiling = self.ceiling(attempt);
        let drawn = match self.kind {
            BackoffKind::Plain => ceiling,
            BackoffKind::FullJitter => {
                let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
                Duration::from_nanos(rng.random_range(0..=nanos))
            }
        };
        retry_after.unwrap_or_default() + drawn
    }
}

/// One client's successive delays under a [`Backoff`]: attempt 0, 1, 2, …
/// until `max_attempts`; [`Retries::reset`] starts over after a success.
#[derive(Clone, Debug)]
pub struct Retries {
    policy: Backoff,
    attempt: u32,
    rng: SmallRng,
}

impl Retries {
    /// Delays under `policy` with jitter drawn from `seed` (simulations).
    pub fn seeded(policy: Backoff, seed: u64) -> Self {
        Retries {
            policy,
            attempt: 0,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// Delays under `policy` with jitter from the thread's random source.
    pub fn new(policy: Backoff) -> Self {
        Retries {
            policy,
            attempt: 0,
            rng: SmallRng::from_rng(&mut rand::rng()),
        }
    }

    /// Back to the first delay (the operation succeeded).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Iterator for Retries {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.attempt.saturating_add(1) >= self.policy.max_attempts {
            return None;
        }
        let d = self.policy.delay(self.attempt, None, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::SmallRng};

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            ..Backoff::default()
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(1), Duration::from_millis(200));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_secs(1));
        assert_eq!(b.ceiling(200), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_spreads_retries_of_clients_that_failed_together() {
        // 1,000 clients throttled at the same moment draw their third retry:
        // the delays must cover the whole window evenly, not pile up.
        let b = Backoff::default();
        let mut rng = SmallRng::seed_from_u64(7);
        let ceiling = b.ceiling(2).as_secs_f64();
        let mut buckets = [0u32; 10];
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let d = b.delay(2, None, &mut rng).as_secs_f64();
            assert!(d <= ceiling);
            let i = ((d / ceiling) * 10.0).min(9.0) as usize;
            buckets[i] += 1;
            distinct.insert((d * 1e6) as u64);
        }
        // Uniform: each tenth of the window gets about 100; allow wide slack.
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (60..=140).contains(n),
                "tenth {i} got {n} of 1000: {buckets:?}"
            );
        }
        assert!(
            distinct.len() > 990,
            "delays collide: {} distinct",
            distinct.len()
        );
    }

    #[test]
    fn retries_grow_until_the_cap_and_start_over_after_reset() {
        let mut r = Retries::seeded(
            Backoff {
                kind: BackoffKind::Plain,
                ..WATCH
            },
            1,
        );
        let first: Vec<u64> = r.by_ref().take(8).map(|d| d.as_secs()).collect();
        assert_eq!(first, [1, 2, 4, 8, 16, 32, 60, 60]);
        r.reset();
        assert_eq!(r.next(), Some(Duration::from_secs(1)));
        let limited = Retries::seeded(Backoff::default(), 1).count();
        assert_eq!(limited, 7, "8 attempts in all: 7 retries");
    }

    #[test]
    fn plain_backoff_synchronises_clients() {
        let b = Backoff {
            kind: BackoffKind::Plain,
            ..Backoff::default()
        };
        let mut rng = SmallRng::seed_from_u64(7);
        let first = b.delay(2, None, &mut rng);
        assert!((0..100).all(|_| b.delay(2, None, &mut rng) == first));
    }

    #[test]
    fn retry_after_is_a_floor_with_jitter_on_top() {
        let b = Backoff::default();
        let mut rng = SmallRng::seed_from_u64(1);
        let after = Duration::from_secs(30);
        let delays: Vec<_> = (0..200)
            .map(|_| b.delay(0, Some(after), &mut rng))
            .collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= after && *d <= after + b.ceiling(0))
        );
        let spread = delays
            .iter()
            .max()
            .unwrap()
            .saturating_sub(*delays.iter().min().unwrap());
        assert!(
            spread > b.ceiling(0) / 2,
            "retries after retry_after not spread: {spread:?}"
        );
    }
}
