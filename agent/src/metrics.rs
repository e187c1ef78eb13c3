//! Agent metrics (`sextant_agent_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CniLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PoolLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct WatchLabels {
    /// `policy` or `services`.
    pub watch: &'static str,
}

/// Buckets of the watch batch sizes (objects applied per recompute).
fn batch_histogram() -> Histogram {
    Histogram::new([1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VerdictLabels {
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DropLabels {
    pub reason: &'static str,
}

/// The agent's series; clones share them.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) cni: Family<CniLabels, Counter>,
    pub(crate) cni_duration: Histogram,
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) pool: Family<PoolLabels, Gauge>,
    pub(crate) packets: Family<VerdictLabels, Counter>,
    pub(crate) drops: Family<DropLabels, Counter>,
    pub(crate) reports: Counter,
    pub(crate) conntrack_entries: Gauge,
    pub(crate) conntrack_expired: Counter,
    pub(crate) policy_verdicts: Family<PolicyLabels, Counter>,
    pub(crate) policies: Family<PoolLabels, Gauge>,
    pub(crate) policy_entries: Gauge,
    pub(crate) policy_changes: Counter,
    pub(crate) policy_fail_open: Gauge,
    pub(crate) policy_fail_open_engaged: Counter,
    pub(crate) watch_events: Family<WatchLabels, Counter>,
    pub(crate) watch_coalesced: Family<WatchLabels, Counter>,
    pub(crate) watch_batch: Family<WatchLabels, Histogram, fn() -> Histogram>,
    pub(crate) watch_pending_high_water: Family<WatchLabels, Gauge>,
    pub(crate) write_retries: Family<WatchLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PolicyLabels {
    pub policy: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            cni: Family::default(),
            cni_duration: Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            errors: Family::default(),
            pool: Family::default(),
            packets: Family::default(),
            drops: Family::default(),
            reports: Counter::default(),
            conntrack_entries: Gauge::default(),
            conntrack_expired: Counter::default(),
            policy_verdicts: Family::default(),
            policies: Family::default(),
            policy_entries: Gauge::default(),
            policy_changes: Counter::default(),
            policy_fail_open: Gauge::default(),
            policy_fail_open_engaged: Counter::default(),
            watch_events: Family::default(),
            watch_coalesced: Family::default(),
            watch_batch: Family::new_with_constructor(batch_histogram),
            watch_pending_high_water: Family::default(),
            write_retries: Family::default(),
        }
    }
}

impl Metrics {
    /// A registry with every series under `sextant_agent`.
    pub fn registry(&self) -> Registry {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix("sextant_agent");
        r.register(
            "cni_requests",
            "CNI requests by operation and result",
            self.cni.clone(),
        );
        r.register(
            "cni_duration_seconds",
            "Time the agent spent on one CNI request",
            self.cni_duration.clone(),
        );
        r.register("errors", "Errors by kind", self.errors.clone());
        r.register("pool_ips", "Pod IPs by state", self.pool.clone());
        r.register(
            "datapath_packets",
            "Packets seen by the BPF datapath, by verdict (summed over CPUs)",
            self.packets.clone(),
        );
        r.register(
            "datapath_drops",
            "Packets the BPF datapath dropped, by reason (summed over CPUs)",
            self.drops.clone(),
        );
        r.register(
            "usage_reports",
            "Usage reports written to NodeNetwork status",
            self.reports.clone(),
        );
        r.register(
            "conntrack_entries",
            "Service and policy conntrack entries left after the last sweep",
            self.conntrack_entries.clone(),
        );
        r.register(
            "conntrack_expired",
            "Conntrack entries removed by the sweep as idle past their timeout",
            self.conntrack_expired.clone(),
        );
        r.register(
            "policy_verdicts",
            "Packets allowed by each network policy (summed over CPUs)",
            self.policy_verdicts.clone(),
        );
        r.register(
            "policies",
            "Network policies on this node by state (enforced, rejected)",
            self.policies.clone(),
        );
        r.register(
            "policy_map_entries",
            "Allow entries in the datapath's policy map",
            self.policy_entries.clone(),
        );
        r.register(
            "policy_map_changes",
            "Policy, enforcement and ipcache map entries written or removed",
            self.policy_changes.clone(),
        );
        r.register(
            "policy_fail_open",
            "1 while the last-resort fail-open mode has lifted enforcement",
            self.policy_fail_open.clone(),
        );
        r.register(
            "policy_fail_open_engagements",
            "Times the fail-open mode engaged",
            self.policy_fail_open_engaged.clone(),
        );
        r.register(
            "watch_events",
            "Watch events received by the policy and service loops",
            self.watch_events.clone(),
        );
        r.register(
            "watch_events_coalesced",
            "Watch events folded into a change already pending for the same object",
            self.watch_coalesced.clone(),
        );
        r.register(
            "watch_batch_objects",
            "Objects applied per recompute of the policy and service loops",
            self.watch_batch.clone(),
        );
        r.register(
            "watch_pending_high_water",
            "Most objects ever waiting for a recompute (bounded by distinct objects)",
            self.watch_pending_high_water.clone(),
        );
        r.register(
            "datapath_write_retries",
            "Retries of policy or service map writes that failed",
            self.write_retries.clone(),
        );
        root
    }

    /// Records one drained batch of watch `watch`.
    pub(crate) fn watch_batch(
        &self,
        watch: &'static str,
        events: usize,
        coalesced: usize,
        applied: usize,
        high_water: usize,
    ) {
        let l = WatchLabels { watch };
        self.watch_events.get_or_create(&l).inc_by(events as u64);
        self.watch_coalesced
            .get_or_create(&l)
            .inc_by(coalesced as u64);
        if applied > 0 {
            self.watch_batch.get_or_create(&l).observe(applied as f64);
        }
        let g = self.watch_pending_high_water.get_or_create(&l);
        let hw = i64::try_from(high_water).unwrap_or(i64::MAX);
        if hw > g.get() {
            g.set(hw);
        }
    }

    /// Counts one retry of the datapath writes of watch `watch`.
    pub(crate) fn write_retry(&self, watch: &'static str) {
        self.write_retries
            .get_or_create(&WatchLabels { watch })
            .inc();
    }

    pub(crate) fn error(&self, e: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: e.metric_label(),
            })
            .inc();
    }

    pub(crate) fn policy_sync(
        &self,
        report: &crate::policy::PolicyReport,
        contents: &sextant_policy::MapContents,
    ) {
        let too_large = report
            .rejected
            .iter()
            .filter(|r| r.reason == crate::policy::REASON_TOO_LARGE)
            .count();
        for (state, n) in [
            ("enforced", report.enforced.len()),
            ("rejected", report.rejected.len()),
            ("too_large", too_large),
        ] {
            self.policies
                .get_or_create(&PoolLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.policy_entries
            .set(i64::try_from(contents.policy.len()).unwrap_or(i64::MAX));
        self.policy_changes.inc_by(report.changes as u64);
    }

    /// Drops the verdict series of a deleted policy (`kind/namespace/name`).
    pub(crate) fn forget_policy(&self, policy: &str) {
        self.policy_verdicts.remove(&PolicyLabels {
            policy: policy.to_string(),
        });
    }

    /// Raises the per-policy verdict counters to the datapath's sums.
    pub(crate) fn sync_verdicts(
        &self,
        sums: &std::collections::BTreeMap<u32, u64>,
        names: &std::collections::BTreeMap<u32, String>,
    ) {
        for (slot, sum) in sums {
            let Some(policy) = names.get(slot) else {
                continue;
            };
            let c = self.policy_verdicts.get_or_create(&PolicyLabels {
                policy: policy.clone(),
            });
            let cur = c.get();
            if *sum > cur {
                c.inc_by(sum - cur);
            }
        }
    }

    /// Raises the packet counters to the datapath's current sums.
    /// Raises the per-reason drop counters to the datapath's sums.
    pub(crate) fn sync_drops(
        &self,
        sums: &std::collections::BTreeMap<crate::datapath::DropReason, u64>,
    ) {
        for (reason, sum) in sums {
            let c = self.drops.get_or_create(&DropLabels {
                reason: reason.as_str(),
            });
            let cur = c.get();
            if *sum > cur {
                c.inc_by(sum - cur);
            }
        }
    }

    pub(crate) fn sync_packets(&self, sums: &std::collections::BTreeMap<&'static str, u64>) {
        for (verdict, sum) in sums {
            let c = self.packets.get_or_create(&VerdictLabels { verdict });
            let cur = c.get();
            if *sum > cur {
                c.inc_by(sum - cur);
            }
        }
    }
}
