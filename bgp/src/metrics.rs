//! `sextant_bgp_*`: what BIRD reports, as the speaker last read it.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Labels naming one peer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's address.
    pub peer: String,
}

/// Labels naming why an apply failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`crate::Error::metric_label`].
    pub reason: String,
}

/// The speaker's metrics; clones share the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// 1 while the BGP session to the peer is Established.
    pub session_established: Family<PeerLabels, Gauge>,
    /// 1 while BIRD's BFD session to the peer is Up.
    pub bfd_up: Family<PeerLabels, Gauge>,
    /// Prefixes BIRD exports to the peer.
    pub prefixes_advertised: Family<PeerLabels, Gauge>,
    /// Unix time of the last configuration BIRD accepted with a change.
    pub last_change_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Configurations refused (by the renderer's checks or BIRD) or not
    /// applied (socket, files), by reason.
    pub config_apply_failures: Family<ReasonLabels, Counter>,
    /// From a change in the desired prefixes to BIRD exporting the new
    /// prefix to a peer.
    pub advertisement_latency_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            session_established: Family::default(),
            bfd_up: Family::default(),
            prefixes_advertised: Family::default(),
            last_change_timestamp_seconds: Gauge::default(),
            config_apply_failures: Family::default(),
            advertisement_latency_seconds: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        }
    }
}

impl Metrics {
    /// Registers every series under `sextant_bgp_` in `root`.
    pub fn register(&self, root: &mut Registry) {
        let r = root.sub_registry_with_prefix("sextant_bgp");
        r.register(
            "session_established",
            "1 while the BGP session to the peer is Established",
            self.session_established.clone(),
        );
        r.register(
            "bfd_up",
            "1 while the BFD session to the peer is Up",
            self.bfd_up.clone(),
        );
        r.register(
            "prefixes_advertised",
            "Prefixes BIRD exports to the peer",
            self.prefixes_advertised.clone(),
        );
        r.register(
            "last_change_timestamp_seconds",
            "Unix time BIRD last accepted a changed configuration",
            self.last_change_timestamp_seconds.clone(),
        );
        r.register(
            "config_apply_failures",
            "Configurations refused or not applied, by reason",
            self.config_apply_failures.clone(),
        );
        r.register(
            "advertisement_latency_seconds",
            "From a change in the desired prefixes to BIRD exporting the prefix to a peer",
            self.advertisement_latency_seconds.clone(),
        );
    }
}
