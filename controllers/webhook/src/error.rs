//! Webhook errors: what can stop the HTTPS shell from starting or reloading.
//! Review problems are never errors: they become AdmissionResponses.

use std::path::PathBuf;

/// Why the webhook cannot serve, or cannot load new TLS files.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A TLS file could not be read.
    #[error("reading {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The certificate file has no PEM certificate, or a broken one.
    #[error("{path} holds no usable PEM certificate")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// The PEM error, if the file was broken rather than empty.
        #[source]
        source: Option<rustls::pki_types::pem::Error>,
    },
    /// The key file has no usable PEM private key.
    #[error("{path} holds no usable PEM private key")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// The PEM error.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The key does not fit the certificate, or rustls refused the pair.
    #[error("certificate {cert} and key {key} do not make a usable pair")]
    BadPair {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
    /// rustls refused the server configuration.
    #[error("building the TLS configuration")]
    TlsConfig {
        /// rustls' error.
        #[source]
        source: rustls::Error,
    },
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
            WebhookError::ReadFile { .. } => "read_file",
            WebhookError::NoCertificate { .. } => "no_certificate",
            WebhookError::NoKey { .. } => "no_key",
            WebhookError::BadPair { .. } => "bad_pair",
            WebhookError::TlsConfig { .. } => "tls_config",
            WebhookError::Bind { .. } => "bind",
        }
    }
}
