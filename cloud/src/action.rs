//! The cloud calls Sextant makes, and the throttling class each falls in.

use std::fmt;

/// One kind of cloud API call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Describe the ENIs of one instance (filtered).
    DescribeInstanceNetwork,
    /// List ENIs of a VPC, one page.
    ListEnis,
    /// Describe subnets / vSwitches.
    DescribeSubnets,
    /// Describe security groups.
    DescribeSecurityGroups,
    /// Describe instance types.
    DescribeInstanceTypes,
    /// Create an ENI.
    CreateEni,
    /// Attach an ENI.
    AttachEni,
    /// Assign secondary addresses.
    AssignIps,
    /// Unassign secondary addresses.
    UnassignIps,
    /// Detach an ENI.
    DetachEni,
    /// Delete an ENI.
    DeleteEni,
}

impl Action {
    /// Every action, for tables and metric initialisation.
    pub const ALL: [Action; 11] = [
        Action::DescribeInstanceNetwork,
        Action::ListEnis,
        Action::DescribeSubnets,
        Action::DescribeSecurityGroups,
        Action::DescribeInstanceTypes,
        Action::CreateEni,
        Action::AttachEni,
        Action::AssignIps,
        Action::UnassignIps,
        Action::DetachEni,
        Action::DeleteEni,
    ];

    /// Metric label and log name (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            Action::DescribeInstanceNetwork => "describe_instance_network",
            Action::ListEnis => "list_enis",
            Action::DescribeSubnets => "describe_subnets",
            Action::DescribeSecurityGroups => "describe_security_groups",
            Action::DescribeInstanceTypes => "describe_instance_types",
            Action::CreateEni => "create_eni",
            Action::AttachEni => "attach_eni",
            Action::AssignIps => "assign_ips",
            Action::UnassignIps => "unassign_ips",
            Action::DetachEni => "detach_eni",
            Action::DeleteEni => "delete_eni",
        }
    }

    /// The EC2 throttling bucket this call draws from.
    pub fn class(self) -> ActionClass {
        match self {
            Action::DescribeInstanceNetwork
            | Action::ListEnis
            | Action::DescribeSubnets
            | Action::DescribeSecurityGroups
            | Action::DescribeInstanceTypes => ActionClass::Describe,
            Action::CreateEni | Action::DeleteEni | Action::AssignIps | Action::UnassignIps => {
                ActionClass::MutateEni
            }
            Action::AttachEni | Action::DetachEni => ActionClass::MutateOther,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Throttling classes, after EC2's published token buckets: describes share
/// one bucket; create/delete/assign/unassign each have a bucket of their own
/// with the same size and refill; other mutations (attach, detach) share one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionClass {
    /// Non-mutating calls.
    Describe,
    /// Create/Delete ENI, Assign/Unassign addresses.
    MutateEni,
    /// Attach/Detach and other mutating calls.
    MutateOther,
}

impl ActionClass {
    /// Every class.
    pub const ALL: [ActionClass; 3] = [
        ActionClass::Describe,
        ActionClass::MutateEni,
        ActionClass::MutateOther,
    ];

    /// Metric label and flag name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::Describe => "describe",
            ActionClass::MutateEni => "mutate_eni",
            ActionClass::MutateOther => "mutate_other",
        }
    }
}

impl fmt::Display for ActionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
