//! The test cluster's PKI, made on the spot with rcgen: one CA that signs the
//! API server's serving certificate and every client certificate, and the
//! service-account signing key.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

/// Files of the PKI, all PEM, in one directory.
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate: what every client and the API server trust.
    pub ca_cert: PathBuf,
    /// The API server's serving certificate (SANs: 127.0.0.1, localhost,
    /// the in-cluster `kubernetes` names and the service VIP).
    pub serving_cert: PathBuf,
    /// Its key.
    pub serving_key: PathBuf,
    /// The service-account token signing key (ECDSA P-256, PKCS#8).
    pub sa_key: PathBuf,
    /// Its public key (what the API server verifies tokens with).
    pub sa_pub: PathBuf,
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A client certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// Certificate file.
    pub cert: PathBuf,
    /// Key file.
    pub key: PathBuf,
}

impl Pki {
    /// A fresh CA, serving pair and service-account key written into `dir`.
    pub fn create(dir: &Path) -> anyhow::Result<Pki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sextant-test-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
        let ca_cert = dir.join("ca.crt");
        std::fs::write(&ca_cert, ca.pem())?;

        let serving = KeyPair::generate()?;
        let mut params = CertificateParams::new(
            [
                "127.0.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
                "10.96.0.1",
            ]
            .map(String::from)
            .to_vec(),
        )?;
        params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&serving, &ca)?;
        let serving_cert = dir.join("apiserver.crt");
        let serving_key = dir.join("apiserver.key");
        std::fs::write(&serving_cert, cert.pem())?;
        std::fs::write(&serving_key, serving.serialize_pem())?;

        let sa = KeyPair::generate()?;
        let sa_key = dir.join("sa.key");
        std::fs::write(&sa_key, sa.serialize_pem())?;
        let sa_pub = dir.join("sa.pub");
        std::fs::write(&sa_pub, sa.public_key_pem())?;
        Ok(Pki {
            ca_cert,
            serving_cert,
            serving_key,
            sa_key,
            sa_pub,
            dir: dir.to_path_buf(),
            ca,
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A serving certificate for `names` (DNS names or IP addresses),
    /// written as `<file>.crt` / `<file>.key`: the scheduler extender's, which
    /// kube-scheduler verifies against the CA (`tlsConfig.caFile`).
    pub fn serving_pair(&self, file: &str, names: &[&str]) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, file);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.ca)
            .with_context(|| format!("signing the serving certificate of {file}"))?;
        let out = ClientCert {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&out.cert, cert.pem())?;
        std::fs::write(&out.key, key.serialize_pem())?;
        Ok(out)
    }

    /// A client certificate for user `cn`, in `group` if given
    /// (`system:masters` makes a cluster admin), written as `<file>.crt` /
    /// `<file>.key`. (One group: rcgen keeps one value per name attribute.)
    pub fn client_cert(
        &self,
        file: &str,
        cn: &str,
        group: Option<&str>,
    ) -> anyhow::Result<ClientCert> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(g) = group {
            params.distinguished_name.push(DnType::OrganizationName, g);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &self.ca)
            .with_context(|| format!("signing the client certificate of {cn}"))?;
        let out = ClientCert {
            cert: self.dir.join(format!("{file}.crt")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&out.cert, cert.pem())?;
        std::fs::write(&out.key, key.serialize_pem())?;
        Ok(out)
    }
}
