//! The extender's serving certificate (and, optionally, the CA its clients'
//! certificates must chain to), for kube-scheduler's `enableHTTPS` /
//! `tlsConfig`. The pair is re-read when its files change (a Secret update
//! swaps kubelet's `..data` symlink, so identity and mtime move); a broken
//! new pair is reported and the previous one kept.

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

use crate::error::{Error, Result};

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
    std::fs::read(path).map_err(|source| Error::TlsRead {
        path: path.to_owned(),
        source,
    })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read(path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|source| Error::TlsPem {
            path: path.to_owned(),
            what: "certificate",
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::TlsNoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Reads a PEM certificate chain and its private key into a checked pair.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey> {
    let chain = certificates(cert)?;
    let key_pem = read(key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| Error::TlsPem {
        path: key.to_owned(),
        what: "private key",
        source,
    })?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|source| Error::TlsPair {
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

    /// Looks at the files every `interval` until the task is dropped.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload_if_changed()).await {
                Ok(Ok(true)) => {
                    info!(cert = %self.cert_path.display(), "serving certificate reloaded");
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => warn!(
                    error = %sextant_kit::ErrorChain(&e),
                    "TLS files changed but cannot be used; keeping the previous pair"
                ),
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
/// to it is required (kube-scheduler's `tlsConfig.certFile`/`keyFile`).
pub fn server_config(cert: Arc<ServingCert>, client_ca: Option<&Path>) -> Result<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|source| Error::TlsConfig { source })?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for ca in certificates(path)? {
                roots.add(ca).map_err(|source| Error::TlsClientCa {
                    path: path.to_owned(),
                    source: Box::new(source),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|source| Error::TlsClientCa {
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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::fixtures::TestPki;

    fn leaf(cert: &ServingCert) -> Vec<u8> {
        cert.current().cert[0].as_ref().to_vec()
    }

    #[test]
    fn a_rewritten_pair_is_served_after_reload_and_a_broken_one_keeps_the_old() {
        let first = TestPki::new();
        let cert = ServingCert::load(&first.cert, &first.key).unwrap();
        let served = leaf(&cert);
        assert!(!cert.reload_if_changed().unwrap(), "nothing changed yet");

        // A rotated pair, swapped in as kubelet swaps a Secret's files.
        let second = TestPki::new();
        for (from, to) in [(&second.cert, &first.cert), (&second.key, &first.key)] {
            let tmp = to.with_extension("new");
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
        assert!(cert.reload_if_changed().unwrap());
        let rotated = leaf(&cert);
        assert_ne!(rotated, served, "the new certificate is served");

        // A half-written key: reported, the rotated pair stays.
        std::fs::write(&first.key, "-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
        let err = cert.reload_if_changed().unwrap_err();
        assert!(
            sextant_kit::ErrorChain(&err)
                .to_string()
                .contains("tls.key"),
            "{}",
            sextant_kit::ErrorChain(&err)
        );
        assert_eq!(leaf(&cert), rotated);
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_at_load() {
        let a = TestPki::new();
        let b = TestPki::new();
        let err = ServingCert::load(&a.cert, &b.key).unwrap_err();
        assert_eq!(err.metric_label(), "tls_pair");
    }
}
