//! Operator metrics (`sextant_operator_*`) of the fixed-IP and policy-status
//! controllers; node IPAM's are `sextant_ipam::metrics`.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    error: &'static str,
}

/// FixedIP controller metrics; clones share the series.
#[derive(Clone, Default)]
pub(crate) struct FixedIpMetrics {
    steps: Family<StepLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    reconciles: Counter,
    parking_released: Counter,
    parking_orphans: Gauge,
}

impl FixedIpMetrics {
    /// Registers under `registry` (give it a `sextant_operator` prefix).
    pub(crate) fn register(&self, registry: &mut Registry) {
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
        registry.register(
            "fixed_ip_parking_released",
            "Addresses given back from parking ENIs because no FixedIP named them for the grace",
            self.parking_released.clone(),
        );
        registry.register(
            "fixed_ip_parking_orphans",
            "Addresses on parking ENIs that no FixedIP names, waiting out the grace",
            self.parking_orphans.clone(),
        );
    }

    /// Counts addresses the orphan sweep gave back.
    pub(crate) fn parking_released(&self, n: usize) {
        self.parking_released
            .inc_by(u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Sets how many orphaned parking addresses wait out their grace.
    pub(crate) fn parking_orphans(&self, n: usize) {
        self.parking_orphans
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Orphaned parking addresses given back so far.
    #[cfg(test)]
    pub(crate) fn parking_released_total(&self) -> u64 {
        self.parking_released.get()
    }

    /// Counts one reconcile and its planned steps.
    pub(crate) fn reconciled<'a>(&self, kinds: impl IntoIterator<Item = &'a str>) {
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
    pub(crate) fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }

    /// Failed reconciles of `error` counted so far.
    #[cfg(test)]
    pub(crate) fn errors(&self, error: &'static str) -> u64 {
        self.errors.get_or_create(&ErrorLabels { error }).get()
    }

    /// Steps of `kind` counted so far.
    #[cfg(test)]
    pub(crate) fn steps(&self, kind: &'static str) -> u64 {
        self.steps.get_or_create(&StepLabels { kind }).get()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// Network-policy status metrics; clones share the series.
#[derive(Clone, Default)]
pub(crate) struct PolicyMetrics {
    policies: Family<StateLabels, Gauge>,
    errors: Family<ErrorLabels, Counter>,
    identities_deleted: Counter,
}

impl PolicyMetrics {
    /// Registers under `registry` (give it a `sextant_operator` prefix).
    pub(crate) fn register(&self, registry: &mut Registry) {
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
    pub(crate) fn identities_deleted(&self) -> Counter {
        self.identities_deleted.clone()
    }

    /// Sets the number of accepted and rejected policies.
    pub(crate) fn set_policies(&self, accepted: usize, rejected: usize) {
        for (state, n) in [("accepted", accepted), ("rejected", rejected)] {
            self.policies
                .get_or_create(&StateLabels { state })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Policies in `state` (`accepted`, `rejected`) as last set.
    #[cfg(test)]
    pub(crate) fn policies(&self, state: &'static str) -> i64 {
        self.policies
            .get(&StateLabels { state })
            .map(|g| g.get())
            .unwrap_or(0)
    }

    /// Counts a failed reconcile.
    pub(crate) fn error(&self, error: &'static str) {
        self.errors.get_or_create(&ErrorLabels { error }).inc();
    }
}
