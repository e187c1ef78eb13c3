//! The clouds Sextant takes pod IPs from, behind one trait.
//!
//! ```text
//!   controllers ──▶ Cloud (deadline ─▶ governor limiter per action class ─▶ retry with full jitter ─▶ metrics)
//!                     │
//!                     ▼ dyn EniCloud
//!            ┌────────┼──────────┐
//!          aws     alibaba      sim (feature "sim")
//!      (aws-sdk-ec2) (ECS RPC,   (in-process VPC with EC2 token buckets /
//!                     POP sig)    Alibaba per-minute windows, faults)
//! ```
//!
//! [`EniCloud`] is the raw provider: one method per cloud call, typed
//! [`Error`]s, no retries. [`Cloud`] wraps any provider with what every caller
//! needs: a deadline per call, a client-side rate limit per [`ActionClass`],
//! retries of throttled and unavailable calls with exponential backoff and full
//! jitter, and Prometheus metrics per [`Action`].
//!
//! Boundaries: no kube types and no IPAM decisions (which address goes
//! where is `controllers`'); callers pass plain requests and get typed
//! answers. The simulated cloud ([`sim`]) is behind the `sim` feature.

mod action;
mod cloud;
mod credentials;
mod error;
mod limits;
mod metrics;
mod tags;
mod types;

pub mod alibaba;
pub mod aws;
#[cfg(feature = "sim")]
pub mod sim;

pub use action::{Action, ActionClass};
pub use cloud::{Cloud, CloudConfig};
pub use credentials::CredentialsError;
pub use error::{Error, Result};
pub use limits::{RateLimit, RateLimits};
pub use metrics::{ActionTotals, CloudMetrics};
pub use sextant_kit::backoff::{Backoff, BackoffKind};
pub use tags::{EniTags, ROLE_PARKING, TAG_CLUSTER, TAG_CREATED_AT, TAG_NODE, TAG_ROLE};
pub use types::*;

use async_trait::async_trait;
use std::net::Ipv4Addr;

/// What ENI IPAM needs from a cloud. One method is one API call (or, where the
/// provider needs it, a short fixed sequence); implementations do not retry.
#[async_trait]
pub trait EniCloud: Send + Sync {
    /// Which provider this is (`aws`, `alibaba`, `sim`), for metrics and logs.
    fn provider(&self) -> &'static str;

    /// The ENIs (with their addresses) attached to one instance: the scoped
    /// resync, one describe call filtered by instance.
    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork>;

    /// One page of every ENI in a VPC: the periodic full resync.
    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>>;

    /// Subnets (vSwitches) of a VPC with their tags and free address counts.
    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>>;

    /// Security groups of a VPC with their tags.
    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>>;

    /// ENI and address limits of an instance type.
    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits>;

    /// Creates an unattached ENI, with `secondary_ips` addresses assigned at creation.
    async fn create_eni(&self, request: &CreateEni) -> Result<Eni>;

    /// [`EniCloud::create_eni`] under an idempotency token (EC2 and ECS
    /// `ClientToken`): the same token with the same request returns the ENI
    /// the first call made instead of a second one, so a call whose answer
    /// was lost can be sent again. Providers without tokens fall back to
    /// `create_eni` and say so in [`EniCloud::honours_client_token`].
    async fn create_eni_with_token(&self, request: &CreateEni, client_token: &str) -> Result<Eni> {
        let _ = client_token;
        self.create_eni(request).await
    }

    /// Attaches an ENI to an instance at a device index.
    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()>;

    /// Assigns secondary addresses to an ENI; returns the addresses now assigned by this call.
    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>>;

    /// [`EniCloud::assign_ips`] under an idempotency token (ECS
    /// `ClientToken`; EC2's AssignPrivateIpAddresses takes none, so there it
    /// falls back to `assign_ips`).
    async fn assign_ips_with_token(
        &self,
        eni_id: &str,
        request: &AssignIps,
        client_token: &str,
    ) -> Result<Vec<Ipv4Addr>> {
        let _ = client_token;
        self.assign_ips(eni_id, request).await
    }

    /// Whether the `*_with_token` call of `action` honours its token: only
    /// then may a call that may have taken effect (no answer in time, an
    /// answer that does not parse) be sent again.
    fn honours_client_token(&self, action: Action) -> bool {
        let _ = action;
        false
    }

    /// Removes secondary addresses from an ENI.
    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()>;

    /// Detaches an ENI from its instance (`eni` as last described, for the
    /// attachment id or instance the provider needs).
    async fn detach_eni(&self, eni: &Eni) -> Result<()>;

    /// Deletes an unattached ENI.
    async fn delete_eni(&self, eni_id: &str) -> Result<()>;
}
