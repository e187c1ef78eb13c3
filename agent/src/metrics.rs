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
pub(crate) struct VerdictLabels {
    pub verdict: &'static str,
}

/// The agent's series; clones share them.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) cni: Family<CniLabels, Counter>,
    pub(crate) cni_duration: Histogram,
    pub(crate) errors: Family<ErrorLabels, Counter>,
    pub(crate) pool: Family<PoolLabels, Gauge>,
    pub(crate) packets: Family<VerdictLabels, Counter>,
    pub(crate) reports: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            cni: Family::default(),
            cni_duration: Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            errors: Family::default(),
            pool: Family::default(),
            packets: Family::default(),
            reports: Counter::default(),
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
            "usage_reports",
            "Usage reports written to NodeNetwork status",
            self.reports.clone(),
        );
        root
    }

    pub(crate) fn error(&self, e: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: e.metric_label(),
            })
            .inc();
    }

    /// Raises the packet counters to the datapath's current sums.
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
