//! [`Cloud`]: any [`EniCloud`] with deadlines, client-side rate limits,
//! retries and metrics in front. It is itself an [`EniCloud`], so callers
//! take `&dyn EniCloud` and tests can hand them a raw provider.

use std::{future::Future, net::Ipv4Addr, sync::Arc, time::Duration};

use async_trait::async_trait;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tracing::{debug, warn};

use crate::{
    Action, AssignIps, Backoff, CloudMetrics, CreateEni, Eni, EniCloud, Error, InstanceLimits,
    InstanceNetwork, Page, PageRequest, RateLimits, Result, SecurityGroup, Subnet,
    limits::Limiters,
};

/// Settings of the wrapper.
#[derive(Clone, Debug)]
pub struct CloudConfig {
    /// Deadline of one attempt.
    pub call_deadline: Duration,
    /// Deadline of a call with all its retries and rate-limit waits.
    pub total_deadline: Duration,
    /// Retry policy for throttled, unavailable and timed-out attempts.
    pub backoff: Backoff,
    /// Client-side rate limits.
    pub limits: RateLimits,
    /// Seed of the jitter; `None` seeds from the OS.
    pub seed: Option<u64>,
}

impl Default for CloudConfig {
    fn default() -> Self {
        CloudConfig {
            call_deadline: Duration::from_secs(10),
            total_deadline: Duration::from_secs(120),
            backoff: Backoff::default(),
            limits: RateLimits::aws(),
            seed: None,
        }
    }
}

/// A provider with deadlines, rate limits, retries and metrics.
pub struct Cloud {
    inner: Arc<dyn EniCloud>,
    config: CloudConfig,
    limiters: Limiters,
    rng: std::sync::Mutex<SmallRng>,
    metrics: CloudMetrics,
}

impl Cloud {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn EniCloud>, config: CloudConfig, metrics: CloudMetrics) -> Self {
        let rng = match config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        Cloud {
            inner,
            limiters: Limiters::new(config.limits),
            config,
            rng: std::sync::Mutex::new(rng),
            metrics,
        }
    }

    /// The metrics this wrapper records into.
    pub fn metrics(&self) -> &CloudMetrics {
        &self.metrics
    }

    fn next_delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.config.backoff.delay(attempt, retry_after, &mut *rng)
    }

    /// Runs one provider call as `action`: waits for the limiter, sends with
    /// a deadline, retries transient failures with jittered backoff until
    /// attempts or the total deadline run out, and records metrics. The trait
    /// methods go through here; so can calls a provider offers beyond the trait.
    pub async fn call<T, F, Fut>(&self, action: Action, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call_as(action, true, f).await
    }

    /// [`Cloud::call`] for a mutation that is not idempotent (no client
    /// token honoured): a failure after which the call may have taken effect
    /// ([`Error::may_have_taken_effect`]) is returned, not retried, so the
    /// caller observes the cloud before deciding again; throttled calls,
    /// which never ran, are still retried.
    pub async fn call_once_effective<T, F, Fut>(&self, action: Action, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.call_as(action, false, f).await
    }

    /// A fresh idempotency token for one intent: the same for every retry
    /// of it (EC2 takes up to 64 ASCII characters).
    fn client_token(&self) -> String {
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        format!(
            "sextant-{:016x}{:016x}",
            rng.random::<u64>(),
            rng.random::<u64>()
        )
    }

    async fn call_as<T, F, Fut>(&self, action: Action, retry_effective: bool, f: F) -> Result<T>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let provider = self.inner.provider();
        let started = tokio::time::Instant::now();
        let give_up_at = started + self.config.total_deadline;
        let mut attempt = 0u32;
        loop {
            let waited = self.limiters.acquire(action).await;
            self.metrics
                .limiter_wait(provider, action, waited.as_secs_f64());
            let sent = tokio::time::Instant::now();
            let result = match tokio::time::timeout(self.config.call_deadline, f()).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded {
                    action,
                    deadline: self.config.call_deadline,
                }),
            };
            let label = match &result {
                Ok(_) => "ok",
                Err(e) => e.metric_label(),
            };
            self.metrics
                .attempt(provider, action, label, sent.elapsed().as_secs_f64());
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            attempt += 1;
            if !err.is_transient() || attempt >= self.config.backoff.max_attempts {
                return Err(err);
            }
            if !retry_effective && err.may_have_taken_effect() {
                debug!(%action, attempt, error = %err, "not retried: it may have taken effect");
                self.metrics.not_retried(provider, action);
                return Err(err);
            }
            let retry_after = match &err {
                Error::Throttled { retry_after, .. } => *retry_after,
                _ => None,
            };
            let delay = self.next_delay(attempt - 1, retry_after);
            if tokio::time::Instant::now() + delay > give_up_at {
                warn!(%action, attempt, error = %err, "giving up: total deadline reached");
                return Err(err);
            }
            debug!(%action, attempt, ?delay, error = %err, "retrying");
            self.metrics.retry(provider, action);
            tokio::time::sleep(delay).await;
        }
    }
}

#[async_trait]
impl EniCloud for Cloud {
    fn provider(&self) -> &'static str {
        self.inner.provider()
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        self.call(Action::DescribeInstanceNetwork, || {
            self.inner.instance_network(instance_id)
        })
        .await
    }

    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        self.call(Action::ListEnis, || {
            self.inner.list_enis(vpc_id, page.clone())
        })
        .await
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        self.call(Action::DescribeSubnets, || self.inner.subnets(vpc_id))
            .await
    }

    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        self.call(Action::DescribeSecurityGroups, || {
            self.inner.security_groups(vpc_id)
        })
        .await
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        self.call(Action::DescribeInstanceTypes, || {
            self.inner.instance_limits(instance_type)
        })
        .await
    }

    /// One intent, one client token: every retry sends the same token, so
    /// a call whose answer was lost returns the ENI it made instead of
    /// making another. A provider that ignores tokens is not retried after
    /// a failure that may have taken effect.
    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        let token = self.client_token();
        self.create_eni_with_token(request, &token).await
    }

    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        let action = Action::CreateEni;
        let f = || self.inner.create_eni_with_token(request, client_token);
        if self.inner.honours_client_token(action) {
            self.call(action, f).await
        } else {
            self.call_once_effective(action, f).await
        }
    }

    fn honours_client_token(&self, action: Action) -> bool {
        self.inner.honours_client_token(action)
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        self.call(Action::AttachEni, || {
            self.inner.attach_eni(eni_id, instance_id, device_index)
        })
        .await
    }

    /// Specific addresses are idempotent by themselves; a count is not: it
    /// goes under one client token where the provider honours one (ECS),
    /// and is otherwise not retried after a failure that may have taken
    /// effect (EC2 has no token for it; node IPAM resyncs the instance
    /// after any failed step and plans again on what it sees).
    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        match request {
            AssignIps::Specific { .. } => {
                self.call(Action::AssignIps, || self.inner.assign_ips(eni_id, request))
                    .await
            }
            AssignIps::Count(_) => {
                let token = self.client_token();
                self.assign_ips_with_token(eni_id, request, &token).await
            }
        }
    }

    async fn assign_ips_with_token(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        let f = || {
            self.inner
                .assign_ips_with_token(eni_id, request, client_token)
        };
        if self.inner.honours_client_token(action) {
            self.call(action, f).await
        } else {
            self.call_once_effective(action, f).await
        }
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        self.call(Action::UnassignIps, || self.inner.unassign_ips(eni_id, ips))
            .await
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        self.call(Action::DetachEni, || self.inner.detach_eni(eni))
            .await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        self.call(Action::DeleteEni, || self.inner.delete_eni(eni_id))
            .await
    }
}
