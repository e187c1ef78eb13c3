//! Shared by the webhook tests and the P5 bench: certificates made on the
//! spot, a server on a loopback port, fixtures.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sextant_webhook::{ReloadingCert, ReviewConfig, WebhookMetrics, WebhookServer};
use tokio::{net::TcpListener, task::JoinHandle};

/// A CA and a serving certificate for `localhost` and 127.0.0.1.
pub struct TestPki {
    /// The CA, PEM: what clients trust.
    pub ca_pem: String,
    /// The serving certificate, PEM.
    pub cert_pem: String,
    /// The serving key, PEM.
    pub key_pem: String,
}

impl TestPki {
    /// A fresh CA and serving pair.
    pub fn new(ca_name: &str) -> TestPki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA cert");
        let key = KeyPair::generate().expect("serving key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("serving params");
        params
            .distinguished_name
            .push(DnType::CommonName, "sextant-webhook.sextant-system.svc");
        let cert = params.signed_by(&key, &ca).expect("serving cert");
        TestPki {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Writes the serving pair as `tls.crt` / `tls.key` in `dir`.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        // Replace atomically, as kubelet's symlink swap does for Secrets.
        for (path, body) in [(&cert, &self.cert_pem), (&key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, body).expect("write pem");
            std::fs::rename(&tmp, path).expect("rename pem");
        }
        (cert, key)
    }

    /// A keep-alive HTTPS client trusting only this CA.
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).expect("CA pem"),
            )
            .tls_built_in_root_certs(false)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client")
    }
}

/// A webhook serving on a loopback port with files in a temp dir.
pub struct TestWebhook {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub cert: Arc<ReloadingCert>,
    pub metrics: WebhookMetrics,
    pub task: JoinHandle<()>,
}

impl TestWebhook {
    /// Starts serving `pki`'s pair; `kube-system` is skipped.
    pub async fn start(pki: &TestPki) -> TestWebhook {
        Self::start_with_max_connections(pki, 256).await
    }

    /// [`start`](Self::start) serving at most `max` connections at once.
    pub async fn start_with_max_connections(pki: &TestPki, max: usize) -> TestWebhook {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_path, key_path) = pki.write(dir.path());
        let cert = Arc::new(ReloadingCert::load(&cert_path, &key_path).expect("load pair"));
        let metrics = WebhookMetrics::default();
        let server = WebhookServer::new(
            cert.clone(),
            ReviewConfig {
                skip_namespaces: ["kube-system".to_owned()].into(),
                ..ReviewConfig::default()
            },
            metrics.clone(),
            Duration::from_secs(5),
        )
        .expect("server")
        .with_max_connections(max);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(server.serve(listener));
        TestWebhook {
            addr,
            dir,
            cert,
            metrics,
            task,
        }
    }

    /// `https://localhost:<port>/mutate`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}/mutate", self.addr.port())
    }

    /// The path for namespaces whose pods may opt out.
    pub fn opt_out_url(&self) -> String {
        format!("https://localhost:{}/mutate/pod-opt-out", self.addr.port())
    }
}

/// The fixture AdmissionReview: a StatefulSet pod CREATE as the API server
/// sends it.
pub fn pod_create_review() -> serde_json::Value {
    serde_json::from_str(include_str!("../fixtures/admission/pod-create.json"))
        .expect("fixture parses")
}
