//! `sextant_observer_*` metrics, brought up to date from the store's exact
//! account before each scrape ([`ObserverMetrics::sync`]), so the ingest
//! path touches no metric.

use std::sync::{Mutex, atomic::AtomicI64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{source::LossStage, store::StoreStatus};

/// Labels of lost-flow counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// ring, queue, store, export.
    pub stage: String,
    /// Why.
    pub reason: String,
}

/// Labels of store occupancy.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabels {
    /// normal or priority.
    pub lane: String,
}

/// The observer's metrics.
#[derive(Debug, Default)]
pub struct ObserverMetrics {
    seen: Counter,
    lost: Family<LostLabels, Counter>,
    unexplained: Gauge,
    stored: Family<LaneLabels, Gauge>,
    capacity: Family<LaneLabels, Gauge>,
    /// Clients streaming flows now.
    pub clients: Gauge<i64, AtomicI64>,
    last: Mutex<Option<StoreStatus>>,
}

impl ObserverMetrics {
    /// Registers the metrics under `registry` (prefix `sextant_observer`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("sextant_observer");
        r.register(
            "flows_seen",
            "Flows the node produced that the observer knows of (arrived or lost before arriving)",
            self.seen.clone(),
        );
        r.register(
            "flows_lost",
            "Flows lost, by stage (ring, queue, store, export) and reason",
            self.lost.clone(),
        );
        r.register(
            "flows_unexplained_gap",
            "Flows missing from sequence numbers that no loss report explains yet",
            self.unexplained.clone(),
        );
        r.register(
            "store_flows",
            "Flows held in the store, by lane",
            self.stored.clone(),
        );
        r.register(
            "store_capacity_flows",
            "Capacity of the store, by lane",
            self.capacity.clone(),
        );
        r.register(
            "clients",
            "Clients streaming flows now",
            self.clients.clone(),
        );
    }

    /// Brings the metrics up to `now` (counters grow by the difference).
    pub fn sync(&self, now: &StoreStatus, normal_cap: usize, priority_cap: usize) {
        let mut last = sextant_kit::sync::lock(&self.last);
        let before = |stage: LossStage, reason: &str| -> u64 {
            last.as_ref().map_or(0, |l| {
                l.lost_by
                    .iter()
                    .find(|x| x.stage == stage && x.reason == reason)
                    .map_or(0, |x| x.count)
            })
        };
        let prev_seen = last.as_ref().map_or(0, |l| l.seen);
        self.seen.inc_by(now.seen.saturating_sub(prev_seen));
        let mut unexplained = 0;
        for l in &now.lost_by {
            if l.stage == LossStage::Sequence {
                unexplained += l.count;
                continue;
            }
            let delta = l.count.saturating_sub(before(l.stage, l.reason));
            self.lost
                .get_or_create(&LostLabels {
                    stage: l.stage.as_str().into(),
                    reason: l.reason.into(),
                })
                .inc_by(delta);
        }
        let prev_export = last.as_ref().map_or(0, |l| l.export_lost);
        self.lost
            .get_or_create(&LostLabels {
                stage: LossStage::Export.as_str().into(),
                reason: "client_buffer_full".into(),
            })
            .inc_by(now.export_lost.saturating_sub(prev_export));
        self.unexplained
            .set(i64::try_from(unexplained).unwrap_or(i64::MAX));
        for (lane, kept, cap) in [
            ("normal", now.kept_normal, normal_cap),
            ("priority", now.kept_priority, priority_cap),
        ] {
            let l = LaneLabels { lane: lane.into() };
            self.stored
                .get_or_create(&l)
                .set(i64::try_from(kept).unwrap_or(i64::MAX));
            self.capacity
                .get_or_create(&l)
                .set(i64::try_from(cap).unwrap_or(i64::MAX));
        }
        *last = Some(now.clone());
    }
}
