//! Who ECS calls are signed as: a static AccessKey pair, or RRSA (RAM Roles
//! for Service Accounts), where the operator trades its projected
//! ServiceAccount token for short-lived STS keys and renews them before
//! they expire.
//!
//! ```text
//!  env ──from_env──▶ Credentials::Static ─────────────────────────────▶ Signer
//!                    Credentials::Rrsa ──▶ Rrsa::signer ──(due?)──▶ token file ──▶ POST sts AssumeRoleWithOIDC
//!                                            ▲  cached Session ◀── AccessKeyId, AccessKeySecret, SecurityToken, Expiration
//! ```
//!
//! The variables are the ones ACK's `ack-pod-identity-webhook` injects and
//! Alibaba's credential SDKs read: `ALIBABA_CLOUD_ROLE_ARN`,
//! `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`, `ALIBABA_CLOUD_OIDC_TOKEN_FILE`, with
//! `ALIBABA_CLOUD_STS_ENDPOINT`, `ALIBABA_CLOUD_STS_REGION`,
//! `ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED` (webhook 0.4.0 and later) and
//! `ALIBABA_CLOUD_ROLE_SESSION_NAME` optional. As in those SDKs, a static AccessKey in the environment wins
//! over RRSA.
//!
//! AssumeRoleWithOIDC is anonymous (the OIDC token is the proof): STS API
//! 2015-04-01, `Action`, `Format`, `Version` and `Timestamp` in the query,
//! `RoleArn`, `OIDCProviderArn`, `OIDCToken`, `RoleSessionName` and
//! `DurationSeconds` form-encoded in the POST body (the token never lands in
//! a URL or an access log). The answer's `Credentials` are
//! `{AccessKeyId, AccessKeySecret, SecurityToken, Expiration}`; ECS calls then
//! carry the `SecurityToken` parameter.

use std::{path::PathBuf, sync::Arc, time::Duration};

use jiff::Timestamp;
use serde::Deserialize;
use tracing::{debug, info, warn};

use super::signature::{Signer, percent_encode};
use crate::credentials::{ALIBABA, CredentialsError, read_token};

/// AccessKey id variable.
pub const ENV_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// AccessKey secret variable.
pub const ENV_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// STS token to go with a static AccessKey (optional).
pub const ENV_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";
/// RRSA: the RAM role to assume.
pub const ENV_ROLE_ARN: &str = "ALIBABA_CLOUD_ROLE_ARN";
/// RRSA: the cluster's OIDC provider in RAM.
pub const ENV_OIDC_PROVIDER_ARN: &str = "ALIBABA_CLOUD_OIDC_PROVIDER_ARN";
/// RRSA: the projected ServiceAccount token (audience `sts.aliyuncs.com`).
pub const ENV_OIDC_TOKEN_FILE: &str = "ALIBABA_CLOUD_OIDC_TOKEN_FILE";
/// RRSA: STS endpoint, a host (`sts-vpc.cn-hangzhou.aliyuncs.com`) or a URL
/// (optional; default `https://sts.<region>.aliyuncs.com`).
pub const ENV_STS_ENDPOINT: &str = "ALIBABA_CLOUD_STS_ENDPOINT";
/// RRSA: region of the default STS endpoint (optional; default the
/// operator's region).
pub const ENV_STS_REGION: &str = "ALIBABA_CLOUD_STS_REGION";
/// RRSA: `true` picks the VPC STS endpoint `sts-vpc.<region>.aliyuncs.com`.
pub const ENV_VPC_ENDPOINT_ENABLED: &str = "ALIBABA_CLOUD_VPC_ENDPOINT_ENABLED";
/// RRSA: session name shown in ActionTrail (optional).
pub const ENV_ROLE_SESSION_NAME: &str = "ALIBABA_CLOUD_ROLE_SESSION_NAME";

/// STS API version of AssumeRoleWithOIDC.
pub const STS_API_VERSION: &str = "2015-04-01";
/// Session name when none is set.
pub const DEFAULT_SESSION_NAME: &str = "sextant-operator";
/// Lifetime asked of STS (its default; 900 s is the minimum).
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);

const API: &str = "AssumeRoleWithOIDC";

/// RRSA settings: what to assume, with which token, where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RrsaConfig {
    /// `acs:ram::<account>:role/<name>`.
    pub role_arn: String,
    /// `acs:ram::<account>:oidc-provider/<name>`.
    pub oidc_provider_arn: String,
    /// The projected ServiceAccount token, read again at each exchange
    /// (the kubelet rotates it).
    pub token_file: PathBuf,
    /// STS endpoint URL, without a trailing slash.
    pub sts_endpoint: String,
    /// `RoleSessionName`.
    pub session_name: String,
    /// `DurationSeconds` asked of STS.
    pub duration: Duration,
}

/// As whom ECS calls are signed.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A RAM user's AccessKey pair, optionally with an STS token that
    /// someone else renews.
    Static {
        /// AccessKey id.
        access_key_id: String,
        /// AccessKey secret.
        access_key_secret: String,
        /// STS token (`SecurityToken`).
        security_token: Option<String>,
    },
    /// RRSA: STS keys from the ServiceAccount token, renewed before expiry.
    Rrsa(RrsaConfig),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Static {
                access_key_id,
                security_token,
                ..
            } => f
                .debug_struct("Static")
                .field("access_key_id", access_key_id)
                .field("access_key_secret", &"<redacted>")
                .field(
                    "security_token",
                    &security_token.as_ref().map(|_| "<redacted>"),
                )
                .finish(),
            Credentials::Rrsa(c) => f.debug_tuple("Rrsa").field(c).finish(),
        }
    }
}

/// The STS endpoint URL: `ALIBABA_CLOUD_STS_ENDPOINT` when set (a bare
/// host gets `https://`), else the region's public endpoint, or its VPC
/// endpoint with `vpc`.
pub fn sts_endpoint(region: &str, configured: Option<&str>, vpc: bool) -> String {
    match configured.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) if e.contains("://") => e.trim_end_matches('/').to_owned(),
        Some(host) => format!("https://{}", host.trim_end_matches('/')),
        None if vpc => format!("https://sts-vpc.{region}.aliyuncs.com"),
        None => format!("https://sts.{region}.aliyuncs.com"),
    }
}

impl Credentials {
    /// The credentials the environment configures, as `env` reads it: a
    /// static AccessKey if one is set, else RRSA. RRSA's token file is
    /// read once here, so that a missing or empty file stops the start
    /// with its path named.
    pub fn from_env(
        region: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, CredentialsError> {
        let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let missing = |var| CredentialsError::Missing {
            provider: ALIBABA,
            var,
        };
        let rrsa_vars = [ENV_ROLE_ARN, ENV_OIDC_PROVIDER_ARN, ENV_OIDC_TOKEN_FILE];
        let rrsa_set = rrsa_vars.iter().find(|v| get(v).is_some()).copied();

        if get(ENV_ACCESS_KEY_ID).is_some() || get(ENV_ACCESS_KEY_SECRET).is_some() {
            let access_key_id = get(ENV_ACCESS_KEY_ID).ok_or(missing(ENV_ACCESS_KEY_ID))?;
            let access_key_secret =
                get(ENV_ACCESS_KEY_SECRET).ok_or(missing(ENV_ACCESS_KEY_SECRET))?;
            if let Some(var) = rrsa_set {
                warn!(
                    ignored = var,
                    "Alibaba Cloud credentials: a static AccessKey and RRSA are both configured; \
                     using the AccessKey, as Alibaba's SDKs do"
                );
            }
            let security_token = get(ENV_SECURITY_TOKEN);
            info!(
                source = "static",
                %access_key_id,
                sts_token = security_token.is_some(),
                "Alibaba Cloud credentials"
            );
            return Ok(Credentials::Static {
                access_key_id,
                access_key_secret,
                security_token,
            });
        }
        let Some(set) = rrsa_set else {
            return Err(CredentialsError::NoneConfigured {
                provider: ALIBABA,
                hint: "set ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET, or \
                       RRSA's ALIBABA_CLOUD_ROLE_ARN, ALIBABA_CLOUD_OIDC_PROVIDER_ARN and \
                       ALIBABA_CLOUD_OIDC_TOKEN_FILE",
            });
        };
        let need = |var| {
            get(var).ok_or(CredentialsError::Incomplete {
                provider: ALIBABA,
                set,
                missing: var,
            })
        };
        let config = RrsaConfig {
            role_arn: need(ENV_ROLE_ARN)?,
            oidc_provider_arn: need(ENV_OIDC_PROVIDER_ARN)?,
            token_file: need(ENV_OIDC_TOKEN_FILE)?.into(),
            sts_endpoint: sts_endpoint(
                &get(ENV_STS_REGION).unwrap_or_else(|| region.to_owned()),
                get(ENV_STS_ENDPOINT).as_deref(),
                get(ENV_VPC_ENDPOINT_ENABLED).is_some_and(|v| v.eq_ignore_ascii_case("true")),
            ),
            session_name: get(ENV_ROLE_SESSION_NAME)
                .unwrap_or_else(|| DEFAULT_SESSION_NAME.to_owned()),
            duration: DEFAULT_SESSION_DURATION,
        };
        read_token(ALIBABA, &config.token_file)?;
        info!(
            source = "rrsa",
            role = %config.role_arn,
            oidc_provider = %config.oidc_provider_arn,
            token_file = %config.token_file.display(),
            sts = %config.sts_endpoint,
            "Alibaba Cloud credentials"
        );
        Ok(Credentials::Rrsa(config))
    }
}

/// When keys obtained at `obtained` and valid until `expires` are renewed:
/// at 80% of their lifetime, so a failed renewal still has a fifth of it
/// (12 minutes of an hour) to succeed in.
pub fn refresh_at(obtained: Timestamp, expires: Timestamp) -> Timestamp {
    let lifetime = expires.duration_since(obtained);
    obtained
        .checked_add(lifetime.mul_f64(0.8))
        .unwrap_or(obtained)
}

/// STS keys in use.
#[derive(Clone, Debug)]
struct Session {
    signer: Signer,
    refresh_at: Timestamp,
    expires: Timestamp,
}

/// RRSA keys, fetched on first use and renewed at [`refresh_at`]; one
/// exchange at a time (callers wait for it rather than all asking STS).
#[derive(Debug)]
pub(crate) struct Rrsa {
    config: RrsaConfig,
    http: reqwest::Client,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
}

#[derive(Deserialize)]
struct AssumeRoleResponse {
    #[serde(rename = "Credentials")]
    credentials: Option<StsCredentials>,
}

#[derive(Deserialize)]
struct StsCredentials {
    #[serde(rename = "AccessKeyId")]
    access_key_id: Option<String>,
    #[serde(rename = "AccessKeySecret")]
    access_key_secret: Option<String>,
    #[serde(rename = "SecurityToken")]
    security_token: Option<String>,
    #[serde(rename = "Expiration")]
    expiration: Option<String>,
}

#[derive(Deserialize)]
struct StsError {
    #[serde(rename = "Code")]
    code: String,
    #[serde(rename = "Message", default)]
    message: String,
    #[serde(rename = "RequestId", default)]
    request_id: String,
}

impl Rrsa {
    pub(crate) fn new(config: RrsaConfig, http: reqwest::Client, timeout: Duration) -> Arc<Self> {
        Arc::new(Rrsa {
            config,
            http,
            timeout,
            session: tokio::sync::Mutex::new(None),
        })
    }

    /// A signer with keys that are not due for renewal. A renewal that
    /// fails while the keys in hand are still valid keeps them (and logs);
    /// past their expiry the failure is the answer.
    pub(crate) async fn signer(&self) -> Result<Signer, CredentialsError> {
        let mut session = self.session.lock().await;
        let now = Timestamp::now();
        if let Some(s) = session.as_ref().filter(|s| now < s.refresh_at) {
            return Ok(s.signer.clone());
        }
        match self.assume_role().await {
            Ok(fresh) => {
                let signer = fresh.signer.clone();
                *session = Some(fresh);
                Ok(signer)
            }
            Err(e) => match session.as_ref().filter(|s| now < s.expires) {
                Some(s) => {
                    warn!(error = %e, expires = %s.expires, "renewing the RRSA keys failed; keeping the current ones until they expire");
                    Ok(s.signer.clone())
                }
                None => Err(e),
            },
        }
    }

    /// One AssumeRoleWithOIDC with the token as the file holds it now.
    async fn assume_role(&self) -> Result<Session, CredentialsError> {
        let c = &self.config;
        let token = read_token(ALIBABA, &c.token_file)?;
        let obtained = Timestamp::now();
        let timestamp = obtained.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let url = format!(
            "{}/?Action={API}&Format=JSON&Version={STS_API_VERSION}&Timestamp={}",
            c.sts_endpoint,
            percent_encode(&timestamp)
        );
        let body = [
            ("DurationSeconds", c.duration.as_secs().to_string()),
            ("OIDCProviderArn", c.oidc_provider_arn.clone()),
            ("OIDCToken", token),
            ("RoleArn", c.role_arn.clone()),
            ("RoleSessionName", c.session_name.clone()),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let transport = |source| CredentialsError::StsTransport {
            provider: ALIBABA,
            api: API,
            endpoint: c.sts_endpoint.clone(),
            source,
        };
        let response = self
            .http
            .post(url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(transport)?;
        let malformed = |what: String| CredentialsError::StsMalformed {
            provider: ALIBABA,
            api: API,
            status,
            what,
        };
        let excerpt = || {
            String::from_utf8_lossy(&bytes)
                .chars()
                .take(160)
                .collect::<String>()
        };
        if !(200..300).contains(&status) {
            return Err(match serde_json::from_slice::<StsError>(&bytes) {
                Ok(e) => CredentialsError::StsRefused {
                    provider: ALIBABA,
                    api: API,
                    status,
                    code: e.code,
                    message: e.message,
                    request_id: e.request_id,
                },
                Err(_) => malformed(format!("a body that is not an STS error: {:?}", excerpt())),
            });
        }
        let answer: AssumeRoleResponse = serde_json::from_slice(&bytes)
            .map_err(|e| malformed(format!("{e} in {:?}", excerpt())))?;
        let creds = answer
            .credentials
            .ok_or_else(|| malformed("no Credentials".into()))?;
        let field = |v: Option<String>, name: &str| {
            v.filter(|s| !s.is_empty())
                .ok_or_else(|| malformed(format!("no Credentials.{name}")))
        };
        let access_key_id = field(creds.access_key_id, "AccessKeyId")?;
        let access_key_secret = field(creds.access_key_secret, "AccessKeySecret")?;
        let security_token = field(creds.security_token, "SecurityToken")?;
        let expiration = field(creds.expiration, "Expiration")?;
        let expires: Timestamp = expiration
            .parse()
            .map_err(|e| malformed(format!("Credentials.Expiration {expiration:?}: {e}")))?;
        if expires <= obtained {
            return Err(malformed(format!(
                "keys that expired already ({expiration})"
            )));
        }
        let refresh_at = refresh_at(obtained, expires);
        debug!(%access_key_id, %expires, %refresh_at, "RRSA keys obtained");
        Ok(Session {
            signer: Signer::new(access_key_id, access_key_secret)
                .with_security_token(security_token),
            refresh_at,
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn renews_at_four_fifths_of_the_lifetime() {
        let t: Timestamp = "2026-12-07T03:00:00Z".parse().unwrap();
        let hour = t
            .checked_add(jiff::SignedDuration::from_secs(3600))
            .unwrap();
        assert_eq!(
            refresh_at(t, hour),
            "2026-12-07T03:48:00Z".parse::<Timestamp>().unwrap()
        );
        let ten = t.checked_add(jiff::SignedDuration::from_secs(10)).unwrap();
        assert_eq!(
            refresh_at(t, ten),
            "2026-12-07T03:00:08Z".parse::<Timestamp>().unwrap()
        );
    }

    #[test]
    fn a_static_access_key_wins_and_both_halves_are_needed() {
        let c = Credentials::from_env(
            "cn-hangzhou",
            env(&[
                (ENV_ACCESS_KEY_ID, "LTAI"),
                (ENV_ACCESS_KEY_SECRET, "s3cr3t"),
                (ENV_SECURITY_TOKEN, "sts"),
                (ENV_ROLE_ARN, "acs:ram::1:role/r"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c,
            Credentials::Static {
                access_key_id: "LTAI".into(),
                access_key_secret: "s3cr3t".into(),
                security_token: Some("sts".into()),
            }
        );
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let half =
            Credentials::from_env("cn-hangzhou", env(&[(ENV_ACCESS_KEY_ID, "LTAI")])).unwrap_err();
        assert_eq!(
            half.to_string(),
            "Alibaba Cloud credentials: ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"
        );
    }

    #[test]
    fn rrsa_needs_all_three_variables_and_a_readable_token_file() {
        let none = Credentials::from_env("cn-hangzhou", env(&[])).unwrap_err();
        assert!(
            matches!(none, CredentialsError::NoneConfigured { .. }),
            "{none}"
        );
        assert!(none.to_string().contains(ENV_OIDC_TOKEN_FILE), "{none}");
        let partial = Credentials::from_env(
            "cn-hangzhou",
            env(&[
                (ENV_ROLE_ARN, "acs:ram::1:role/r"),
                (ENV_OIDC_TOKEN_FILE, "/nonexistent"),
            ]),
        )
        .unwrap_err();
        assert_eq!(
            partial.to_string(),
            "Alibaba Cloud credentials: ALIBABA_CLOUD_ROLE_ARN is set but \
             ALIBABA_CLOUD_OIDC_PROVIDER_ARN is not"
        );
        let unreadable = Credentials::from_env(
            "cn-hangzhou",
            env(&[
                (ENV_ROLE_ARN, "acs:ram::1:role/r"),
                (ENV_OIDC_PROVIDER_ARN, "acs:ram::1:oidc-provider/p"),
                (ENV_OIDC_TOKEN_FILE, "/nonexistent/sextant/token"),
            ]),
        )
        .unwrap_err();
        assert!(
            matches!(unreadable, CredentialsError::TokenFile { .. }),
            "{unreadable:?}"
        );
        assert!(
            unreadable
                .to_string()
                .contains("/nonexistent/sextant/token"),
            "{unreadable}"
        );
    }

    #[test]
    fn rrsa_from_the_webhooks_variables_with_default_and_configured_sts() {
        let dir = std::env::temp_dir().join(format!("sextant-rrsa-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "eyJ.oidc.token").unwrap();
        let path: &'static str = Box::leak(token.display().to_string().into_boxed_str());
        let vars: &'static [(&str, &str)] = Box::leak(Box::new([
            (ENV_ROLE_ARN, "acs:ram::1:role/sextant"),
            (
                ENV_OIDC_PROVIDER_ARN,
                "acs:ram::1:oidc-provider/ack-rrsa-c1",
            ),
            (ENV_OIDC_TOKEN_FILE, path),
        ]));
        let Credentials::Rrsa(c) = Credentials::from_env("cn-hangzhou", env(vars)).unwrap() else {
            panic!("RRSA expected");
        };
        assert_eq!(c.role_arn, "acs:ram::1:role/sextant");
        assert_eq!(c.oidc_provider_arn, "acs:ram::1:oidc-provider/ack-rrsa-c1");
        assert_eq!(c.token_file, token);
        assert_eq!(c.sts_endpoint, "https://sts.cn-hangzhou.aliyuncs.com");
        assert_eq!(c.session_name, DEFAULT_SESSION_NAME);
        assert_eq!(c.duration, Duration::from_secs(3600));
        assert_eq!(
            sts_endpoint(
                "cn-hangzhou",
                Some("sts-vpc.cn-hangzhou.aliyuncs.com"),
                false
            ),
            "https://sts-vpc.cn-hangzhou.aliyuncs.com"
        );
        assert_eq!(
            sts_endpoint("cn-hangzhou", Some("http://127.0.0.1:9/"), true),
            "http://127.0.0.1:9"
        );
        assert_eq!(
            sts_endpoint("cn-beijing", None, true),
            "https://sts-vpc.cn-beijing.aliyuncs.com"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
