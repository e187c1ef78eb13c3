//! A serving certificate that follows its files (and, optionally, the CA
//! client certificates must chain to), for the HTTPS servers of the webhook
//! and the scheduler extender. The pair is re-read when its files change
//! (cert-manager or a Secret update rewrites them; kubelet swaps the
//! `..data` symlink, so identity and mtime move); a broken new pair is
//! reported and the previous one kept.

use std::{
    fmt,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier},
    sign::CertifiedKey,
};
use tracing::{info, warn};

/// Why a TLS file or configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A TLS file (serving certificate, key, client CA) could not be read.
    #[error("reading {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A TLS file is not the PEM it should be.
    #[error("{}: no usable PEM {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// The PEM reader's complaint.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no PEM certificate in the file", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate and key do not make a usable pair.
    #[error("{} and {} are not a usable certificate and key pair", cert.display(), key.display())]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls' complaint.
        #[source]
        source: rustls::Error,
    },
    /// The client CA cannot verify client certificates.
    #[error("{}: not a usable client CA", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// rustls' complaint.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// rustls refused the protocol configuration.
    #[error("building the TLS configuration")]
    Config {
        /// rustls' complaint.
        #[source]
        source: rustls::Error,
    },
}

impl TlsError {
    /// Label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            TlsError::Read { .. } => "tls_read",
            TlsError::Pem { .. } => "tls_pem",
            TlsError::NoCertificate { .. } => "tls_no_certificate",
            TlsError::Pair { .. } => "tls_pair",
            TlsError::ClientCa { .. } => "tls_client_ca",
            TlsError::Config { .. } => "tls_config",
        }
    }
}

type Result<T, E = TlsError> = std::result::Result<T, E>;

/// What tells one version of a file from the next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileVersion {
    inode: u64,
    len: u64,
    mtime_ns: i128,
}

fn version_of(path: &Path) -> Option<FileVersion> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileVersion {
        inode: m.ino(),
        len: m.len(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            what: "certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Reads a PEM certificate chain and its private key into a checked pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = certificates(cert)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
        source,
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

/// The serving pair in use, swapped by [`ServingCert::reload_if_changed`].
pub struct ServingCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<(Option<FileVersion>, Option<FileVersion>)>,
}

impl fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServingCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl ServingCert {
    /// Loads the pair; fails when it is not usable now.
    pub fn load(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Result<Self> {
        let cert_path = cert_path.into();
        let key_path = key_path.into();
        let seen = (version_of(&cert_path), version_of(&key_path));
        let pair = load_pair(&cert_path, &key_path)?;
        Ok(ServingCert {
            cert_path,
            key_path,
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        })
    }

    /// Re-reads the pair when either file changed since the last look:
    /// `Ok(true)` when a new pair is in use. On error the previous pair
    /// stays, and the files are read again only once they change again.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = (version_of(&self.cert_path), version_of(&self.key_path));
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if *seen == now {
                return Ok(false);
            }
            *seen = now;
        }
        let pair = load_pair(&self.cert_path, &self.key_path)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        Ok(true)
    }

    /// The pair handed to new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Looks at the files every `interval` until the task is dropped,
    /// telling `on_reload` each time they changed: `Ok(())` when the new
    /// pair is in use, the error when it cannot be (the old pair stays).
    pub async fn watch(
        self: Arc<Self>,
        interval: Duration,
        on_reload: impl Fn(std::result::Result<(), &TlsError>) + Send,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    on_reload(Ok(()));
                    info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    on_reload(Err(&e));
                    warn!(
                        error = %crate::ErrorChain(&e),
                        "TLS files changed but cannot be used; keeping the previous pair"
                    );
                }
                Err(e) => warn!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The rustls configuration: TLS 1.2 and 1.3, HTTP/1.1 by ALPN, the
/// certificate from `cert`; with `client_ca`, a client certificate chaining
/// to it is required (e.g. kube-scheduler's `tlsConfig.certFile`/`keyFile`).
pub fn server_config(cert: Arc<ServingCert>, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Config { source })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path)? {
                roots.add(ca).map_err(|source| TlsError::ClientCa {
                    path: path.to_owned(),
                    source: Box::new(source),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| TlsError::ClientCa {
                    path: path.to_owned(),
                    source: Box::new(source),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
