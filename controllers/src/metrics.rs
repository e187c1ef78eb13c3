//! Operator metrics (`sextant_operator_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use sextant_crds::NodeNetworkStatus;
use tokio::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    node: String,
    state: &'static str,
}

/// Node IPAM metrics; clones share the series.
#[derive(Clone)]
pub struct IpamMetrics {
    reconcile_duration: Histogram,
    reconciles: Counter,
    errors: Family<ErrorLabels, Counter>,
    steps: Family<StepLabels, Counter>,
    pool: Family<PoolLabels, Gauge>,
}

impl Default for IpamMetrics {
    fn default() -> Self {
        IpamMetrics {
            reconcile_duration: Histogram::new([
                0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0,
            ]),
            reconciles: Counter::default(),
            errors: Family::default(),
            steps: Family::default(),
            pool: Family::default(),
        }
    }
}

/// Observes the reconcile duration when dropped.
pub struct ReconcileTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl IpamMetrics {
    /// Registers under `registry` (give it a `sextant_operator` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one NodeNetwork reconcile",
            self.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles",
            "NodeNetwork reconciles",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error",
            self.errors.clone(),
        );
        registry.register(
            "ipam_steps",
            "Cloud steps carried out, by kind",
            self.steps.clone(),
        );
        registry.register(
            "ipam_pool_ips",
            "IPs per node by state (pool, used, available)",
            self.pool.clone(),
        );
    }

    /// Starts timing one reconcile.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.reconciles.inc();
        ReconcileTimer {
            start: Instant::now(),
            histogram: self.reconcile_duration.clone(),
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, label: &'static str) {
        self.errors
            .get_or_create(&ErrorLabels { error: label })
            .inc();
    }

    /// Counts a step done.
    pub fn step(&self, kind: &'static str) {
        self.steps.get_or_create(&StepLabels { kind }).inc();
    }

    /// Steps done of one kind so far.
    pub fn steps(&self, kind: &'static str) -> u64 {
        self.steps
            .get(&StepLabels { kind })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Records a node's pool sizes.
    pub fn pool(&self, node: &str, status: &NodeNetworkStatus, available: u32) {
        let used = status.usage.as_ref().map(|u| u.used.len()).unwrap_or(0);
        for (state, v) in [
            ("pool", status.pool.len()),
            ("used", used),
            ("available", available as usize),
        ] {
            self.pool
                .get_or_create(&PoolLabels {
                    node: node.to_owned(),
                    state,
                })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Drops a deleted node's series.
    pub fn forget(&self, node: &str) {
        for state in ["pool", "used", "available"] {
            self.pool.remove(&PoolLabels {
                node: node.to_owned(),
                state,
            });
        }
    }
}

/// FixedIP controller metrics; clones share the series.
#[derive(Clone, Default)]
pub struct FixedIpMetrics {
    steps: Family<StepLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconciles: Counter,
}

impl FixedIpMetrics {
    /// Registers under `registry` (give it a `sextant_operator` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "fixed_ip_reconciles",
            "StatefulSets whose fixed IPs were reconciled",
            self.reconciles.clone(),
        );
        registry.register(
            "fixed_ip_steps",
            "Fixed-IP steps planned, by kind (reserve, move, park, release, status, blocked)",
            self.steps.clone(),
        );
        registry.register(
            "fixed_ip_errors",
            "Fixed-IP reconciles that failed, by error kind",
            self.errors.clone(),
        );
    }

    /// Counts one reconcile and its planned steps.
    pub fn reconciled<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
        self.reconciles.inc();
        for kind in kinds {
            let kind: &'static str = match kind {
                "reserve" => "reserve",
                "move" => "move",
                "park" => "park",
                "release" => "release",
                "status" => "status",
                _ => "blocked",
            };
            self.steps.get_or_create(&StepLabels { kind }).inc();
        }
    }

    /// Counts a failed reconcile.
    pub fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Steps of `kind` counted so far.
    pub fn steps(&self, kind: &'static str) -> u64 {
        self.steps.get_or_create(&StepLabels { kind }).get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Network-policy status metrics; clones share the series.
#[derive(Clone, Default)]
pub struct PolicyMetrics {
    policies: Family<StateLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    identities_deleted: Counter,
}

impl PolicyMetrics {
    /// Registers under `registry` (give it a `sextant_operator` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "policies",
            "SextantNetworkPolicies and NetworkPolicies by state (accepted, rejected)",
            self.policies.clone(),
        );
        registry.register(
            "policy_status_errors",
            "Policy reconciles that failed, by error kind",
            self.errors.clone(),
        );
        registry.register(
            "identities_deleted",
            "SextantIdentities deleted because no pod carried their labels any more",
            self.identities_deleted.clone(),
        );
    }

    /// The counter the identity sweep adds its deletions to.
    pub fn identities_deleted(&self) -> Counter {
        self.identities_deleted.clone()
    }

    /// Sets the number of accepted and rejected policies.
    pub fn set_policies(&self, accepted: usize, rejected: usize) {
        for (state, n) in [("accepted", accepted), ("rejected", rejected)] {
            self.policies
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Policies in `state` (`accepted`, `rejected`) as last set.
    pub fn policies(&self, state: &'static str) -> i64 {
        self.policies
            .get(&StateLabels { state })
            .map(|g| g.get())
            .unwrap_or(0)
    }

    /// Counts a failed reconcile.
    pub fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }
}
