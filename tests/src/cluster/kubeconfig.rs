//! Kubeconfig files for the test cluster: client-certificate users (admin,
//! kube-controller-manager, kube-scheduler) and bearer-token users
//! (ServiceAccounts, through TokenRequest).

use std::path::Path;

use super::pki::ClientCert;

fn write(path: &Path, server: &str, ca: &Path, user: &str, auth: &str) -> anyhow::Result<()> {
    let text = format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: sextant-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n\
         - name: {user}\n  user:\n{auth}\
         contexts:\n\
         - name: {user}@sextant-test\n  context:\n    cluster: sextant-test\n    user: {user}\n\
         current-context: {user}@sextant-test\n",
        ca = ca.display(),
    );
    std::fs::write(path, text)?;
    Ok(())
}

/// A kubeconfig authenticating with a client certificate.
pub fn write_cert(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    cert: &ClientCert,
) -> anyhow::Result<()> {
    let auth = format!(
        "    client-certificate: {}\n    client-key: {}\n",
        cert.cert.display(),
        cert.key.display()
    );
    write(path, server, ca, user, &auth)
}

/// A kubeconfig authenticating with a bearer token.
pub fn write_token(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    write(path, server, ca, user, &format!("    token: {token}\n"))
}
