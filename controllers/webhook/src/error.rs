//! Webhook errors: what can stop the HTTPS shell from starting or reloading.
//! Review problems are never errors: they become AdmissionResponses.

/// Why the webhook cannot serve, or cannot load new TLS files.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A TLS file or the TLS configuration cannot be used.
    #[error(transparent)]
    Tls(#[from] sextant_kit::tls::TlsError),
    /// The listen or metrics address could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl WebhookError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            WebhookError::Tls(e) => e.metric_label(),
            WebhookError::Bind { .. } => "bind",
        }
    }
}
