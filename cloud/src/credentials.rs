//! Why a provider has no credentials: what the operator checks at start
//! (environment, token files) and what a token exchange with the cloud's
//! STS can answer.
//!
//! Both clouds take a Kubernetes ServiceAccount token that the kubelet
//! projects into the pod and rotates, and trade it for short-lived keys:
//!
//! ```text
//!  AWS IRSA     AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE ──▶ STS AssumeRoleWithWebIdentity (aws-config's chain)
//!  Alibaba RRSA ALIBABA_CLOUD_ROLE_ARN + _OIDC_PROVIDER_ARN
//!               + _OIDC_TOKEN_FILE                         ──▶ STS AssumeRoleWithOIDC (crate::alibaba)
//! ```
//!
//! A missing variable or an unreadable token file is found at start, as a
//! [`CredentialsError`] naming the variable or the file, never at the first
//! cloud call.

use std::{fs, path::PathBuf};

/// The provider of a credential, as its messages name it.
pub const AWS: &str = "AWS";
/// The provider of a credential, as its messages name it.
pub const ALIBABA: &str = "Alibaba Cloud";

/// Credentials that cannot be set up or renewed.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A variable the chosen source needs is not set (or empty).
    #[error("{provider} credentials: {var} is not set")]
    Missing {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The environment variable.
        var: &'static str,
    },
    /// One of a set of variables is set without the others.
    #[error("{provider} credentials: {set} is set but {missing} is not")]
    Incomplete {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// A variable that is set.
        set: &'static str,
        /// A variable of the same source that is not.
        missing: &'static str,
    },
    /// No source is configured at all.
    #[error("{provider} credentials: none configured ({hint})")]
    NoneConfigured {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// What would configure one.
        hint: &'static str,
    },
    /// The projected ServiceAccount token cannot be read.
    #[error("{provider} credentials: reading the token file {}", path.display())]
    TokenFile {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The projected ServiceAccount token file is empty.
    #[error("{provider} credentials: the token file {} is empty", path.display())]
    EmptyToken {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// STS could not be reached or did not answer in time.
    #[error("{provider} credentials: {api} at {endpoint}: no answer")]
    StsTransport {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The STS call.
        api: &'static str,
        /// Where it was sent.
        endpoint: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// STS refused the exchange (a bad or expired token, a role that does
    /// not trust the provider, throttling).
    #[error(
        "{provider} credentials: {api} refused with HTTP {status}: {code}: {message}{}",
        if request_id.is_empty() { String::new() } else { format!(" (RequestId {request_id})") }
    )]
    StsRefused {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The STS call.
        api: &'static str,
        /// HTTP status.
        status: u16,
        /// STS's error code (`AuthenticationFail.OIDCToken.Invalid`, ...).
        code: String,
        /// STS's message.
        message: String,
        /// STS's request id, for support cases.
        request_id: String,
    },
    /// STS answered something that is not an STS answer.
    #[error("{provider} credentials: {api} answered HTTP {status} with {what}")]
    StsMalformed {
        /// [`AWS`] or [`ALIBABA`].
        provider: &'static str,
        /// The STS call.
        api: &'static str,
        /// HTTP status.
        status: u16,
        /// What is wrong with the answer.
        what: String,
    },
}

impl CredentialsError {
    /// Whether STS asked us to slow down.
    pub fn is_throttled(&self) -> bool {
        matches!(self, CredentialsError::StsRefused { code, .. } if code.starts_with("Throttling"))
    }

    /// Label for the `kind` of a credentials failure in metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CredentialsError::Missing { .. }
            | CredentialsError::Incomplete { .. }
            | CredentialsError::NoneConfigured { .. } => "not_configured",
            CredentialsError::TokenFile { .. } | CredentialsError::EmptyToken { .. } => {
                "token_file"
            }
            CredentialsError::StsTransport { .. } => "sts_unavailable",
            CredentialsError::StsRefused { .. } => "sts_refused",
            CredentialsError::StsMalformed { .. } => "sts_malformed",
        }
    }
}

/// Reads a projected ServiceAccount token: the whole file, trimmed; an
/// unreadable or empty file is an error naming it.
pub(crate) fn read_token(
    provider: &'static str,
    path: &std::path::Path,
) -> Result<String, CredentialsError> {
    let text = fs::read_to_string(path).map_err(|source| CredentialsError::TokenFile {
        provider,
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CredentialsError::EmptyToken {
            provider,
            path: path.to_owned(),
        });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_that_is_missing_a_directory_or_empty_is_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("sextant-token-{}", rand::random::<u64>()));
        fs::create_dir_all(&dir).unwrap();
        let missing = read_token(AWS, &dir.join("absent")).unwrap_err();
        assert!(
            matches!(missing, CredentialsError::TokenFile { .. }),
            "{missing:?}"
        );
        assert!(missing.to_string().contains("absent"), "{missing}");
        let directory = read_token(ALIBABA, &dir).unwrap_err();
        assert!(matches!(directory, CredentialsError::TokenFile { .. }));
        let empty = dir.join("empty");
        fs::write(&empty, " \n").unwrap();
        let e = read_token(ALIBABA, &empty).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "Alibaba Cloud credentials: the token file {} is empty",
                empty.display()
            )
        );
        let good = dir.join("token");
        fs::write(&good, "eyJ.token.sig\n").unwrap();
        assert_eq!(read_token(AWS, &good).unwrap(), "eyJ.token.sig");
        fs::remove_dir_all(&dir).unwrap();
    }
}
