//! What the agent reports (health, `/v1/ipam`, services, metrics) and the
//! datapath's own housekeeping (service entries, conntrack sweeps).

use std::{sync::Arc, time::Duration};

use sextant_agent_api::{DatapathHealth, Health, IpamHealth, IpamList, ServiceList, ServiceSpec};
use sextant_kit::sync::lock;

use super::{Agent, now_ms};
use crate::{
    datapath::CtTimeouts,
    error::{Error, Result},
    metrics::PoolLabels,
};

impl Agent {
    /// Sets (or, with no backends, removes) one ClusterIP frontend.
    pub fn set_service(&self, spec: &ServiceSpec) -> Result<()> {
        let mut dp = lock(&self.datapath);
        let dp = dp.as_mut().ok_or(Error::NoDatapath)?;
        if spec.backends.is_empty() {
            dp.remove_service(&spec.frontend)
        } else {
            dp.set_service(&spec.frontend, &spec.backends)
        }
    }

    /// `GET /v1/services`: what the datapath's service map holds.
    pub fn services(&self) -> ServiceList {
        let services = lock(&self.datapath)
            .as_ref()
            .map(|dp| {
                dp.services()
                    .into_iter()
                    .map(|(frontend, backends)| ServiceSpec { frontend, backends })
                    .collect()
            })
            .unwrap_or_default();
        ServiceList { services }
    }

    /// `GET /v1/healthz`.
    pub fn health(&self) -> Health {
        let st = lock(&self.state);
        let c = st.node.pool().counts(now_ms());
        let (capacity, unavailable) = st.node.capacity();
        let dp = lock(&self.datapath);
        Health {
            state: st.phase.state(),
            ipam: IpamHealth {
                status: format!("IPv4: {}/{} allocated", c.allocated, c.pool),
                allocated: c.allocated,
                pool: c.pool,
                free: c.free,
                cooldown: c.cooldown,
                capacity: capacity.max(c.pool),
                unavailable,
            },
            datapath: match dp.as_ref() {
                Some(d) => DatapathHealth {
                    loaded: true,
                    pinned: d.root().display().to_string(),
                    endpoints: d.endpoint_count(),
                    services: d.service_count(),
                },
                None => DatapathHealth {
                    loaded: false,
                    pinned: self
                        .cfg
                        .bpf_root
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    endpoints: 0,
                    services: 0,
                },
            },
        }
    }

    /// `GET /v1/ipam`.
    pub fn ipam(&self) -> IpamList {
        IpamList {
            allocations: lock(&self.state)
                .node
                .pool()
                .allocations()
                .cloned()
                .collect(),
        }
    }

    /// Prometheus text of every agent series, refreshed from pool and datapath.
    pub fn metrics_text(&self) -> String {
        self.refresh_metrics();
        sextant_kit::admin::metrics_text(&self.registry).unwrap_or_default()
    }

    /// Every agent series, for the TCP admin listener.
    pub fn registry(&self) -> Arc<prometheus_client::registry::Registry> {
        self.registry.clone()
    }

    /// Brings the gauges read from pool and datapath up to date.
    pub fn refresh_metrics(&self) {
        {
            let st = lock(&self.state);
            let c = st.node.pool().counts(now_ms());
            for (state, n) in [
                ("allocated", c.allocated),
                ("free", c.free),
                ("cooldown", c.cooldown),
                ("releasing", c.releasing),
            ] {
                self.metrics
                    .pool
                    .get_or_create(&PoolLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        // Lock order: policy before datapath.
        let names = lock(&self.policy)
            .node
            .engine()
            .contents()
            .policy_names
            .clone();
        if let Some(dp) = lock(&self.datapath).as_ref() {
            self.metrics.sync_packets(&dp.counters());
            self.metrics.sync_drops(&dp.drops());
            self.metrics
                .sync_verdicts(&dp.policy_verdicts(names.keys().copied()), &names);
        }
    }

    /// Removes idle conntrack entries every `every` until the process ends.
    pub async fn sweep_conntrack(self: Arc<Self>, every: Duration, timeouts: CtTimeouts) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let sweep = lock(&self.datapath)
                .as_mut()
                .map(|dp| dp.sweep_conntrack(timeouts));
            if let Some(s) = sweep {
                self.metrics
                    .conntrack_entries
                    .set(i64::try_from(s.live).unwrap_or(i64::MAX));
                self.metrics.conntrack_expired.inc_by(s.expired as u64);
                if s.expired > 0 {
                    tracing::debug!(expired = s.expired, live = s.live, "conntrack swept");
                }
            }
        }
    }
}
