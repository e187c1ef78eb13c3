//! Plain data crossing the [`crate::EniCloud`] boundary, the same for every provider.

use std::{collections::BTreeMap, net::Ipv4Addr};

/// Tags (labels on Alibaba) on a cloud object.
pub type Tags = BTreeMap<String, String>;

/// Attachment state of an ENI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EniState {
    /// Not attached to any instance.
    Available,
    /// Being attached.
    Attaching,
    /// Attached to an instance.
    InUse,
    /// Being detached.
    Detaching,
}

/// One elastic network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eni {
    /// `eni-...`
    pub id: String,
    /// Subnet (vSwitch) the ENI lives in.
    pub subnet_id: String,
    /// VPC of the subnet.
    pub vpc_id: String,
    /// Availability zone.
    pub zone: String,
    /// MAC address, lower case.
    pub mac: String,
    /// Primary private address; never handed to pods.
    pub primary_ip: Ipv4Addr,
    /// Secondary private addresses, in the order the cloud lists them.
    pub secondary_ips: Vec<Ipv4Addr>,
    /// Security group ids.
    pub security_groups: Vec<String>,
    /// Tags on the ENI.
    pub tags: Tags,
    /// Attachment state.
    pub state: EniState,
    /// Present while attached (or attaching).
    pub attachment: Option<Attachment>,
}

/// Where an ENI is attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// Provider's attachment id (`eni-attach-...` on AWS; empty where the provider has none).
    pub id: String,
    /// Instance the ENI is attached to.
    pub instance_id: String,
    /// Device index on the instance.
    pub device_index: u32,
}

/// An instance and its attached ENIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceNetwork {
    /// Instance id.
    pub instance_id: String,
    /// ENIs attached to it, primary included, sorted by device index.
    pub enis: Vec<Eni>,
}

/// A subnet (vSwitch on Alibaba).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet {
    /// Subnet id.
    pub id: String,
    /// VPC id.
    pub vpc_id: String,
    /// Availability zone.
    pub zone: String,
    /// IPv4 CIDR block.
    pub cidr: String,
    /// Addresses still free in the subnet.
    pub available_ips: u32,
    /// Tags on the subnet.
    pub tags: Tags,
}

/// A security group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityGroup {
    /// Group id.
    pub id: String,
    /// VPC id.
    pub vpc_id: String,
    /// Group name.
    pub name: String,
    /// Tags on the group.
    pub tags: Tags,
}

/// ENI limits of an instance type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Instance type name.
    pub instance_type: String,
    /// Network interfaces the instance can have, primary included.
    pub max_enis: u32,
    /// Private IPv4 addresses per interface, primary included.
    pub ipv4_per_eni: u32,
}

impl InstanceLimits {
    /// Secondary addresses one ENI can carry.
    pub fn secondary_per_eni(&self) -> u32 {
        self.ipv4_per_eni.saturating_sub(1)
    }
}

/// A request to create an ENI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateEni {
    /// Subnet to create it in.
    pub subnet_id: String,
    /// Security groups to attach.
    pub security_groups: Vec<String>,
    /// Tags to put on it; see [`crate::EniTags`].
    pub tags: Tags,
    /// Secondary addresses to assign at creation.
    pub secondary_ips: u32,
    /// Free-text description.
    pub description: String,
}

/// Which secondary addresses to assign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssignIps {
    /// Any `n` free addresses of the ENI's subnet.
    Count(u32),
    /// Exactly these addresses; with `allow_reassignment` they may be taken
    /// from another ENI of the same subnet (fixed IPs moving between nodes).
    Specific {
        /// The addresses.
        ips: Vec<Ipv4Addr>,
        /// Move them from another ENI if they are assigned there.
        allow_reassignment: bool,
    },
}

impl AssignIps {
    /// How many addresses the request asks for.
    pub fn len(&self) -> u32 {
        match self {
            AssignIps::Count(n) => *n,
            AssignIps::Specific { ips, .. } => u32::try_from(ips.len()).unwrap_or(u32::MAX),
        }
    }

    /// True when the request asks for nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Paging of a list call.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Token from the previous page, `None` for the first.
    pub token: Option<String>,
    /// Items per page; providers clamp to their own bounds.
    pub size: u32,
}

/// One page of a list call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Token for the next page; `None` on the last page.
    pub next: Option<String>,
}
