//! The providers' server-side throttling: EC2's token buckets per action
//! class and Alibaba's per-API per-minute windows.

use std::time::Duration;

use tokio::time::Instant;

use crate::{Action, ActionClass};

/// One EC2 token bucket.
#[derive(Clone, Debug)]
pub(crate) struct TokenBucket {
    capacity: f64,
    refill_per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    pub(crate) fn new(capacity: u32, refill_per_second: f64, now: Instant) -> Self {
        TokenBucket {
            capacity: f64::from(capacity),
            refill_per_second,
            tokens: f64::from(capacity),
            updated: now,
        }
    }

    /// Takes a token, or says how long until one is there.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.refill_per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - self.tokens;
            Err(Duration::from_secs_f64(
                missing / self.refill_per_second.max(1e-9),
            ))
        }
    }
}

/// One Alibaba per-minute window: `limit` calls per wall-clock minute; a call
/// over the limit stays throttled until the next minute starts.
#[derive(Clone, Debug)]
pub(crate) struct MinuteWindow {
    limit: u32,
    minute: u64,
    used: u32,
}

impl MinuteWindow {
    pub(crate) fn new(limit: u32) -> Self {
        MinuteWindow {
            limit,
            minute: 0,
            used: 0,
        }
    }

    /// `since_start` is the simulated time since the cloud began.
    pub(crate) fn take(&mut self, since_start: Duration) -> Result<(), Duration> {
        let minute = since_start.as_secs() / 60;
        if minute != self.minute {
            self.minute = minute;
            self.used = 0;
        }
        if self.used < self.limit {
            self.used += 1;
            Ok(())
        } else {
            Err(Duration::from_secs((minute + 1) * 60).saturating_sub(since_start))
        }
    }
}

/// EC2's published buckets: (capacity, refill per second).
pub(crate) fn ec2_bucket(action: Action) -> (u32, f64) {
    match action.class() {
        ActionClass::Describe => (100, 20.0),
        ActionClass::MutateEni => (100, 5.0),
        ActionClass::MutateOther => (50, 5.0),
    }
}

/// Which actions share an EC2 bucket: describes share one, attach/detach
/// share one, each ENI mutation has its own.
pub(crate) fn ec2_bucket_key(action: Action) -> Action {
    match action.class() {
        ActionClass::Describe => Action::DescribeInstanceNetwork,
        ActionClass::MutateOther => Action::AttachEni,
        ActionClass::MutateEni => action,
    }
}

/// Per-minute thresholds for the simulated ECS account, after the limits
/// Terway holds itself to (the real quotas live in each account's console).
pub(crate) fn alibaba_per_minute(action: Action) -> u32 {
    match action {
        Action::CreateEni | Action::AttachEni | Action::DeleteEni => 500,
        Action::AssignIps | Action::UnassignIps | Action::DetachEni => 400,
        _ => 800,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bucket_bursts_to_capacity_then_refills_at_its_rate() {
        let now = Instant::now();
        let mut b = TokenBucket::new(100, 5.0, now);
        assert!((0..100).all(|_| b.take(now).is_ok()));
        let wait = b.take(now).unwrap_err();
        assert!((wait.as_secs_f64() - 0.2).abs() < 1e-6);
        let later = now + Duration::from_secs(2);
        assert_eq!((0..20).filter(|_| b.take(later).is_ok()).count(), 10);
    }

    #[test]
    fn minute_window_blocks_until_the_next_minute() {
        let mut w = MinuteWindow::new(3);
        let t = Duration::from_secs(125);
        assert!((0..3).all(|_| w.take(t).is_ok()));
        assert_eq!(w.take(t), Err(Duration::from_secs(55)));
        assert_eq!(
            w.take(Duration::from_secs(179)),
            Err(Duration::from_secs(1))
        );
        assert!(w.take(Duration::from_secs(180)).is_ok());
    }
}
