//! Extender metrics (`sextant_scheduler_ext_*`).

use std::time::Instant;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Prefix of every extender metric.
pub const PREFIX: &str = "sextant_scheduler_ext";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    verb: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IndexLabels {
    kind: &'static str,
}

/// Extender metrics; clones share the series.
#[derive(Clone, Debug)]
pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    filter_duration: Histogram,
    index_objects: Family<IndexLabels, Gauge>,
    connections: Gauge,
    connections_evicted: Counter,
    unsynced_answers: Family<VerbLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            decisions: Family::default(),
            filter_duration: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            index_objects: Family::default(),
            connections: Gauge::default(),
            connections_evicted: Counter::default(),
            unsynced_answers: Family::default(),
        }
    }
}

/// Observes the filter duration when dropped.
pub struct FilterTimer {
    start: Instant,
    histogram: Histogram,
}

impl Drop for FilterTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

impl Metrics {
    /// Registers under `registry` with the [`PREFIX`].
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix(PREFIX);
        sub.register(
            "decisions",
            "Filter and prioritize answers by verb and result (pass, no_fit, scored, error)",
            self.decisions.clone(),
        );
        sub.register(
            "filter_duration_seconds",
            "Filter requests from first byte of the body to the encoded answer",
            self.filter_duration.clone(),
        );
        sub.register(
            "index_objects",
            "Objects in the extender's index by kind (nodenetworks, fixedips)",
            self.index_objects.clone(),
        );
        sub.register(
            "connections",
            "Extender connections open now (at most --max-connections)",
            self.connections.clone(),
        );
        sub.register(
            "connections_evicted",
            "Connections closed at the cap to make room: the one waiting on its peer the longest",
            self.connections_evicted.clone(),
        );
        sub.register(
            "unsynced_answers",
            "Answers given before the index listed every NodeNetwork and FixedIP, by verb",
            self.unsynced_answers.clone(),
        );
    }

    /// Records the open connections.
    pub fn connections(&self, open: usize) {
        self.connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Counts one connection evicted at the cap.
    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// Connections evicted so far.
    pub fn connections_evicted(&self) -> u64 {
        self.connections_evicted.get()
    }

    /// Counts one answer given while the index is not synced.
    pub fn unsynced_answer(&self, verb: &'static str) {
        self.unsynced_answers
            .get_or_create(&VerbLabels { verb })
            .inc();
    }

    /// Counts one answer.
    pub fn decision(&self, verb: &'static str, result: &'static str) {
        self.decisions
            .get_or_create(&DecisionLabels { verb, result })
            .inc();
    }

    /// Answers counted so far for `verb` and `result`.
    pub fn decisions(&self, verb: &'static str, result: &'static str) -> u64 {
        self.decisions
            .get_or_create(&DecisionLabels { verb, result })
            .get()
    }

    /// Starts timing one filter request.
    pub fn filter_timer(&self) -> FilterTimer {
        FilterTimer {
            start: Instant::now(),
            histogram: self.filter_duration.clone(),
        }
    }

    /// Records the index sizes.
    pub fn index_sizes(&self, nodenetworks: usize, fixedips: usize) {
        for (kind, n) in [("nodenetworks", nodenetworks), ("fixedips", fixedips)] {
            self.index_objects
                .get_or_create(&IndexLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }
}
