//! The serving certificate, reloaded when its files change (cert-manager or
//! a Secret update rewrites them; kubelet swaps the `..data` symlink, so the
//! files' identity and mtime change).

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tracing::{info, warn};

use crate::{error::WebhookError, metrics::WebhookMetrics};

/// What identifies one version of a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a PEM certificate chain and private key into a checked pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| WebhookError::ReadFile {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| WebhookError::NoCertificate {
            path: cert.to_owned(),
            source: Some(e),
        })?;
    if chain.is_empty() {
        return Err(WebhookError::NoCertificate {
            path: cert.to_owned(),
            source: None,
        });
    }
    let private =
        PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| WebhookError::NoKey {
            path: key.to_owned(),
            source,
        })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| WebhookError::BadPair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// Hands rustls the current pair; [`ReloadingCert::reload_if_changed`] swaps
/// in a new one. A broken new pair is reported and the old one kept.
pub struct ReloadingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<(Option<Stamp>, Option<Stamp>)>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Loads the pair once; fails if it is not usable now.
    pub fn load(
        cert_path: impl Into<PathBuf>,
        key_path: impl Into<PathBuf>,
    ) -> Result<Self, WebhookError> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let stamps = (stamp(&cert_path), stamp(&key_path));
        let pair = load_pair(&cert_path, &key_path)?;
        Ok(ReloadingCert {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(pair)),
            stamps: Mutex::new(stamps),
        })
    }

    /// Reloads when either file changed since the last load. `Ok(true)` when
    /// a new pair is in use; on error the previous pair stays in use and the
    /// same files are tried again next time only if they change.
    pub fn reload_if_changed(&self) -> Result<bool, WebhookError> {
        let now = (stamp(&self.cert_path), stamp(&self.key_path));
        {
            let mut seen = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(pair);
        Ok(true)
    }

    /// The pair in use.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Checks the files every `interval` until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration, metrics: WebhookMetrics) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            // File reads are small and local; a blocking task keeps them
            // off the reactor anyway.
            let me = self.clone();
            let result = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
            match result {
                Ok(Ok(true)) => {
                    metrics.tls_reload("ok");
                    info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    metrics.tls_reload(e.metric_label());
                    warn!(error = %sextant_kit::ErrorChain(&e), "TLS files changed but cannot be used; keeping the previous pair");
                }
                Err(e) => warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A rustls server configuration (TLS 1.2 and 1.3, HTTP/1.1 by ALPN) that
/// takes its certificate from `cert`.
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, WebhookError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| WebhookError::TlsConfig { source })?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
