//! Webhook metrics (`sextant_webhook_*`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Webhook metrics; clones share the series.
#[derive(Clone)]
pub struct WebhookMetrics {
    reviews: Family<ResultLabels, Counter>,
    duration: Family<ResultLabels, Histogram>,
    tls_reloads: Family<ResultLabels, Counter>,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        WebhookMetrics {
            reviews: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25,
                ])
            }),
            tls_reloads: Family::default(),
        }
    }
}

impl WebhookMetrics {
    /// Registers under `registry` (give it a `sextant_webhook` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "reviews",
            "AdmissionReviews answered, by result",
            self.reviews.clone(),
        );
        registry.register(
            "review_duration_seconds",
            "Time from the whole body read to the answer built, by result",
            self.duration.clone(),
        );
        registry.register(
            "tls_reloads",
            "TLS certificate reloads, by result (ok or error label)",
            self.tls_reloads.clone(),
        );
    }

    /// A registry holding only these metrics, prefixed `sextant_webhook`.
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("sextant_webhook");
        self.register(&mut registry);
        registry
    }

    /// Records one answered review.
    pub fn review(&self, result: &'static str, seconds: f64) {
        let labels = ResultLabels { result };
        self.reviews.get_or_create(&labels).inc();
        self.duration.get_or_create(&labels).observe(seconds);
    }

    /// Records a reload attempt that found changed files.
    pub fn tls_reload(&self, result: &'static str) {
        self.tls_reloads
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}
