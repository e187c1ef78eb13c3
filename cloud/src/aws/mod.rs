//! AWS EC2 through aws-sdk-ec2.
//!
//! [`AwsCloud`] is the raw [`EniCloud`] for AWS: each method is one EC2 API
//! call (Query protocol over HTTPS, SigV4 signed), with the SDK's own retries
//! turned off, because retries, rate limits and metrics belong to
//! [`crate::Cloud`] in front of it. EC2 error codes become typed [`Error`]s
//! ([`errors`]), and responses become the crate's plain types ([`parse`]);
//! a response that lacks what Sextant needs is an [`Error::malformed`], never
//! a panic.
//!
//! Credentials: static keys in [`AwsConfig`], or the SDK's default chain
//! (environment keys, web identity / IRSA, profile, container credentials /
//! EKS Pod Identity, IMDS). Which one applies is decided and logged at start
//! ([`credential_source`]); IRSA's variables and token file are checked
//! there, so a missing or unreadable token is a start error naming the file,
//! not a failure of the first EC2 call. The SDK itself exchanges the token
//! at STS (`AssumeRoleWithWebIdentity`, endpoint overridable with
//! `AWS_ENDPOINT_URL_STS`) and renews the keys before they expire.
//!
//! ```text
//!   Cloud ──▶ AwsCloud ──▶ aws-sdk-ec2 (no retries, operation timeout)
//!                 ▲            │  rustls on ring, hyper 1
//!                 │            ▼
//!     parse / errors ◀── EC2 Query API (or moto_server in tests)
//! ```

mod errors;
mod parse;

use std::{fmt, net::Ipv4Addr, path::PathBuf, time::Duration};

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_ec2::{
    Client,
    config::Credentials,
    types::{Filter, InstanceType, ResourceType, Tag, TagSpecification},
};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use tracing::{debug, info, warn};

use crate::{
    Action, AssignIps, CreateEni, Eni, EniCloud, Error, InstanceLimits, InstanceNetwork, Page,
    PageRequest, Result, SecurityGroup, Subnet,
    credentials::{AWS, CredentialsError, read_token},
};

/// Bounds EC2 puts on `MaxResults` of DescribeNetworkInterfaces.
const LIST_PAGE_MIN: u32 = 5;
const LIST_PAGE_MAX: u32 = 1000;
/// Pages a whole-VPC describe (subnets, security groups) may take before we
/// suspect a provider that hands out tokens forever.
const MAX_PAGES: usize = 1000;

/// Static access keys, for tests and for setups without the default
/// credential chain. `Debug` never prints the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// `AKIA...`
    pub access_key_id: String,
    /// The secret key.
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

/// IRSA: the role to assume (the EKS pod identity webhook sets it from the
/// ServiceAccount's `eks.amazonaws.com/role-arn` annotation).
pub const ENV_ROLE_ARN: &str = "AWS_ROLE_ARN";
/// IRSA: the projected ServiceAccount token (audience `sts.amazonaws.com`).
pub const ENV_WEB_IDENTITY_TOKEN_FILE: &str = "AWS_WEB_IDENTITY_TOKEN_FILE";
/// Static keys in the environment, first in the SDK's chain.
pub const ENV_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// The secret that goes with [`ENV_ACCESS_KEY_ID`].
pub const ENV_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";

/// Where the EC2 client's credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// [`AwsConfig::credentials`].
    Static,
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (the chain's first link).
    EnvironmentKeys,
    /// IRSA: the chain's web identity link, STS `AssumeRoleWithWebIdentity`.
    WebIdentity {
        /// `AWS_ROLE_ARN`.
        role_arn: String,
        /// `AWS_WEB_IDENTITY_TOKEN_FILE`.
        token_file: PathBuf,
    },
    /// The rest of the chain: profile, container credentials (EKS Pod
    /// Identity, ECS), instance profile (IMDS).
    DefaultChain,
}

/// Which credentials the SDK's default chain will use, given the
/// environment `env` reads, and whether they can work: IRSA needs both of
/// its variables and a readable, non-empty token file; environment keys
/// need both halves.
pub fn credential_source(
    env: impl Fn(&str) -> Option<String>,
) -> Result<CredentialSource, CredentialsError> {
    let get = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if get(ENV_ACCESS_KEY_ID).is_some() {
        get(ENV_SECRET_ACCESS_KEY).ok_or(CredentialsError::Incomplete {
            provider: AWS,
            set: ENV_ACCESS_KEY_ID,
            missing: ENV_SECRET_ACCESS_KEY,
        })?;
        return Ok(CredentialSource::EnvironmentKeys);
    }
    match (get(ENV_ROLE_ARN), get(ENV_WEB_IDENTITY_TOKEN_FILE)) {
        (None, None) => Ok(CredentialSource::DefaultChain),
        (Some(_), None) => Err(CredentialsError::Incomplete {
            provider: AWS,
            set: ENV_ROLE_ARN,
            missing: ENV_WEB_IDENTITY_TOKEN_FILE,
        }),
        (None, Some(_)) => Err(CredentialsError::Incomplete {
            provider: AWS,
            set: ENV_WEB_IDENTITY_TOKEN_FILE,
            missing: ENV_ROLE_ARN,
        }),
        (Some(role_arn), Some(file)) => {
            let token_file = PathBuf::from(file);
            read_token(AWS, &token_file)?;
            Ok(CredentialSource::WebIdentity {
                role_arn,
                token_file,
            })
        }
    }
}

/// How to reach EC2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AwsConfig {
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint override (moto_server, a VPC endpoint); `None` for the
    /// region's public endpoint.
    pub endpoint_url: Option<String>,
    /// Static keys; `None` uses the default provider chain (environment,
    /// profile, web identity / IRSA, ECS, IMDS).
    pub credentials: Option<StaticCredentials>,
    /// Deadline of one call, connection and response included; past it the
    /// call fails with [`Error::DeadlineExceeded`].
    pub operation_timeout: Duration,
    /// Deadline of establishing a connection.
    pub connect_timeout: Duration,
}

impl AwsConfig {
    /// Settings for `region` with the default endpoint and credential chain,
    /// a 10 s operation timeout and a 3 s connect timeout.
    pub fn new(region: impl Into<String>) -> Self {
        AwsConfig {
            region: region.into(),
            endpoint_url: None,
            credentials: None,
            operation_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// The AWS EC2 provider of [`EniCloud`].
#[derive(Clone)]
pub struct AwsCloud {
    client: Client,
    operation_timeout: Duration,
}

impl fmt::Debug for AwsCloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCloud")
            .field("operation_timeout", &self.operation_timeout)
            .finish_non_exhaustive()
    }
}

impl AwsCloud {
    /// Builds the EC2 client: rustls (ring) over hyper, SDK retries off,
    /// the configured timeouts, and static keys or the default credential
    /// chain. The chain's source is checked against the process
    /// environment ([`credential_source`]) and logged; fetching keys is
    /// lazy: no network call happens here.
    pub async fn new(config: AwsConfig) -> Result<Self, CredentialsError> {
        let source = match config.credentials {
            Some(_) => CredentialSource::Static,
            None => credential_source(|name| std::env::var(name).ok())?,
        };
        match &source {
            CredentialSource::WebIdentity {
                role_arn,
                token_file,
            } => info!(
                source = "web-identity",
                role = %role_arn,
                token_file = %token_file.display(),
                "AWS credentials: IRSA (STS AssumeRoleWithWebIdentity)"
            ),
            other => info!(source = ?other, "AWS credentials"),
        }
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(config.region))
            .http_client(http_client)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(config.operation_timeout)
                    .connect_timeout(config.connect_timeout)
                    .build(),
            );
        if let Some(url) = config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(keys) = config.credentials {
            loader = loader.credentials_provider(Credentials::new(
                keys.access_key_id,
                keys.secret_access_key,
                None,
                None,
                "sextant-static",
            ));
        }
        let sdk_config = loader.load().await;
        Ok(AwsCloud::from_client(
            Client::new(&sdk_config),
            config.operation_timeout,
        ))
    }

    /// Wraps a client built elsewhere. `operation_timeout` should be the one
    /// the client was configured with: it is reported in
    /// [`Error::DeadlineExceeded`].
    pub fn from_client(client: Client, operation_timeout: Duration) -> Self {
        AwsCloud {
            client,
            operation_timeout,
        }
    }

    /// The underlying EC2 client, for calls the trait does not cover
    /// (test fixtures, tooling).
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn sdk_error<E>(
        &self,
        action: Action,
        err: aws_sdk_ec2::error::SdkError<E, aws_sdk_ec2::config::http::HttpResponse>,
    ) -> Error
    where
        E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let error = errors::from_sdk(action, self.operation_timeout, err);
        debug!(%action, kind = error.metric_label(), error = %error, "ec2 call failed");
        error
    }

    /// One CreateNetworkInterface, with `client_token` when given.
    async fn create_network_interface(
        &self,
        request: &CreateEni,
        client_token: Option<&str>,
    ) -> Result<Eni> {
        let action = Action::CreateEni;
        let mut call = self
            .client
            .create_network_interface()
            .set_client_token(client_token.map(str::to_owned))
            .subnet_id(&request.subnet_id)
            .set_groups(Some(request.security_groups.clone()))
            .description(&request.description);
        if request.secondary_ips > 0 {
            call = call.secondary_private_ip_address_count(to_i32(
                action,
                "secondary address count",
                request.secondary_ips,
            )?);
        }
        if !request.tags.is_empty() {
            let tags = request
                .tags
                .iter()
                .map(|(k, v)| Tag::builder().key(k).value(v).build())
                .collect();
            call = call.tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::NetworkInterface)
                    .set_tags(Some(tags))
                    .build(),
            );
        }
        let out = call.send().await.map_err(|e| self.sdk_error(action, e))?;
        let ni = out
            .network_interface()
            .ok_or_else(|| Error::malformed(action, "no NetworkInterface in the answer"))?;
        let eni = parse::eni(action, ni)?;
        debug!(eni = %eni.id, subnet = %eni.subnet_id, secondary = eni.secondary_ips.len(), "created eni");
        Ok(eni)
    }

    /// One DescribeNetworkInterfaces page; `filter` selects the ENIs.
    async fn describe_enis(
        &self,
        action: Action,
        filter: Filter,
        max_results: Option<i32>,
        token: Option<String>,
    ) -> Result<Page<Eni>> {
        let out = self
            .client
            .describe_network_interfaces()
            .filters(filter)
            .set_max_results(max_results)
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        let items = out
            .network_interfaces()
            .iter()
            .map(|ni| parse::eni(action, ni))
            .collect::<Result<Vec<_>>>()?;
        Ok(Page {
            items,
            next: next_token(out.next_token()),
        })
    }
}

/// EC2 ends the last page with no token; some servers send an empty one.
fn next_token(token: Option<&str>) -> Option<String> {
    token.filter(|t| !t.is_empty()).map(str::to_owned)
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Guards a token loop against a server that repeats a token.
fn check_progress(
    action: Action,
    pages: usize,
    previous: Option<&str>,
    next: Option<&str>,
) -> Result<()> {
    if next.is_some() && pages >= MAX_PAGES {
        return Err(Error::malformed(
            action,
            format!("more than {MAX_PAGES} pages"),
        ));
    }
    if next.is_some() && next == previous {
        return Err(Error::malformed(
            action,
            "the same NextToken twice in a row",
        ));
    }
    Ok(())
}

fn to_i32(action: Action, what: &str, value: u32) -> Result<i32> {
    i32::try_from(value).map_err(|_| Error::InvalidRequest {
        action,
        message: format!("{what} {value} is out of range"),
    })
}

#[async_trait]
impl EniCloud for AwsCloud {
    fn provider(&self) -> &'static str {
        "aws"
    }

    /// One DescribeNetworkInterfaces filtered by `attachment.instance-id`.
    /// An instance with no interface at all is unknown or terminated:
    /// [`Error::NotFound`].
    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let action = Action::DescribeInstanceNetwork;
        let mut enis = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        // Without MaxResults EC2 answers in one page; follow a token anyway
        // rather than silently drop interfaces.
        loop {
            let page = self
                .describe_enis(
                    action,
                    filter("attachment.instance-id", instance_id),
                    None,
                    token.clone(),
                )
                .await?;
            pages += 1;
            enis.extend(page.items);
            check_progress(action, pages, token.as_deref(), page.next.as_deref())?;
            match page.next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        if enis.is_empty() {
            return Err(Error::NotFound {
                action,
                message: format!("no network interface is attached to instance {instance_id}"),
            });
        }
        enis.sort_by_key(|e| e.attachment.as_ref().map_or(u32::MAX, |a| a.device_index));
        Ok(InstanceNetwork {
            instance_id: instance_id.to_owned(),
            enis,
        })
    }

    /// DescribeNetworkInterfaces filtered by `vpc-id`, `MaxResults` clamped
    /// to EC2's 5..=1000.
    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        let size = page.size.clamp(LIST_PAGE_MIN, LIST_PAGE_MAX);
        self.describe_enis(
            Action::ListEnis,
            filter("vpc-id", vpc_id),
            Some(to_i32(Action::ListEnis, "page size", size)?),
            page.token,
        )
        .await
    }

    /// DescribeSubnets filtered by `vpc-id`, every page.
    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        let action = Action::DescribeSubnets;
        let mut subnets = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let out = self
                .client
                .describe_subnets()
                .filters(filter("vpc-id", vpc_id))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| self.sdk_error(action, e))?;
            pages += 1;
            for s in out.subnets() {
                subnets.push(parse::subnet(action, vpc_id, s)?);
            }
            let next = next_token(out.next_token());
            check_progress(action, pages, token.as_deref(), next.as_deref())?;
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(subnets)
    }

    /// DescribeSecurityGroups filtered by `vpc-id`, every page.
    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        let action = Action::DescribeSecurityGroups;
        let mut groups = Vec::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let out = self
                .client
                .describe_security_groups()
                .filters(filter("vpc-id", vpc_id))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| self.sdk_error(action, e))?;
            pages += 1;
            for g in out.security_groups() {
                groups.push(parse::security_group(action, vpc_id, g)?);
            }
            let next = next_token(out.next_token());
            check_progress(action, pages, token.as_deref(), next.as_deref())?;
            match next {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        Ok(groups)
    }

    /// DescribeInstanceTypes for one type: `MaximumNetworkInterfaces` and
    /// `Ipv4AddressesPerInterface`.
    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        let action = Action::DescribeInstanceTypes;
        let out = self
            .client
            .describe_instance_types()
            .instance_types(InstanceType::from(instance_type))
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        let info = out
            .instance_types()
            .iter()
            .find(|t| t.instance_type().map(InstanceType::as_str) == Some(instance_type))
            .ok_or_else(|| Error::NotFound {
                action,
                message: format!("instance type {instance_type} is not described"),
            })?;
        parse::instance_limits(action, instance_type, info)
    }

    /// CreateNetworkInterface with `SecondaryPrivateIpAddressCount` and the
    /// tags as a `TagSpecification` (the SDK fills a fresh idempotency
    /// token, so a repeat makes a second ENI: [`crate::Cloud`] sends
    /// [`EniCloud::create_eni_with_token`] instead).
    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        self.create_network_interface(request, None).await
    }

    /// CreateNetworkInterface with `ClientToken`: EC2 answers a repeat of
    /// the same token and request with the ENI the first call created.
    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        self.create_network_interface(request, Some(client_token))
            .await
    }

    fn honours_client_token(&self, action: Action) -> bool {
        action == Action::CreateEni
    }

    /// AttachNetworkInterface at `DeviceIndex`.
    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        let action = Action::AttachEni;
        let out = self
            .client
            .attach_network_interface()
            .network_interface_id(eni_id)
            .instance_id(instance_id)
            .device_index(to_i32(action, "device index", device_index)?)
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        debug!(eni = %eni_id, instance = %instance_id, device_index, attachment = ?out.attachment_id(), "attached eni");
        Ok(())
    }

    /// AssignPrivateIpAddresses; returns `AssignedPrivateIpAddresses`.
    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        if request.is_empty() {
            return Ok(Vec::new());
        }
        let call = self
            .client
            .assign_private_ip_addresses()
            .network_interface_id(eni_id);
        let call = match request {
            AssignIps::Count(n) => {
                call.secondary_private_ip_address_count(to_i32(action, "address count", *n)?)
            }
            AssignIps::Specific {
                ips,
                allow_reassignment,
            } => call
                .set_private_ip_addresses(Some(ips.iter().map(Ipv4Addr::to_string).collect()))
                .allow_reassignment(*allow_reassignment),
        };
        let out = call.send().await.map_err(|e| self.sdk_error(action, e))?;
        let listed = out
            .assigned_private_ip_addresses()
            .iter()
            .map(|a| parse::ipv4(action, "AssignedPrivateIpAddresses", a.private_ip_address()))
            .collect::<Result<Vec<_>>>()?;
        let assigned = match request {
            AssignIps::Specific { ips, .. } => {
                let missing: Vec<_> = ips.iter().filter(|ip| !listed.contains(ip)).collect();
                if !missing.is_empty() {
                    return Err(Error::malformed(
                        action,
                        format!("requested addresses {missing:?} are not listed as assigned"),
                    ));
                }
                ips.clone()
            }
            AssignIps::Count(n) => {
                let n = *n as usize;
                if listed.len() < n {
                    return Err(Error::malformed(
                        action,
                        format!(
                            "asked for {n} addresses, {} listed as assigned",
                            listed.len()
                        ),
                    ));
                }
                if listed.len() > n {
                    // EC2 lists only the new addresses. Some emulators
                    // (moto) list every address of the interface, newest
                    // last; keep the newest so callers get what they asked.
                    warn!(eni = %eni_id, asked = n, listed = listed.len(), "assign listed more addresses than asked; keeping the last");
                }
                listed[listed.len() - n..].to_vec()
            }
        };
        debug!(eni = %eni_id, count = assigned.len(), "assigned addresses");
        Ok(assigned)
    }

    /// UnassignPrivateIpAddresses.
    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let action = Action::UnassignIps;
        if ips.is_empty() {
            return Ok(());
        }
        self.client
            .unassign_private_ip_addresses()
            .network_interface_id(eni_id)
            .set_private_ip_addresses(Some(ips.iter().map(Ipv4Addr::to_string).collect()))
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        debug!(eni = %eni_id, count = ips.len(), "unassigned addresses");
        Ok(())
    }

    /// DetachNetworkInterface by the attachment id of `eni`, without force.
    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        let action = Action::DetachEni;
        let attachment = eni
            .attachment
            .as_ref()
            .filter(|a| !a.id.is_empty())
            .ok_or_else(|| Error::InvalidRequest {
                action,
                message: format!("{} has no attachment to detach", eni.id),
            })?;
        self.client
            .detach_network_interface()
            .attachment_id(&attachment.id)
            .force(false)
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        debug!(eni = %eni.id, instance = %attachment.instance_id, attachment = %attachment.id, "detached eni");
        Ok(())
    }

    /// DeleteNetworkInterface.
    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        let action = Action::DeleteEni;
        self.client
            .delete_network_interface()
            .network_interface_id(eni_id)
            .send()
            .await
            .map_err(|e| self.sdk_error(action, e))?;
        debug!(eni = %eni_id, "deleted eni");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn irsa_needs_both_variables_and_a_readable_token_file() {
        let role = || {
            (
                ENV_ROLE_ARN,
                "arn:aws:iam::123456789012:role/sextant".to_owned(),
            )
        };
        let file = |p: &str| (ENV_WEB_IDENTITY_TOKEN_FILE, p.to_owned());
        assert_eq!(
            credential_source(env(vec![role()]))
                .unwrap_err()
                .to_string(),
            "AWS credentials: AWS_ROLE_ARN is set but AWS_WEB_IDENTITY_TOKEN_FILE is not"
        );
        assert_eq!(
            credential_source(env(vec![file("/t")]))
                .unwrap_err()
                .to_string(),
            "AWS credentials: AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not"
        );
        let missing =
            credential_source(env(vec![role(), file("/nonexistent/sextant/token")])).unwrap_err();
        assert!(
            matches!(missing, CredentialsError::TokenFile { .. }),
            "{missing:?}"
        );
        assert!(
            missing.to_string().contains("/nonexistent/sextant/token"),
            "{missing}"
        );

        let dir = std::env::temp_dir().join(format!("sextant-irsa-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "eyJ.sa.token\n").unwrap();
        assert_eq!(
            credential_source(env(vec![role(), file(&token.display().to_string())])).unwrap(),
            CredentialSource::WebIdentity {
                role_arn: role().1,
                token_file: token.clone(),
            }
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn environment_keys_come_first_and_nothing_set_is_the_rest_of_the_chain() {
        assert_eq!(
            credential_source(env(vec![
                (ENV_ACCESS_KEY_ID, "AKIA".into()),
                (ENV_SECRET_ACCESS_KEY, "s".into()),
                (ENV_ROLE_ARN, "arn".into()),
            ]))
            .unwrap(),
            CredentialSource::EnvironmentKeys
        );
        assert!(matches!(
            credential_source(env(vec![(ENV_ACCESS_KEY_ID, "AKIA".into())])),
            Err(CredentialsError::Incomplete { .. })
        ));
        assert_eq!(
            credential_source(env(vec![])).unwrap(),
            CredentialSource::DefaultChain
        );
    }
}
