//! The serving certificate, reloaded when its files change (cert-manager or
//! a Secret update rewrites them; kubelet swaps the `..data` symlink, so the
//! files' identity and mtime change): `sextant_kit::tls`, shared with the
//! scheduler extender.

use std::{sync::Arc, time::Duration};

use crate::{error::WebhookError, metrics::WebhookMetrics};

pub use sextant_kit::tls::{ServingCert as ReloadingCert, TlsError, load_pair};

/// Follows the pair's files every `interval` until dropped, counting each
/// reload in `sextant_webhook_tls_reloads_total{result}`.
pub async fn watch(cert: Arc<ReloadingCert>, interval: Duration, metrics: WebhookMetrics) {
    cert.watch(interval, move |outcome: Result<(), &TlsError>| {
        metrics.tls_reload(outcome.map_or_else(|e| e.metric_label(), |()| "ok"));
    })
    .await;
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN) that
/// takes its certificate from `cert`; no client certificates.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    Ok(Arc::new(sextant_kit::tls::server_config(cert, None)?))
}
