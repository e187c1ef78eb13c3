//! Client-side rate limits per action class, enforced with `governor` on the
//! tokio clock (so the simulator's paused time drives them too).
//!
//! Buckets follow EC2's: describes share one limiter; create, delete, assign
//! and unassign each have their own (EC2 gives each its own bucket of the same
//! size); attach and detach share one.

use std::{collections::HashMap, num::NonZeroU32, sync::Arc, time::Duration};

use governor::{
    Quota, RateLimiter,
    clock::Clock,
    middleware::NoOpMiddleware,
    state::{InMemoryState, NotKeyed},
};

use crate::{Action, ActionClass};

/// Sustained rate and burst of one limiter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after a quiet period.
    pub burst: u32,
}

impl RateLimit {
    fn quota(self) -> Quota {
        let per_second = if self.per_second.is_finite() && self.per_second > 0.0 {
            self.per_second
        } else {
            1e-3
        };
        let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst)
    }
}

/// Limits for every action class.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimits {
    /// Describe and list calls (one shared limiter).
    pub describe: RateLimit,
    /// Create/delete ENI, assign/unassign addresses (a limiter each).
    pub mutate_eni: RateLimit,
    /// Attach/detach (one shared limiter).
    pub mutate_other: RateLimit,
}

impl RateLimits {
    /// Below EC2's published refill rates (describes 20/s, ENI mutations
    /// 5/s, other mutations 5/s), bursting to within the bucket sizes, so a
    /// cluster's operator alone never drains a bucket.
    pub fn aws() -> Self {
        RateLimits {
            describe: RateLimit {
                per_second: 16.0,
                burst: 80,
            },
            mutate_eni: RateLimit {
                per_second: 4.0,
                burst: 80,
            },
            mutate_other: RateLimit {
                per_second: 4.0,
                burst: 40,
            },
        }
    }

    /// Terway's own per-minute limits on ECS (Describe 800, Create/Attach/Delete
    /// 500, Assign/Detach 400 per minute), as sustained rates with a burst of a
    /// quarter minute.
    pub fn alibaba() -> Self {
        RateLimits {
            describe: RateLimit {
                per_second: 800.0 / 60.0,
                burst: 200,
            },
            mutate_eni: RateLimit {
                per_second: 400.0 / 60.0,
                burst: 100,
            },
            mutate_other: RateLimit {
                per_second: 400.0 / 60.0,
                burst: 100,
            },
        }
    }

    /// The limit of one class.
    pub fn of(&self, class: ActionClass) -> RateLimit {
        match class {
            ActionClass::Describe => self.describe,
            ActionClass::MutateEni => self.mutate_eni,
            ActionClass::MutateOther => self.mutate_other,
        }
    }
}

/// governor's clock on `tokio::time`, measured from when the limiter was built.
#[derive(Clone, Debug)]
pub(crate) struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.origin)
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// One limiter per EC2 bucket.
pub(crate) struct Limiters {
    clock: TokioClock,
    by_action: HashMap<Action, Arc<Limiter>>,
}

impl Limiters {
    pub(crate) fn new(limits: RateLimits) -> Self {
        let clock = TokioClock {
            origin: tokio::time::Instant::now(),
        };
        let make = |class: ActionClass| {
            Arc::new(RateLimiter::direct_with_clock(
                limits.of(class).quota(),
                clock.clone(),
            ))
        };
        let describe = make(ActionClass::Describe);
        let other = make(ActionClass::MutateOther);
        let by_action = Action::ALL
            .into_iter()
            .map(|a| {
                let limiter = match a.class() {
                    ActionClass::Describe => describe.clone(),
                    ActionClass::MutateOther => other.clone(),
                    ActionClass::MutateEni => make(ActionClass::MutateEni),
                };
                (a, limiter)
            })
            .collect();
        Limiters { clock, by_action }
    }

    /// Waits until `action` may be sent; returns how long it waited.
    pub(crate) async fn acquire(&self, action: Action) -> Duration {
        let Some(limiter) = self.by_action.get(&action) else {
            return Duration::ZERO;
        };
        let start = tokio::time::Instant::now();
        while let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(self.clock.now());
            tokio::time::sleep(wait.max(Duration::from_micros(1))).await;
        }
        start.elapsed()
    }
}
