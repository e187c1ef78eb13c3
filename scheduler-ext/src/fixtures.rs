//! Test builders of the extender's own inputs: pods as kube-scheduler sends
//! them and a synced index. NodeNetworks and FixedIPs come from
//! `sextant_crds::testing`.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use sextant_crds::{FixedIP, NodeNetwork};

use crate::index::Index;

/// A pod `ns/name` as kube-scheduler sends it (metadata only matters).
pub fn mk_pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

/// A synced index holding `nodes` and `fixed`.
pub fn mk_index(nodes: &[NodeNetwork], fixed: &[FixedIP]) -> Index {
    let mut index = Index::default();
    index.reset_nodes(nodes);
    index.reset_fixed_ips(fixed);
    index
}

/// A CA, a serving pair for `localhost` / 127.0.0.1 and a client pair, made
/// on the spot and written into a temporary directory.
pub struct TestPki {
    /// The directory holding the files (removed on drop).
    _dir: tempfile::TempDir,
    /// The CA, PEM: what clients trust and what client certificates chain to.
    pub ca_pem: String,
    /// `ca.crt`.
    pub ca: std::path::PathBuf,
    /// `tls.crt`, the serving certificate.
    pub cert: std::path::PathBuf,
    /// `tls.key`.
    pub key: std::path::PathBuf,
    /// A client certificate and key signed by the CA, PEM, concatenated
    /// (what `reqwest::Identity::from_pem` reads).
    pub client_pem: String,
}

impl TestPki {
    /// A fresh PKI.
    pub fn new() -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sextant-scheduler-ext-test-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = KeyPair::generate().expect("serving key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("serving params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &ca).expect("serving cert");
        let client_key = KeyPair::generate().expect("client key");
        let mut client = CertificateParams::new(Vec::<String>::new()).expect("client params");
        client
            .distinguished_name
            .push(DnType::CommonName, "system:kube-scheduler");
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_cert = client.signed_by(&client_key, &ca).expect("client cert");
        let write = |name: &str, body: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, body).expect("write pem");
            path
        };
        TestPki {
            ca: write("ca.crt", &ca.pem()),
            cert: write("tls.crt", &cert.pem()),
            key: write("tls.key", &key.serialize_pem()),
            ca_pem: ca.pem(),
            client_pem: format!("{}{}", client_cert.pem(), client_key.serialize_pem()),
            _dir: dir,
        }
    }

    /// An HTTPS client trusting only this CA, presenting the client pair
    /// when `identity` holds.
    pub fn client(&self, identity: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA pem"),
            )
            .tls_built_in_root_certs(false)
            .timeout(std::time::Duration::from_secs(10));
        if identity {
            b = b.identity(
                reqwest::Identity::from_pem(self.client_pem.as_bytes()).expect("client pem"),
            );
        }
        b.build().expect("client")
    }

    /// A TLS connector trusting only this CA (for hand-made requests).
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.expect("CA pem")).expect("CA added");
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
    }
}
