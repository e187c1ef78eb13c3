//! Node IPAM metrics (registered by the operator under `sextant_operator_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use sextant_crds::NodeNetworkStatus;
use sextant_kit::sync::lock;
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
struct ReasonLabels {
    reason: &'static str,
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
    /// Nodes with `pool` series (a Family cannot be listed).
    pool_nodes: Arc<Mutex<HashSet<String>>>,
    release_dropped: Family<ReasonLabels, Counter>,
    decisions_refused: Counter,
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
            pool_nodes: Arc::default(),
            release_dropped: Family::default(),
            decisions_refused: Counter::default(),
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
            "ipam_release_entries_dropped",
            "status.release entries the operator removed itself, by reason (returned: the address is back in the node's pool; stale: the agent did not remove a released entry in time)",
            self.release_dropped.clone(),
        );
        registry.register(
            "ipam_unassign_decisions_refused",
            "Unassign decisions whose guarded status write was refused with a conflict before any cloud call (re-read and re-planned)",
            self.decisions_refused.clone(),
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

    /// Counts handshake entries a plan removed on the agent's behalf.
    pub fn release_cleanup(&self, cleanup: crate::plan::ReleaseCleanup) {
        for (reason, n) in [("returned", cleanup.returned), ("stale", cleanup.stale)] {
            if n > 0 {
                self.release_dropped
                    .get_or_create(&ReasonLabels { reason })
                    .inc_by(u64::from(n));
            }
        }
    }

    /// Handshake entries removed so far for `reason` (`returned`, `stale`).
    pub fn release_dropped(&self, reason: &'static str) -> u64 {
        self.release_dropped
            .get(&ReasonLabels { reason })
            .map(|c| c.get())
            .unwrap_or(0)
    }

    /// Counts an unassign decision refused by a conflict before acting.
    pub fn decision_refused(&self) {
        self.decisions_refused.inc();
    }

    /// Unassign decisions refused so far.
    pub fn decisions_refused(&self) -> u64 {
        self.decisions_refused.get()
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
        {
            let mut nodes = lock(&self.pool_nodes);
            if !nodes.contains(node) {
                nodes.insert(node.to_owned());
            }
        }
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
        lock(&self.pool_nodes).remove(node);
        self.forget_series(node);
    }

    /// Drops the series of every node `present` says is gone.
    pub fn retain(&self, present: impl Fn(&str) -> bool) {
        let gone: Vec<String> = {
            let mut nodes = lock(&self.pool_nodes);
            let gone = nodes.iter().filter(|n| !present(n)).cloned().collect();
            nodes.retain(|n| present(n));
            gone
        };
        for node in gone {
            self.forget_series(&node);
        }
    }

    /// Nodes with pool series.
    pub fn pool_nodes(&self) -> usize {
        lock(&self.pool_nodes).len()
    }

    fn forget_series(&self, node: &str) {
        for state in ["pool", "used", "available"] {
            self.pool.remove(&PoolLabels {
                node: node.to_owned(),
                state,
            });
        }
    }
}
