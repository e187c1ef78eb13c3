//! `--provider static`: bare metal, where pod IPs come from each node's pod
//! CIDRs (from `Node.spec.podCIDRs` or Sextant's pool, `node_network::pod_cidr`)
//! and there is no cloud to call. Node IPAM answers static NodeNetworks
//! before it would reach a cloud, so [`NoCloud`] is never asked in normal
//! operation; if it is, every call is refused with a clear error instead of
//! reaching a provider.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use sextant_cloud::{
    Action, AssignIps, CreateEni, Eni, EniCloud, Error, InstanceLimits, InstanceNetwork, Page,
    PageRequest, Result, SecurityGroup, Subnet,
};

/// The cloud of a bare-metal cluster: none.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCloud;

fn refused<T>(action: Action) -> Result<T> {
    Err(Error::InvalidRequest {
        action,
        message: "bare metal (--provider static) has no cloud: pod IPs come from pod CIDRs".into(),
    })
}

#[async_trait]
impl EniCloud for NoCloud {
    fn provider(&self) -> &'static str {
        "static"
    }

    async fn instance_network(&self, _instance_id: &str) -> Result<InstanceNetwork> {
        refused(Action::DescribeInstanceNetwork)
    }

    async fn list_enis(&self, _vpc_id: &str, _page: PageRequest) -> Result<Page<Eni>> {
        refused(Action::ListEnis)
    }

    async fn subnets(&self, _vpc_id: &str) -> Result<Vec<Subnet>> {
        refused(Action::DescribeSubnets)
    }

    async fn security_groups(&self, _vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        refused(Action::DescribeSecurityGroups)
    }

    async fn instance_limits(&self, _instance_type: &str) -> Result<InstanceLimits> {
        refused(Action::DescribeInstanceTypes)
    }

    async fn create_eni(&self, _request: &CreateEni) -> Result<Eni> {
        refused(Action::CreateEni)
    }

    async fn attach_eni(&self, _eni: &str, _instance: &str, _device_index: u32) -> Result<()> {
        refused(Action::AttachEni)
    }

    async fn assign_ips(&self, _eni_id: &str, _request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        refused(Action::AssignIps)
    }

    async fn unassign_ips(&self, _eni_id: &str, _ips: &[Ipv4Addr]) -> Result<()> {
        refused(Action::UnassignIps)
    }

    async fn detach_eni(&self, _eni: &Eni) -> Result<()> {
        refused(Action::DetachEni)
    }

    async fn delete_eni(&self, _eni_id: &str) -> Result<()> {
        refused(Action::DeleteEni)
    }
}
