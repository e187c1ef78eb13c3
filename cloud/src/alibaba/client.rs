//! The ECS RPC client and its [`EniCloud`] implementation.

use std::{collections::BTreeMap, net::Ipv4Addr, sync::Arc, time::Duration};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use super::{
    credentials::{Credentials, Rrsa},
    errors::{self, ErrorBody},
    model::{
        self, AssignPrivateIpAddressesResponse, DescribeInstanceTypesResponse,
        DescribeNetworkInterfacesResponse, DescribeSecurityGroupsResponse,
        DescribeVSwitchesResponse, Empty, NetworkInterface,
    },
    signature::Signer,
};
use crate::{
    Action, AssignIps, CreateEni, CredentialsError, Eni, EniCloud, EniState, Error, InstanceLimits,
    InstanceNetwork, Page, PageRequest, Result, SecurityGroup, Subnet,
};

/// ECS API version all calls use.
pub const API_VERSION: &str = "2014-05-26";

/// Most secondary addresses CreateNetworkInterface assigns at creation.
pub const MAX_SECONDARY_IPS_AT_CREATION: u32 = 49;

/// Page size bounds of DescribeNetworkInterfaces with `MaxResults`.
const ENI_PAGE_MAX: u32 = 500;
/// Page size used when the caller leaves it to us.
const ENI_PAGE_DEFAULT: u32 = 100;
/// Page size of DescribeVSwitches / DescribeSecurityGroups (their maximum).
const PAGE_SIZE_SMALL: u32 = 50;
/// Upper bound on pages one call follows, against a server that never ends.
const MAX_PAGES: u32 = 1_000;
/// Addresses per PrivateIpAddress.N filter of DescribeNetworkInterfaces.
const IP_FILTER_MAX: usize = 100;

/// Where and as whom to call ECS.
#[derive(Clone, Debug)]
pub struct AlibabaConfig {
    /// Region id, e.g. `cn-hangzhou`; sent as `RegionId`.
    pub region: String,
    /// Endpoint URL without path; `None` means `https://ecs.<region>.aliyuncs.com`.
    pub endpoint: Option<String>,
    /// A static AccessKey, or RRSA.
    pub credentials: Credentials,
    /// Deadline of each HTTP request, connection included (STS's too).
    pub timeout: Duration,
}

impl AlibabaConfig {
    /// Settings for a region and AccessKey pair, with the public endpoint and a 10 s timeout.
    pub fn new(
        region: impl Into<String>,
        access_key_id: impl Into<String>,
        access_key_secret: impl Into<String>,
    ) -> Self {
        Self::with_credentials(
            region,
            Credentials::Static {
                access_key_id: access_key_id.into(),
                access_key_secret: access_key_secret.into(),
                security_token: None,
            },
        )
    }

    /// Settings for a region and any [`Credentials`], with the public
    /// endpoint and a 10 s timeout.
    pub fn with_credentials(region: impl Into<String>, credentials: Credentials) -> Self {
        AlibabaConfig {
            region: region.into(),
            endpoint: None,
            credentials,
            timeout: Duration::from_secs(10),
        }
    }

    /// Settings for a region with the credentials the environment
    /// configures ([`Credentials::from_env`]).
    pub fn from_env(
        region: impl Into<String>,
        env: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Self, CredentialsError> {
        let region = region.into();
        let credentials = Credentials::from_env(&region, env)?;
        Ok(Self::with_credentials(region, credentials))
    }

    /// Uses another endpoint (a VPC endpoint, or a test server).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// Adds an STS token to a static AccessKey (RRSA brings its own).
    pub fn with_security_token(mut self, token: impl Into<String>) -> Self {
        if let Credentials::Static { security_token, .. } = &mut self.credentials {
            *security_token = Some(token.into());
        }
        self
    }

    /// Sets the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The endpoint calls go to, without a trailing slash.
    pub fn endpoint(&self) -> String {
        match &self.endpoint {
            Some(e) => e.trim_end_matches('/').to_owned(),
            None => format!("https://ecs.{}.aliyuncs.com", self.region),
        }
    }
}

/// The HTTP client could not be built (no TLS backend).
#[derive(Debug, thiserror::Error)]
#[error("building the ECS HTTP client")]
pub struct ClientBuildError(#[source] reqwest::Error);

/// Alibaba Cloud ECS as an [`EniCloud`]: one RPC call per method (assigning
/// addresses with reassignment takes a short fixed sequence), no retries.
#[derive(Clone, Debug)]
pub struct AlibabaCloud {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    keys: Keys,
    timeout: Duration,
}

/// What signs a call: fixed keys, or RRSA's renewed ones.
#[derive(Clone, Debug)]
enum Keys {
    Static(Signer),
    Rrsa(Arc<Rrsa>),
}

/// Parameters of one call, sorted by name as signing wants them.
type Params = BTreeMap<String, String>;

fn params<const N: usize>(pairs: [(&str, &str); N]) -> Params {
    pairs
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn put_ips(params: &mut Params, ips: &[Ipv4Addr]) {
    for (n, ip) in ips.iter().enumerate() {
        params.insert(format!("PrivateIpAddress.{}", n + 1), ip.to_string());
    }
}

fn malformed(action: Action) -> impl Fn(String) -> Error {
    move |what| Error::malformed(action, what)
}

fn nonce() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl AlibabaCloud {
    /// A client for `config`.
    pub fn new(config: AlibabaConfig) -> std::result::Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .build()
            .map_err(ClientBuildError)?;
        Ok(Self::with_http_client(config, http))
    }

    /// A client for `config` sharing an existing HTTP client.
    pub fn with_http_client(config: AlibabaConfig, http: reqwest::Client) -> Self {
        let keys = match &config.credentials {
            Credentials::Static {
                access_key_id,
                access_key_secret,
                security_token,
            } => {
                let mut signer = Signer::new(access_key_id, access_key_secret);
                if let Some(token) = security_token {
                    signer = signer.with_security_token(token);
                }
                Keys::Static(signer)
            }
            Credentials::Rrsa(rrsa) => {
                Keys::Rrsa(Rrsa::new(rrsa.clone(), http.clone(), config.timeout))
            }
        };
        AlibabaCloud {
            http,
            endpoint: config.endpoint(),
            region: config.region.clone(),
            keys,
            timeout: config.timeout,
        }
    }

    /// The signer for the next call; with RRSA, keys that are not due for
    /// renewal (renewed here when they are). No keys is a typed error of
    /// the call: throttled when STS throttled, unavailable otherwise.
    async fn signer(&self, action: Action) -> Result<Signer> {
        let rrsa = match &self.keys {
            Keys::Static(signer) => return Ok(signer.clone()),
            Keys::Rrsa(rrsa) => rrsa,
        };
        rrsa.signer().await.map_err(|e| {
            warn!(%action, kind = e.metric_label(), error = %e, "no Alibaba Cloud credentials for the call");
            if e.is_throttled() {
                Error::Throttled {
                    action,
                    retry_after: None,
                }
            } else {
                Error::Unavailable {
                    action,
                    message: "RRSA credentials".into(),
                    source: Some(Box::new(e)),
                }
            }
        })
    }

    /// Sends one signed call and decodes its JSON answer.
    async fn call<T: DeserializeOwned>(
        &self,
        action: Action,
        api: &str,
        mut params: Params,
    ) -> Result<T> {
        params.insert("Action".into(), api.into());
        params.insert("Version".into(), API_VERSION.into());
        params.insert("Format".into(), "JSON".into());
        params.insert("RegionId".into(), self.region.clone());
        let timestamp = jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let query =
            self.signer(action)
                .await?
                .signed_query("GET", &mut params, &timestamp, &nonce());
        let url = format!("{}/?{query}", self.endpoint);

        let transport = |e: reqwest::Error| {
            if e.is_timeout() {
                Error::DeadlineExceeded {
                    action,
                    deadline: self.timeout,
                }
            } else {
                Error::Unavailable {
                    action,
                    message: format!("{api}: transport error"),
                    source: Some(Box::new(e)),
                }
            }
        };
        let response = self
            .http
            .get(url)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.bytes().await.map_err(transport)?;

        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| {
                let excerpt: String = String::from_utf8_lossy(&body).chars().take(120).collect();
                Error::malformed(action, format!("{api}: {e} in {excerpt:?}"))
            });
        }
        let err = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => errors::classify(action, status.as_u16(), &b, retry_after),
            Err(_) => errors::unparseable(action, status.as_u16(), &body),
        };
        if err.is_transient() || matches!(err, Error::NotFound { .. }) {
            debug!(%action, api, error = %err, "ECS call failed");
        } else {
            warn!(%action, api, error = %err, "ECS call failed");
        }
        Err(err)
    }

    /// Every ENI matching `filter`, following NextToken.
    async fn describe_all(&self, action: Action, filter: Params) -> Result<Vec<Eni>> {
        let mut parsed = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut p = filter.clone();
            p.insert("MaxResults".into(), ENI_PAGE_DEFAULT.to_string());
            if let Some(t) = &token {
                p.insert("NextToken".into(), t.clone());
            }
            let page: DescribeNetworkInterfacesResponse =
                self.call(action, "DescribeNetworkInterfaces", p).await?;
            for n in page.sets.unwrap_or_default().set {
                parsed.push(n.parse().map_err(malformed(action))?);
            }
            token = page.next_token.filter(|t| !t.is_empty());
            if token.is_none() {
                return Ok(model::assign_device_indices(parsed));
            }
        }
        Err(Error::malformed(
            action,
            format!("DescribeNetworkInterfaces: more than {MAX_PAGES} pages"),
        ))
    }

    /// Moves `ips` off whichever other ENI of the target's vSwitch holds
    /// them; returns those the target itself already holds.
    async fn release_from_holders(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        let target = self
            .describe_all(action, params([("NetworkInterfaceId.1", eni_id)]))
            .await?;
        let Some(target) = target.into_iter().find(|e| e.id == eni_id) else {
            return Err(Error::NotFound {
                action,
                message: format!("network interface {eni_id} does not exist"),
            });
        };
        if ips.contains(&target.primary_ip) {
            return Err(Error::InvalidRequest {
                action,
                message: format!("{} is the primary address of {eni_id}", target.primary_ip),
            });
        }
        let already: Vec<Ipv4Addr> = ips
            .iter()
            .copied()
            .filter(|ip| target.secondary_ips.contains(ip))
            .collect();
        for chunk in ips.chunks(IP_FILTER_MAX) {
            let mut filter = params([("VSwitchId", target.subnet_id.as_str())]);
            put_ips(&mut filter, chunk);
            for holder in self.describe_all(action, filter).await? {
                if holder.id == eni_id {
                    continue;
                }
                if chunk.contains(&holder.primary_ip) {
                    return Err(Error::InvalidRequest {
                        action,
                        message: format!(
                            "{} is the primary address of {}; it cannot move",
                            holder.primary_ip, holder.id
                        ),
                    });
                }
                let held: Vec<Ipv4Addr> = holder
                    .secondary_ips
                    .iter()
                    .copied()
                    .filter(|ip| chunk.contains(ip))
                    .collect();
                if held.is_empty() {
                    continue;
                }
                debug!(from = %holder.id, to = %eni_id, ips = ?held, "moving addresses");
                let mut p = params([("NetworkInterfaceId", holder.id.as_str())]);
                put_ips(&mut p, &held);
                let _: Empty = self.call(action, "UnassignPrivateIpAddresses", p).await?;
            }
        }
        Ok(already)
    }

    /// One CreateNetworkInterface, with `ClientToken` when given.
    async fn create_network_interface(
        &self,
        request: &CreateEni,
        client_token: Option<&str>,
    ) -> Result<Eni> {
        let action = Action::CreateEni;
        if request.secondary_ips > MAX_SECONDARY_IPS_AT_CREATION {
            return Err(Error::InvalidRequest {
                action,
                message: format!(
                    "{} secondary addresses asked at creation; ECS assigns at most {MAX_SECONDARY_IPS_AT_CREATION}",
                    request.secondary_ips
                ),
            });
        }
        let mut p = params([("VSwitchId", request.subnet_id.as_str())]);
        if let Some(token) = client_token {
            p.insert("ClientToken".into(), token.to_owned());
        }
        for (n, sg) in request.security_groups.iter().enumerate() {
            p.insert(format!("SecurityGroupIds.{}", n + 1), sg.clone());
        }
        for (n, (k, v)) in request.tags.iter().enumerate() {
            p.insert(format!("Tag.{}.Key", n + 1), k.clone());
            p.insert(format!("Tag.{}.Value", n + 1), v.clone());
        }
        if request.secondary_ips > 0 {
            p.insert(
                "SecondaryPrivateIpAddressCount".into(),
                request.secondary_ips.to_string(),
            );
        }
        if !request.description.is_empty() {
            p.insert("Description".into(), request.description.clone());
        }
        let mut created: NetworkInterface = self.call(action, "CreateNetworkInterface", p).await?;
        // Fill what the answer may leave out from what we asked for.
        created
            .vswitch_id
            .get_or_insert_with(|| request.subnet_id.clone());
        if created.security_groups.is_none() {
            created.security_groups = Some(model::SecurityGroupIds {
                ids: request.security_groups.clone(),
            });
        }
        let mut eni = created.parse().map_err(malformed(action))?.eni;
        if eni.tags.is_empty() {
            eni.tags = request.tags.clone();
        }
        eni.state = EniState::Available;
        eni.attachment = None;
        debug!(eni = %eni.id, subnet = %eni.subnet_id, ips = eni.secondary_ips.len(), "created ENI");
        Ok(eni)
    }

    /// One AssignPrivateIpAddresses, with `ClientToken` when given.
    async fn assign_private_ip_addresses(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: Option<&str>,
    ) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        if request.is_empty() {
            return Ok(Vec::new());
        }
        let mut p = params([("NetworkInterfaceId", eni_id)]);
        if let Some(token) = client_token {
            p.insert("ClientToken".into(), token.to_owned());
        }
        let mut held = Vec::new();
        match request {
            AssignIps::Count(n) => {
                p.insert("SecondaryPrivateIpAddressCount".into(), n.to_string());
            }
            AssignIps::Specific {
                ips,
                allow_reassignment,
            } => {
                // ECS has no "allow reassignment": take them off their holder
                // first; those already here need no call.
                let mut wanted = ips.clone();
                if *allow_reassignment {
                    held = self.release_from_holders(eni_id, ips).await?;
                    wanted.retain(|ip| !held.contains(ip));
                    if wanted.is_empty() {
                        return Ok(held);
                    }
                }
                put_ips(&mut p, &wanted);
            }
        }
        let answer: AssignPrivateIpAddressesResponse =
            self.call(action, "AssignPrivateIpAddresses", p).await?;
        let addresses = answer
            .assigned
            .and_then(|a| a.ips)
            .map(|i| i.addresses)
            .ok_or_else(|| Error::malformed(action, "AssignPrivateIpAddresses: no PrivateIpSet"))?;
        let mut assigned = addresses
            .iter()
            .map(|a| model::parse_ip(a, "AssignedPrivateIpAddressesSet"))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(malformed(action))?;
        assigned.extend(held);
        debug!(eni = %eni_id, count = assigned.len(), "assigned addresses");
        Ok(assigned)
    }
}

#[async_trait]
impl EniCloud for AlibabaCloud {
    fn provider(&self) -> &'static str {
        "alibaba"
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let action = Action::DescribeInstanceNetwork;
        let mut enis = self
            .describe_all(action, params([("InstanceId", instance_id)]))
            .await?;
        // The filter is the server's; keep only what it promised.
        enis.retain(|e| {
            e.attachment
                .as_ref()
                .is_some_and(|a| a.instance_id == instance_id)
        });
        enis.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
        Ok(InstanceNetwork {
            instance_id: instance_id.to_owned(),
            enis,
        })
    }

    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        let action = Action::ListEnis;
        let size = match page.size {
            0 => ENI_PAGE_DEFAULT,
            n => n.min(ENI_PAGE_MAX),
        };
        let mut p = params([("VpcId", vpc_id)]);
        p.insert("MaxResults".into(), size.to_string());
        if let Some(t) = page.token.filter(|t| !t.is_empty()) {
            p.insert("NextToken".into(), t);
        }
        let answer: DescribeNetworkInterfacesResponse =
            self.call(action, "DescribeNetworkInterfaces", p).await?;
        let parsed = answer
            .sets
            .unwrap_or_default()
            .set
            .iter()
            .map(NetworkInterface::parse)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(malformed(action))?;
        Ok(Page {
            items: model::assign_device_indices(parsed),
            next: answer.next_token.filter(|t| !t.is_empty()),
        })
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        let action = Action::DescribeSubnets;
        let mut out = Vec::new();
        for number in 1..=MAX_PAGES {
            let mut p = params([("VpcId", vpc_id)]);
            p.insert("PageSize".into(), PAGE_SIZE_SMALL.to_string());
            p.insert("PageNumber".into(), number.to_string());
            let page: DescribeVSwitchesResponse = self.call(action, "DescribeVSwitches", p).await?;
            let items = page.vswitches.unwrap_or_default().set;
            let got = items.len();
            for v in &items {
                out.push(v.parse().map_err(malformed(action))?);
            }
            let total = page.total.unwrap_or(0);
            if got == 0 || out.len() as u64 >= total {
                return Ok(out);
            }
        }
        Err(Error::malformed(
            action,
            "DescribeVSwitches: too many pages",
        ))
    }

    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        let action = Action::DescribeSecurityGroups;
        let mut out = Vec::new();
        for number in 1..=MAX_PAGES {
            let mut p = params([("VpcId", vpc_id)]);
            p.insert("PageSize".into(), PAGE_SIZE_SMALL.to_string());
            p.insert("PageNumber".into(), number.to_string());
            let page: DescribeSecurityGroupsResponse =
                self.call(action, "DescribeSecurityGroups", p).await?;
            let items = page.groups.unwrap_or_default().set;
            let got = items.len();
            for g in &items {
                out.push(g.parse().map_err(malformed(action))?);
            }
            let total = page.total.unwrap_or(0);
            if got == 0 || out.len() as u64 >= total {
                return Ok(out);
            }
        }
        Err(Error::malformed(
            action,
            "DescribeSecurityGroups: too many pages",
        ))
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        let action = Action::DescribeInstanceTypes;
        let answer: DescribeInstanceTypesResponse = self
            .call(
                action,
                "DescribeInstanceTypes",
                params([("InstanceTypes.1", instance_type)]),
            )
            .await?;
        for t in answer.types.unwrap_or_default().set {
            if t.id.as_deref() == Some(instance_type) {
                return t.parse().map_err(malformed(action));
            }
        }
        Err(Error::NotFound {
            action,
            message: format!("instance type {instance_type} is not offered"),
        })
    }

    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        self.create_network_interface(request, None).await
    }

    /// CreateNetworkInterface with `ClientToken`: ECS answers a repeat of
    /// the same token with the ENI the first call created.
    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        self.create_network_interface(request, Some(client_token))
            .await
    }

    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        self.assign_private_ip_addresses(eni_id, request, None)
            .await
    }

    /// AssignPrivateIpAddresses with `ClientToken` (ECS honours it, unlike EC2).
    async fn assign_ips_with_token(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        self.assign_private_ip_addresses(eni_id, request, Some(client_token))
            .await
    }

    fn honours_client_token(&self, action: Action) -> bool {
        matches!(action, Action::CreateEni | Action::AssignIps)
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        // ECS picks the device itself; AttachNetworkInterface takes no index.
        debug!(eni = %eni_id, instance = %instance_id, device_index, "attaching ENI");
        let _: Empty = self
            .call(
                Action::AttachEni,
                "AttachNetworkInterface",
                params([("NetworkInterfaceId", eni_id), ("InstanceId", instance_id)]),
            )
            .await?;
        Ok(())
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        if ips.is_empty() {
            return Ok(());
        }
        let mut p = params([("NetworkInterfaceId", eni_id)]);
        put_ips(&mut p, ips);
        let _: Empty = self
            .call(Action::UnassignIps, "UnassignPrivateIpAddresses", p)
            .await?;
        Ok(())
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        let action = Action::DetachEni;
        let Some(attachment) = &eni.attachment else {
            return Err(Error::InvalidRequest {
                action,
                message: format!("network interface {} is not attached", eni.id),
            });
        };
        let _: Empty = self
            .call(
                action,
                "DetachNetworkInterface",
                params([
                    ("NetworkInterfaceId", eni.id.as_str()),
                    ("InstanceId", attachment.instance_id.as_str()),
                ]),
            )
            .await?;
        Ok(())
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        let _: Empty = self
            .call(
                Action::DeleteEni,
                "DeleteNetworkInterface",
                params([("NetworkInterfaceId", eni_id)]),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoint_is_the_regional_public_one() {
        let c = AlibabaConfig::new("cn-hangzhou", "id", "secret");
        assert_eq!(c.endpoint(), "https://ecs.cn-hangzhou.aliyuncs.com");
        let c = c.with_endpoint("http://127.0.0.1:9/");
        assert_eq!(c.endpoint(), "http://127.0.0.1:9");
        assert!(!format!("{c:?}").contains("\"secret\""));
    }

    #[test]
    fn nonces_look_like_uuids_and_differ() {
        let (a, b) = (nonce(), nonce());
        assert_eq!(a.len(), 36);
        assert_ne!(a, b);
    }
}
