//! ECS JSON answers (`Format=JSON`, API version 2014-05-26) and their
//! conversion to the crate's plain types.
//!
//! Every field is optional at the serde level, so that an answer missing a
//! field fails in the conversion with a message naming the field, instead of
//! as an opaque serde error. Conversions return `Err(String)` describing what
//! is wrong; the client turns it into [`crate::Error::malformed`].

use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::{Eni, EniState, InstanceLimits, SecurityGroup, Subnet, Tags};

/// `{"Tag": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TagSet {
    #[serde(rename = "Tag", default)]
    pub tag: Vec<Tag>,
}

/// A tag: ECS writes `TagKey`/`TagValue`, the vSwitch answer `Key`/`Value`.
#[derive(Debug, Deserialize)]
pub(crate) struct Tag {
    #[serde(rename = "TagKey", alias = "Key")]
    pub key: Option<String>,
    #[serde(rename = "TagValue", alias = "Value", default)]
    pub value: Option<String>,
}

impl TagSet {
    fn to_tags(&self) -> Result<Tags, String> {
        self.tag
            .iter()
            .map(|t| match &t.key {
                Some(k) => Ok((k.clone(), t.value.clone().unwrap_or_default())),
                None => Err("tag without a key".to_owned()),
            })
            .collect()
    }
}

/// `{"SecurityGroupId": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SecurityGroupIds {
    #[serde(rename = "SecurityGroupId", default)]
    pub ids: Vec<String>,
}

/// `{"PrivateIpSet": [...]}` of an ENI.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct PrivateIpSets {
    #[serde(rename = "PrivateIpSet", default)]
    pub set: Vec<PrivateIp>,
}

/// One private address of an ENI.
#[derive(Debug, Deserialize)]
pub(crate) struct PrivateIp {
    #[serde(rename = "PrivateIpAddress")]
    pub address: Option<String>,
    #[serde(rename = "Primary", default)]
    pub primary: bool,
}

/// One ENI as DescribeNetworkInterfaces and CreateNetworkInterface describe it.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NetworkInterface {
    #[serde(rename = "NetworkInterfaceId")]
    pub id: Option<String>,
    #[serde(rename = "Status")]
    pub status: Option<String>,
    #[serde(rename = "Type")]
    pub kind: Option<String>,
    #[serde(rename = "VSwitchId")]
    pub vswitch_id: Option<String>,
    #[serde(rename = "VpcId")]
    pub vpc_id: Option<String>,
    #[serde(rename = "ZoneId")]
    pub zone_id: Option<String>,
    #[serde(rename = "MacAddress")]
    pub mac: Option<String>,
    #[serde(rename = "PrivateIpAddress")]
    pub private_ip: Option<String>,
    #[serde(rename = "InstanceId")]
    pub instance_id: Option<String>,
    #[serde(rename = "CreationTime")]
    pub creation_time: Option<String>,
    #[serde(rename = "PrivateIpSets")]
    pub private_ips: Option<PrivateIpSets>,
    #[serde(rename = "SecurityGroupIds")]
    pub security_groups: Option<SecurityGroupIds>,
    #[serde(rename = "Tags")]
    pub tags: Option<TagSet>,
}

/// `{"NetworkInterfaceSet": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct NetworkInterfaceSets {
    #[serde(rename = "NetworkInterfaceSet", default)]
    pub set: Vec<NetworkInterface>,
}

/// DescribeNetworkInterfaces answer.
#[derive(Debug, Deserialize)]
pub(crate) struct DescribeNetworkInterfacesResponse {
    #[serde(rename = "NetworkInterfaceSets")]
    pub sets: Option<NetworkInterfaceSets>,
    #[serde(rename = "NextToken")]
    pub next_token: Option<String>,
}

/// AssignPrivateIpAddresses answer.
#[derive(Debug, Deserialize)]
pub(crate) struct AssignPrivateIpAddressesResponse {
    #[serde(rename = "AssignedPrivateIpAddressesSet")]
    pub assigned: Option<AssignedSet>,
}

/// The addresses an assignment gave.
#[derive(Debug, Deserialize)]
pub(crate) struct AssignedSet {
    #[serde(rename = "PrivateIpSet")]
    pub ips: Option<AssignedIps>,
}

/// `{"PrivateIpAddress": [...]}`.
#[derive(Debug, Deserialize)]
pub(crate) struct AssignedIps {
    #[serde(rename = "PrivateIpAddress", default)]
    pub addresses: Vec<String>,
}

/// Answers of calls whose only content is the request id (any JSON object).
#[derive(Debug, Deserialize)]
pub(crate) struct Empty {}

/// One vSwitch.
#[derive(Debug, Deserialize)]
pub(crate) struct VSwitch {
    #[serde(rename = "VSwitchId")]
    pub id: Option<String>,
    #[serde(rename = "VpcId")]
    pub vpc_id: Option<String>,
    #[serde(rename = "ZoneId")]
    pub zone_id: Option<String>,
    #[serde(rename = "CidrBlock")]
    pub cidr: Option<String>,
    #[serde(rename = "AvailableIpAddressCount")]
    pub available: Option<u64>,
    #[serde(rename = "Tags")]
    pub tags: Option<TagSet>,
}

/// `{"VSwitch": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct VSwitches {
    #[serde(rename = "VSwitch", default)]
    pub set: Vec<VSwitch>,
}

/// DescribeVSwitches answer (one page).
#[derive(Debug, Deserialize)]
pub(crate) struct DescribeVSwitchesResponse {
    #[serde(rename = "VSwitches")]
    pub vswitches: Option<VSwitches>,
    #[serde(rename = "TotalCount")]
    pub total: Option<u64>,
}

/// One security group.
#[derive(Debug, Deserialize)]
pub(crate) struct SecurityGroupItem {
    #[serde(rename = "SecurityGroupId")]
    pub id: Option<String>,
    #[serde(rename = "SecurityGroupName", default)]
    pub name: Option<String>,
    #[serde(rename = "VpcId")]
    pub vpc_id: Option<String>,
    #[serde(rename = "Tags")]
    pub tags: Option<TagSet>,
}

/// `{"SecurityGroup": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct SecurityGroups {
    #[serde(rename = "SecurityGroup", default)]
    pub set: Vec<SecurityGroupItem>,
}

/// DescribeSecurityGroups answer (one page).
#[derive(Debug, Deserialize)]
pub(crate) struct DescribeSecurityGroupsResponse {
    #[serde(rename = "SecurityGroups")]
    pub groups: Option<SecurityGroups>,
    #[serde(rename = "TotalCount")]
    pub total: Option<u64>,
}

/// One instance type.
#[derive(Debug, Deserialize)]
pub(crate) struct InstanceTypeItem {
    #[serde(rename = "InstanceTypeId")]
    pub id: Option<String>,
    #[serde(rename = "EniQuantity")]
    pub eni_quantity: Option<u32>,
    #[serde(rename = "EniPrivateIpAddressQuantity")]
    pub eni_private_ip_quantity: Option<u32>,
}

/// `{"InstanceType": [...]}`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct InstanceTypes {
    #[serde(rename = "InstanceType", default)]
    pub set: Vec<InstanceTypeItem>,
}

/// DescribeInstanceTypes answer.
#[derive(Debug, Deserialize)]
pub(crate) struct DescribeInstanceTypesResponse {
    #[serde(rename = "InstanceTypes")]
    pub types: Option<InstanceTypes>,
}

fn required<'a>(value: &'a Option<String>, what: &str, of: &str) -> Result<&'a str, String> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{of}: missing {what}")),
    }
}

/// Parses a dotted-quad address, naming the field in the error.
pub(crate) fn parse_ip(text: &str, what: &str) -> Result<Ipv4Addr, String> {
    text.parse()
        .map_err(|_| format!("{what}: {text:?} is not an IPv4 address"))
}

fn eni_state(status: &str, attached: bool) -> EniState {
    match status {
        "Available" => EniState::Available,
        "Attaching" => EniState::Attaching,
        "InUse" => EniState::InUse,
        "Detaching" => EniState::Detaching,
        // Creating, Deleting, CreateFailed and states added later: what
        // matters to IPAM is whether an instance holds the interface.
        _ if attached => EniState::InUse,
        _ => EniState::Available,
    }
}

/// A parsed ENI with the facts the device index is derived from.
#[derive(Debug)]
pub(crate) struct ParsedEni {
    pub eni: Eni,
    pub primary: bool,
    pub creation_time: String,
}

impl NetworkInterface {
    /// Converts to an [`Eni`]; the device index is filled in later by
    /// [`assign_device_indices`], since ECS does not report it.
    pub(crate) fn parse(&self) -> Result<ParsedEni, String> {
        let id = required(&self.id, "NetworkInterfaceId", "network interface")?;
        let of = format!("network interface {id}");
        let subnet_id = required(&self.vswitch_id, "VSwitchId", &of)?;
        let vpc_id = required(&self.vpc_id, "VpcId", &of)?;
        let zone = required(&self.zone_id, "ZoneId", &of)?;
        let mac = required(&self.mac, "MacAddress", &of)?.to_ascii_lowercase();
        let status = self.status.as_deref().unwrap_or_default();

        let mut primary_ip = match self.private_ip.as_deref() {
            Some(ip) if !ip.is_empty() => Some(parse_ip(ip, &format!("{of} PrivateIpAddress"))?),
            _ => None,
        };
        let mut secondary_ips = Vec::new();
        for entry in self.private_ips.iter().flat_map(|s| s.set.iter()) {
            let text = required(&entry.address, "PrivateIpSet.PrivateIpAddress", &of)?;
            let ip = parse_ip(text, &format!("{of} PrivateIpSet"))?;
            if entry.primary {
                if primary_ip.is_some_and(|p| p != ip) {
                    return Err(format!("{of}: two different primary addresses"));
                }
                primary_ip = Some(ip);
            } else {
                secondary_ips.push(ip);
            }
        }
        let primary_ip = primary_ip.ok_or_else(|| format!("{of}: missing primary address"))?;
        secondary_ips.retain(|ip| *ip != primary_ip);

        let instance_id = self
            .instance_id
            .as_deref()
            .filter(|i| !i.is_empty())
            .map(str::to_owned);
        let state = eni_state(status, instance_id.is_some());
        let attachment = instance_id.map(|instance_id| crate::Attachment {
            // ECS has no attachment ids.
            id: String::new(),
            instance_id,
            device_index: 0,
        });
        let tags = match &self.tags {
            Some(t) => t.to_tags().map_err(|e| format!("{of}: {e}"))?,
            None => Tags::new(),
        };
        Ok(ParsedEni {
            eni: Eni {
                id: id.to_owned(),
                subnet_id: subnet_id.to_owned(),
                vpc_id: vpc_id.to_owned(),
                zone: zone.to_owned(),
                mac,
                primary_ip,
                secondary_ips,
                security_groups: self
                    .security_groups
                    .as_ref()
                    .map(|s| s.ids.clone())
                    .unwrap_or_default(),
                tags,
                state,
                attachment,
            },
            primary: self.kind.as_deref() == Some("Primary"),
            creation_time: self.creation_time.clone().unwrap_or_default(),
        })
    }
}

/// Fills in device indices, which ECS does not report: per instance, the
/// primary ENI is 0 and the secondary ENIs follow in creation order (ties by
/// id), so the numbering is stable between describes. Returns the ENIs.
pub(crate) fn assign_device_indices(mut parsed: Vec<ParsedEni>) -> Vec<Eni> {
    parsed.sort_by(|a, b| {
        let instance = |p: &ParsedEni| p.eni.attachment.as_ref().map(|a| a.instance_id.clone());
        instance(a)
            .cmp(&instance(b))
            .then(b.primary.cmp(&a.primary))
            .then(a.creation_time.cmp(&b.creation_time))
            .then(a.eni.id.cmp(&b.eni.id))
    });
    let mut last_instance: Option<String> = None;
    let mut next = 0u32;
    let mut out = Vec::with_capacity(parsed.len());
    for mut p in parsed {
        if let Some(att) = p.eni.attachment.as_mut() {
            if last_instance.as_deref() != Some(att.instance_id.as_str()) {
                last_instance = Some(att.instance_id.clone());
                // An instance whose primary ENI is not in the answer still
                // keeps index 0 for it.
                next = if p.primary { 0 } else { 1 };
            }
            att.device_index = next;
            next = next.saturating_add(1);
        }
        out.push(p.eni);
    }
    out
}

impl VSwitch {
    pub(crate) fn parse(&self) -> Result<Subnet, String> {
        let id = required(&self.id, "VSwitchId", "vSwitch")?;
        let of = format!("vSwitch {id}");
        let available = self
            .available
            .ok_or_else(|| format!("{of}: missing AvailableIpAddressCount"))?;
        Ok(Subnet {
            id: id.to_owned(),
            vpc_id: required(&self.vpc_id, "VpcId", &of)?.to_owned(),
            zone: required(&self.zone_id, "ZoneId", &of)?.to_owned(),
            cidr: required(&self.cidr, "CidrBlock", &of)?.to_owned(),
            available_ips: u32::try_from(available).unwrap_or(u32::MAX),
            tags: match &self.tags {
                Some(t) => t.to_tags().map_err(|e| format!("{of}: {e}"))?,
                None => Tags::new(),
            },
        })
    }
}

impl SecurityGroupItem {
    pub(crate) fn parse(&self) -> Result<SecurityGroup, String> {
        let id = required(&self.id, "SecurityGroupId", "security group")?;
        let of = format!("security group {id}");
        Ok(SecurityGroup {
            id: id.to_owned(),
            vpc_id: required(&self.vpc_id, "VpcId", &of)?.to_owned(),
            name: self.name.clone().unwrap_or_default(),
            tags: match &self.tags {
                Some(t) => t.to_tags().map_err(|e| format!("{of}: {e}"))?,
                None => Tags::new(),
            },
        })
    }
}

impl InstanceTypeItem {
    pub(crate) fn parse(&self) -> Result<InstanceLimits, String> {
        let id = required(&self.id, "InstanceTypeId", "instance type")?;
        let of = format!("instance type {id}");
        Ok(InstanceLimits {
            instance_type: id.to_owned(),
            max_enis: self
                .eni_quantity
                .ok_or_else(|| format!("{of}: missing EniQuantity"))?,
            ipv4_per_eni: self
                .eni_private_ip_quantity
                .ok_or_else(|| format!("{of}: missing EniPrivateIpAddressQuantity"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eni_json(id: &str, kind: &str, instance: &str, created: &str) -> NetworkInterface {
        let v = serde_json::json!({
            "NetworkInterfaceId": id, "Status": "InUse", "Type": kind,
            "VSwitchId": "vsw-1", "VpcId": "vpc-1", "ZoneId": "cn-hangzhou-h",
            "MacAddress": "00:16:3E:00:00:01", "PrivateIpAddress": "10.0.0.5",
            "InstanceId": instance, "CreationTime": created,
            "PrivateIpSets": {"PrivateIpSet": [
                {"PrivateIpAddress": "10.0.0.5", "Primary": true},
                {"PrivateIpAddress": "10.0.0.6", "Primary": false}
            ]},
            "SecurityGroupIds": {"SecurityGroupId": ["sg-1"]},
            "Tags": {"Tag": [{"TagKey": "k", "TagValue": "v"}]}
        });
        serde_json::from_value(v).expect("valid JSON shape")
    }

    #[test]
    fn parses_an_eni_with_primary_and_secondary_addresses() {
        let p = eni_json("eni-1", "Secondary", "i-1", "2026-01-01T00:00:00Z")
            .parse()
            .expect("valid ENI");
        assert_eq!(p.eni.primary_ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(p.eni.secondary_ips, vec![Ipv4Addr::new(10, 0, 0, 6)]);
        assert_eq!(p.eni.mac, "00:16:3e:00:00:01");
        assert_eq!(p.eni.tags.get("k").map(String::as_str), Some("v"));
        assert_eq!(p.eni.state, EniState::InUse);
    }

    #[test]
    fn numbers_devices_primary_first_then_by_creation_time() {
        let enis = assign_device_indices(vec![
            eni_json("eni-c", "Secondary", "i-1", "2026-01-03T00:00:00Z")
                .parse()
                .expect("valid ENI"),
            eni_json("eni-b", "Secondary", "i-1", "2026-01-02T00:00:00Z")
                .parse()
                .expect("valid ENI"),
            eni_json("eni-a", "Primary", "i-1", "2026-01-09T00:00:00Z")
                .parse()
                .expect("valid ENI"),
        ]);
        let order: Vec<_> = enis
            .iter()
            .map(|e| (e.id.as_str(), e.attachment.as_ref().map(|a| a.device_index)))
            .collect();
        assert_eq!(
            order,
            vec![("eni-a", Some(0)), ("eni-b", Some(1)), ("eni-c", Some(2))]
        );
    }

    #[test]
    fn a_bad_address_or_missing_field_is_an_error_not_a_panic() {
        let mut n = eni_json("eni-1", "Secondary", "", "");
        n.private_ip = Some("10.0.0.300".into());
        assert!(
            n.parse()
                .expect_err("must be rejected")
                .contains("not an IPv4 address")
        );
        let mut n = eni_json("eni-1", "Secondary", "", "");
        n.vpc_id = None;
        assert!(n.parse().expect_err("must be rejected").contains("VpcId"));
    }
}
