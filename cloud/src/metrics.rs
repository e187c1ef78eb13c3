//! Per-action cloud API metrics (`sextant_cloud_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use crate::Action;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    provider: &'static str,
    action: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    provider: &'static str,
    action: &'static str,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Cloud API metrics; clones share the same series.
#[derive(Clone)]
pub struct CloudMetrics {
    calls: Family<CallLabels, Counter>,
    retries: Family<ActionLabels, Counter>,
    not_retried: Family<ActionLabels, Counter>,
    throttles: Family<ActionLabels, Counter>,
    latency: Family<ActionLabels, Histogram, fn() -> Histogram>,
    limiter_wait: Family<ActionLabels, Histogram, fn() -> Histogram>,
}

impl Default for CloudMetrics {
    fn default() -> Self {
        CloudMetrics {
            calls: Family::default(),
            retries: Family::default(),
            not_retried: Family::default(),
            throttles: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            limiter_wait: Family::new_with_constructor(latency_histogram),
        }
    }
}

/// Totals of one action, read back for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionTotals {
    /// Attempts sent to the provider.
    pub attempts: u64,
    /// Attempts that failed, any kind.
    pub errors: u64,
    /// Attempts the provider throttled.
    pub throttled: u64,
    /// Retries made.
    pub retries: u64,
}

const RESULTS: [&str; 8] = [
    "ok",
    "throttled",
    "limit_exceeded",
    "insufficient_addresses",
    "not_found",
    "invalid_request",
    "unavailable",
    "deadline_exceeded",
];

impl CloudMetrics {
    /// Registers the series under `registry` (give it a `sextant_cloud` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "api_calls",
            "Cloud API call attempts by action and result",
            self.calls.clone(),
        );
        registry.register(
            "api_retries",
            "Cloud API retries by action",
            self.retries.clone(),
        );
        registry.register(
            "api_not_retried",
            "Calls of non-idempotent mutations left unretried because they may have taken effect (no client token); the caller re-observes",
            self.not_retried.clone(),
        );
        registry.register(
            "api_throttles",
            "Cloud API calls throttled by the provider",
            self.throttles.clone(),
        );
        registry.register(
            "api_call_duration_seconds",
            "Latency of one cloud API attempt",
            self.latency.clone(),
        );
        registry.register(
            "rate_limiter_wait_seconds",
            "Time a call waited for the client-side rate limiter",
            self.limiter_wait.clone(),
        );
    }

    pub(crate) fn not_retried(&self, provider: &'static str, action: Action) {
        self.not_retried
            .get_or_create(&ActionLabels {
                provider,
                action: action.as_str(),
            })
            .inc();
    }

    /// Calls of `action` left unretried as they may have taken effect.
    pub fn not_retried_total(&self, provider: &'static str, action: Action) -> u64 {
        self.not_retried
            .get(&ActionLabels {
                provider,
                action: action.as_str(),
            })
            .map_or(0, |c| c.get())
    }

    pub(crate) fn attempt(
        &self,
        provider: &'static str,
        action: Action,
        result: &'static str,
        secs: f64,
    ) {
        let a = ActionLabels {
            provider,
            action: action.as_str(),
        };
        self.calls
            .get_or_create(&CallLabels {
                provider,
                action: action.as_str(),
                result,
            })
            .inc();
        self.latency.get_or_create(&a).observe(secs);
        if result == "throttled" {
            self.throttles.get_or_create(&a).inc();
        }
    }

    pub(crate) fn retry(&self, provider: &'static str, action: Action) {
        self.retries
            .get_or_create(&ActionLabels {
                provider,
                action: action.as_str(),
            })
            .inc();
    }

    pub(crate) fn limiter_wait(&self, provider: &'static str, action: Action, secs: f64) {
        self.limiter_wait
            .get_or_create(&ActionLabels {
                provider,
                action: action.as_str(),
            })
            .observe(secs);
    }

    /// Totals of one action for `provider`.
    pub fn totals(&self, provider: &'static str, action: Action) -> ActionTotals {
        let mut t = ActionTotals::default();
        for result in RESULTS {
            let labels = CallLabels {
                provider,
                action: action.as_str(),
                result,
            };
            // Read without creating empty series.
            let n = self.calls.get(&labels).map(|c| c.get()).unwrap_or(0);
            t.attempts += n;
            if result != "ok" {
                t.errors += n;
            }
            if result == "throttled" {
                t.throttled += n;
            }
        }
        let a = ActionLabels {
            provider,
            action: action.as_str(),
        };
        t.retries = self.retries.get(&a).map(|c| c.get()).unwrap_or(0);
        t
    }
}
