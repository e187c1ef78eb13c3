//! Published ENI limits of the instance types the simulator knows.
//!
//! AWS figures from the VPC CNI's `vpc_ip_resource_limit.go` / `eni-max-pods.txt`;
//! Alibaba figures from the ECS instance family page (g7: EniQuantity and
//! EniPrivateIpAddressQuantity).

use crate::InstanceLimits;

/// (instance type, network interfaces, IPv4 addresses per interface).
pub const INSTANCE_TYPES: &[(&str, u32, u32)] = &[
    ("m5.large", 3, 10),
    ("m5.xlarge", 4, 15),
    ("m5.2xlarge", 4, 15),
    ("m5.4xlarge", 8, 30),
    ("c5.18xlarge", 15, 50),
    ("ecs.g7.large", 3, 6),
    ("ecs.g7.xlarge", 4, 15),
    ("ecs.g7.2xlarge", 6, 15),
];

/// Limits of a known instance type.
pub fn instance_type(name: &str) -> Option<InstanceLimits> {
    INSTANCE_TYPES
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|&(n, max_enis, ipv4_per_eni)| InstanceLimits {
            instance_type: n.to_owned(),
            max_enis,
            ipv4_per_eni,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_pods_match_the_published_figures() {
        // max pods = ENIs x (IPs per ENI - 1) + 2
        for (name, max_pods) in [("m5.large", 29), ("m5.4xlarge", 234), ("c5.18xlarge", 737)] {
            let l = instance_type(name).unwrap();
            assert_eq!(l.max_enis * l.secondary_per_eni() + 2, max_pods, "{name}");
        }
    }
}
