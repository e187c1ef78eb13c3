//! The two resync strategies Sextant is compared against, behind the same
//! [`InstanceResync`] seam the operator uses.

use std::sync::Arc;

use async_trait::async_trait;
use sextant_cloud::{Action, Cloud, EniCloud, InstanceNetwork, sim::SimCloud};
use sextant_ipam::resync::{InstanceResync, by_instance, list_vpc};

/// The pre-fix resync: one describe per subnet of the VPC, each through the
/// same limiter and retries.
pub struct PerSubnet {
    /// The simulated provider, whose per-subnet describe this calls.
    pub sim: Arc<SimCloud>,
    /// The limiter, retries and metrics every call goes through.
    pub cloud: Arc<Cloud>,
    /// Subnets of the VPC.
    pub subnets: Vec<String>,
}

#[async_trait]
impl InstanceResync for PerSubnet {
    async fn instance(
        &self,
        _cloud: &dyn EniCloud,
        instance_id: &str,
        _vpc_id: &str,
    ) -> sextant_cloud::Result<InstanceNetwork> {
        let mut enis = Vec::new();
        for s in &self.subnets {
            let found = self
                .cloud
                .call(Action::ListEnis, || self.sim.describe_subnet_enis(s))
                .await?;
            enis.extend(found);
        }
        Ok(by_instance(enis)
            .remove(instance_id)
            .unwrap_or(InstanceNetwork {
                instance_id: instance_id.to_owned(),
                enis: vec![],
            }))
    }
}

/// A paged listing of the whole VPC after each mutation.
pub struct VpcWide;

#[async_trait]
impl InstanceResync for VpcWide {
    async fn instance(
        &self,
        cloud: &dyn EniCloud,
        instance_id: &str,
        vpc_id: &str,
    ) -> sextant_cloud::Result<InstanceNetwork> {
        Ok(by_instance(list_vpc(cloud, vpc_id).await?)
            .remove(instance_id)
            .unwrap_or(InstanceNetwork {
                instance_id: instance_id.to_owned(),
                enis: vec![],
            }))
    }
}
