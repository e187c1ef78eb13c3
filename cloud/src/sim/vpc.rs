//! A simulated VPC laid out from a few settings: its CIDR split into one
//! subnet per zone and one security group, as a node group's VPC looks on
//! EC2. The operator's `--provider sim` builds its cloud from this.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, str::FromStr};

use super::{SetupError, SimCloud};
use crate::Tags;

/// Smallest VPC EC2 allows.
const MIN_PREFIX: u8 = 16;
/// Smallest subnet EC2 allows.
const MAX_PREFIX: u8 = 28;

/// An IPv4 network in CIDR notation, host bits zero, between /16 and /28
/// (EC2's VPC and subnet sizes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Cidr {
    /// The network address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// `parts` equal, adjacent subnets from the start of this network, each
    /// the largest power-of-two share that fits `parts` of them (two zones of
    /// a /16 get a /17 each; three get a /18 each, the fourth /18 stays
    /// free). `None` when they would be smaller than /28, or `parts` is 0.
    pub fn split(&self, parts: usize) -> Option<Vec<Cidr>> {
        if parts == 0 {
            return None;
        }
        let bits = u8::try_from(parts.next_power_of_two().trailing_zeros()).ok()?;
        let prefix = self.prefix.checked_add(bits)?;
        if prefix > MAX_PREFIX {
            return None;
        }
        let size = 1u32 << (32 - prefix);
        let base = u32::from(self.network);
        Some(
            (0..parts)
                .map(|i| Cidr {
                    network: Ipv4Addr::from(base + size * u32::try_from(i).unwrap_or(0)),
                    prefix,
                })
                .collect(),
        )
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = SetupError;

    /// Parses `10.0.0.0/16`; host bits set (`10.0.0.1/16`) or a size outside
    /// /16../28 are errors.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SetupError::BadCidr(s.to_owned());
        let (addr, len) = s.trim().split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = len.parse().map_err(|_| bad())?;
        if !(MIN_PREFIX..=MAX_PREFIX).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(network) & !mask != 0 {
            return Err(bad());
        }
        Ok(Cidr { network, prefix })
    }
}

/// What a simulated VPC is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimVpcConfig {
    /// VPC id (`vpc-sim`).
    pub vpc_id: String,
    /// The VPC's CIDR, split into one subnet per zone.
    pub cidr: Cidr,
    /// Zones, in order (`us-east-1a`, `us-east-1b`).
    pub zones: Vec<String>,
}

fn valid_zone(zone: &str) -> bool {
    !zone.is_empty()
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// A simulated VPC as laid out in a [`SimCloud`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimVpc {
    /// VPC id.
    pub vpc_id: String,
    /// Zones in the order given, each with its subnet id and CIDR.
    pub subnets: Vec<(String, String, Cidr)>,
    /// The security group every instance's primary interface is in.
    pub security_group: String,
}

impl SimVpc {
    /// Lays `config` out in `sim`: a subnet per zone, tagged
    /// `Name=<vpc>-<zone>`, and a security group `sextant-pods` tagged
    /// `Name=<vpc>-pods`.
    pub fn create(sim: &SimCloud, config: &SimVpcConfig) -> Result<SimVpc, SetupError> {
        if config.zones.is_empty() {
            return Err(SetupError::NoZones);
        }
        let mut seen = BTreeSet::new();
        for z in &config.zones {
            if !valid_zone(z) {
                return Err(SetupError::BadZone(z.clone()));
            }
            if !seen.insert(z.as_str()) {
                return Err(SetupError::DuplicateZone(z.clone()));
            }
        }
        let cidrs =
            config
                .cidr
                .split(config.zones.len())
                .ok_or_else(|| SetupError::CidrTooSmall {
                    cidr: config.cidr.to_string(),
                    zones: config.zones.len(),
                })?;
        let name = |what: &str| Tags::from([("Name".into(), format!("{}-{what}", config.vpc_id))]);
        let mut subnets = Vec::with_capacity(cidrs.len());
        for (zone, cidr) in config.zones.iter().zip(cidrs) {
            let id = sim.add_subnet(&config.vpc_id, zone, &cidr.to_string(), name(zone))?;
            subnets.push((zone.clone(), id, cidr));
        }
        let security_group = sim.add_security_group(&config.vpc_id, "sextant-pods", name("pods"));
        Ok(SimVpc {
            vpc_id: config.vpc_id.clone(),
            subnets,
            security_group,
        })
    }

    /// The subnet of `zone`.
    pub fn subnet_in(&self, zone: &str) -> Option<&str> {
        self.subnets
            .iter()
            .find(|(z, ..)| z == zone)
            .map(|(_, id, _)| id.as_str())
    }

    /// The first zone: where instances of unknown zone go.
    pub fn first_zone(&self) -> Option<&str> {
        self.subnets.first().map(|(z, ..)| z.as_str())
    }

    /// The zones, comma-separated, for messages.
    pub fn zone_list(&self) -> String {
        self.subnets
            .iter()
            .map(|(z, ..)| z.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EniCloud, sim::SimConfig, sim::SimProvider};

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_only_as_networks_ec2_allows() {
        assert_eq!(cidr("10.0.0.0/16").to_string(), "10.0.0.0/16");
        assert_eq!(cidr(" 172.31.0.0/20").prefix(), 20);
        for bad in [
            "10.0.0.1/16",
            "10.0.0.0/8",
            "10.0.0.0/29",
            "10.0.0.0",
            "ten/16",
            "",
        ] {
            assert_eq!(
                bad.parse::<Cidr>(),
                Err(SetupError::BadCidr(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_vpc_cidr_splits_into_equal_power_of_two_subnets() {
        let c = cidr("10.0.0.0/16");
        let two: Vec<String> = c.split(2).unwrap().iter().map(Cidr::to_string).collect();
        assert_eq!(two, ["10.0.0.0/17", "10.0.128.0/17"]);
        let three: Vec<String> = c.split(3).unwrap().iter().map(Cidr::to_string).collect();
        assert_eq!(three, ["10.0.0.0/18", "10.0.64.0/18", "10.0.128.0/18"]);
        assert_eq!(c.split(1).unwrap(), vec![c]);
        assert_eq!(c.split(0), None);
        assert_eq!(
            cidr("10.0.0.0/27").split(2).unwrap()[1].to_string(),
            "10.0.0.16/28"
        );
        assert_eq!(cidr("10.0.0.0/28").split(2), None);
    }

    #[tokio::test]
    async fn a_vpc_gets_a_subnet_per_zone_and_a_security_group() {
        let sim = SimCloud::new(SimConfig::instant(SimProvider::Aws, 1));
        let vpc = SimVpc::create(
            &sim,
            &SimVpcConfig {
                vpc_id: "vpc-sim".into(),
                cidr: cidr("10.0.0.0/16"),
                zones: vec!["us-east-1a".into(), "us-east-1b".into()],
            },
        )
        .unwrap();
        let subnets = sim.subnets("vpc-sim").await.unwrap();
        assert_eq!(subnets.len(), 2);
        let b = subnets.iter().find(|s| s.zone == "us-east-1b").unwrap();
        assert_eq!(b.cidr, "10.0.128.0/17");
        // A /17 less EC2's five reserved addresses.
        assert_eq!(b.available_ips, 32768 - 5);
        assert_eq!(b.tags["Name"], "vpc-sim-us-east-1b");
        assert_eq!(vpc.subnet_in("us-east-1b"), Some(b.id.as_str()));
        assert_eq!(vpc.subnet_in("us-east-1c"), None);
        assert_eq!(vpc.first_zone(), Some("us-east-1a"));
        let groups = sim.security_groups("vpc-sim").await.unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].id, vpc.security_group);
    }

    #[test]
    fn bad_zone_lists_are_refused() {
        let sim = SimCloud::new(SimConfig::instant(SimProvider::Aws, 1));
        let config = |zones: &[&str], c: &str| SimVpcConfig {
            vpc_id: "vpc-sim".into(),
            cidr: cidr(c),
            zones: zones.iter().map(|z| z.to_string()).collect(),
        };
        let err = |zones: &[&str], c: &str| SimVpc::create(&sim, &config(zones, c)).unwrap_err();
        assert_eq!(err(&[], "10.0.0.0/16"), SetupError::NoZones);
        assert_eq!(
            err(&["a", "a"], "10.0.0.0/16"),
            SetupError::DuplicateZone("a".into())
        );
        assert_eq!(
            err(&["a", ""], "10.0.0.0/16"),
            SetupError::BadZone("".into())
        );
        assert_eq!(
            err(&["a", "b"], "10.0.0.0/28"),
            SetupError::CidrTooSmall {
                cidr: "10.0.0.0/28".into(),
                zones: 2
            }
        );
    }
}
