//! Device-plugin metrics (`sextant_device_plugin_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::devices::DeviceList;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
    result: &'static str,
}

/// Device-plugin metrics; clones share the series.
#[derive(Clone, Default)]
pub struct Metrics {
    capacity: Gauge,
    healthy: Gauge,
    registrations: Family<ResultLabels, Counter>,
    agent_polls: Family<ResultLabels, Counter>,
    rpcs: Family<MethodLabels, Counter>,
    list_updates: Counter,
}

impl Metrics {
    /// Registers under `registry` (give it a `sextant_device_plugin` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "capacity_devices",
            "sextant.io/ip devices advertised to kubelet",
            self.capacity.clone(),
        );
        registry.register(
            "healthy_devices",
            "Advertised devices that are healthy (kubelet's allocatable)",
            self.healthy.clone(),
        );
        registry.register(
            "registrations",
            "Registrations with kubelet, by result (ok or error label)",
            self.registrations.clone(),
        );
        registry.register(
            "agent_polls",
            "Polls of the agent's /v1/healthz, by result (ok or error label)",
            self.agent_polls.clone(),
        );
        registry.register(
            "rpcs",
            "Device-plugin API calls served, by method and result",
            self.rpcs.clone(),
        );
        registry.register(
            "list_updates",
            "Device-list changes published to ListAndWatch",
            self.list_updates.clone(),
        );
    }

    /// A registry holding only these metrics, prefixed `sextant_device_plugin`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("sextant_device_plugin");
        self.register(&mut registry);
        registry
    }

    /// Records a published device list.
    pub fn published(&self, list: &DeviceList) {
        self.capacity.set(i64::from(list.total));
        self.healthy.set(i64::from(list.healthy()));
        self.list_updates.inc();
    }

    /// Records a registration attempt.
    pub fn registration(&self, result: &'static str) {
        self.registrations
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records an agent poll.
    pub fn agent_poll(&self, result: &'static str) {
        self.agent_polls
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// Records a served call.
    pub fn rpc(&self, method: &'static str, result: &'static str) {
        self.rpcs
            .get_or_create(&MethodLabels { method, result })
            .inc();
    }
}
