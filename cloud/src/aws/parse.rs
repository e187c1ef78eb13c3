//! EC2 response shapes into the crate's plain types. Every field Sextant
//! relies on is checked here: a missing id or an address that does not parse
//! is an [`Error::malformed`], never a panic or a silently empty value.

use std::net::Ipv4Addr;

use aws_sdk_ec2::types::{
    AttachmentStatus, InstanceTypeInfo, NetworkInterface, NetworkInterfaceStatus, Tag,
};

use crate::{
    Action, Attachment, Eni, EniState, Error, InstanceLimits, Result, SecurityGroup, Subnet, Tags,
};

/// A field the answer must carry.
fn required<'a>(action: Action, what: &str, value: Option<&'a str>) -> Result<&'a str> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| Error::malformed(action, format!("no {what}")))
}

/// An IPv4 address the answer must carry.
pub(super) fn ipv4(action: Action, what: &str, value: Option<&str>) -> Result<Ipv4Addr> {
    let text = required(action, what, value)?;
    text.parse()
        .map_err(|_| Error::malformed(action, format!("{what} {text:?} is not an IPv4 address")))
}

/// A count the answer must carry, as a non-negative number.
fn count(action: Action, what: &str, value: Option<i32>) -> Result<u32> {
    let n = value.ok_or_else(|| Error::malformed(action, format!("no {what}")))?;
    u32::try_from(n).map_err(|_| Error::malformed(action, format!("{what} is negative ({n})")))
}

/// Tags; a tag without a key is damaged data, a missing value is empty.
pub(super) fn tags(action: Action, set: &[Tag]) -> Result<Tags> {
    set.iter()
        .map(|t| {
            let key = required(action, "tag key", t.key())?;
            Ok((key.to_owned(), t.value().unwrap_or_default().to_owned()))
        })
        .collect()
}

/// One network interface.
pub(super) fn eni(action: Action, ni: &NetworkInterface) -> Result<Eni> {
    let id = required(action, "NetworkInterfaceId", ni.network_interface_id())?;
    let what = |field: &str| format!("{field} of {id}");
    let primary_ip = ipv4(action, &what("PrivateIpAddress"), ni.private_ip_address())?;
    let mut secondary_ips = Vec::new();
    for addr in ni.private_ip_addresses() {
        let ip = ipv4(
            action,
            &what("PrivateIpAddresses"),
            addr.private_ip_address(),
        )?;
        if addr.primary() != Some(true) && ip != primary_ip {
            secondary_ips.push(ip);
        }
    }
    let security_groups = ni
        .groups()
        .iter()
        .map(|g| required(action, &what("GroupId"), g.group_id()).map(str::to_owned))
        .collect::<Result<Vec<_>>>()?;
    let attachment = attachment(action, id, ni)?;
    let state = match ni.status().map(NetworkInterfaceStatus::as_str) {
        Some("available") => EniState::Available,
        Some("attaching") => EniState::Attaching,
        Some("detaching") => EniState::Detaching,
        Some("in-use" | "associated") => EniState::InUse,
        // No status or one this SDK does not know: the attachment tells.
        _ if attachment.is_some() => EniState::InUse,
        _ => EniState::Available,
    };
    Ok(Eni {
        id: id.to_owned(),
        subnet_id: required(action, &what("SubnetId"), ni.subnet_id())?.to_owned(),
        vpc_id: required(action, &what("VpcId"), ni.vpc_id())?.to_owned(),
        zone: required(action, &what("AvailabilityZone"), ni.availability_zone())?.to_owned(),
        mac: required(action, &what("MacAddress"), ni.mac_address())?.to_ascii_lowercase(),
        primary_ip,
        secondary_ips,
        security_groups,
        tags: tags(action, ni.tag_set())?,
        state,
        attachment,
    })
}

/// The instance attachment of an interface. Interfaces attached to an AWS
/// service rather than an instance (load balancers, NAT gateways) carry no
/// instance id: they have no [`Attachment`], though they are in use.
fn attachment(action: Action, id: &str, ni: &NetworkInterface) -> Result<Option<Attachment>> {
    let Some(a) = ni.attachment() else {
        return Ok(None);
    };
    if matches!(a.status(), Some(AttachmentStatus::Detached)) {
        return Ok(None);
    }
    let Some(instance_id) = a.instance_id().filter(|i| !i.is_empty()) else {
        return Ok(None);
    };
    Ok(Some(Attachment {
        id: required(action, &format!("AttachmentId of {id}"), a.attachment_id())?.to_owned(),
        instance_id: instance_id.to_owned(),
        device_index: count(action, &format!("DeviceIndex of {id}"), a.device_index())?,
    }))
}

/// One subnet; `vpc_id` is the VPC the describe was filtered by.
pub(super) fn subnet(
    action: Action,
    vpc_id: &str,
    s: &aws_sdk_ec2::types::Subnet,
) -> Result<Subnet> {
    let id = required(action, "SubnetId", s.subnet_id())?;
    let what = |field: &str| format!("{field} of {id}");
    Ok(Subnet {
        id: id.to_owned(),
        vpc_id: s.vpc_id().unwrap_or(vpc_id).to_owned(),
        zone: required(action, &what("AvailabilityZone"), s.availability_zone())?.to_owned(),
        cidr: required(action, &what("CidrBlock"), s.cidr_block())?.to_owned(),
        available_ips: count(
            action,
            &what("AvailableIpAddressCount"),
            s.available_ip_address_count(),
        )?,
        tags: tags(action, s.tags())?,
    })
}

/// One security group; `vpc_id` is the VPC the describe was filtered by.
pub(super) fn security_group(
    action: Action,
    vpc_id: &str,
    g: &aws_sdk_ec2::types::SecurityGroup,
) -> Result<SecurityGroup> {
    let id = required(action, "GroupId", g.group_id())?;
    Ok(SecurityGroup {
        id: id.to_owned(),
        vpc_id: g.vpc_id().unwrap_or(vpc_id).to_owned(),
        name: g.group_name().unwrap_or_default().to_owned(),
        tags: tags(action, g.tags())?,
    })
}

/// ENI limits from an instance type's network info.
pub(super) fn instance_limits(
    action: Action,
    instance_type: &str,
    info: &InstanceTypeInfo,
) -> Result<InstanceLimits> {
    let what = |field: &str| format!("{field} of {instance_type}");
    let net = info
        .network_info()
        .ok_or_else(|| Error::malformed(action, what("NetworkInfo")))?;
    Ok(InstanceLimits {
        instance_type: instance_type.to_owned(),
        max_enis: count(
            action,
            &what("MaximumNetworkInterfaces"),
            net.maximum_network_interfaces(),
        )?,
        ipv4_per_eni: count(
            action,
            &what("Ipv4AddressesPerInterface"),
            net.ipv4_addresses_per_interface(),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::types::{
        GroupIdentifier, NetworkInterfaceAttachment, NetworkInterfacePrivateIpAddress,
    };

    use super::*;

    const A: Action = Action::ListEnis;

    fn mk_ni() -> aws_sdk_ec2::types::builders::NetworkInterfaceBuilder {
        NetworkInterface::builder()
            .network_interface_id("eni-1")
            .subnet_id("subnet-1")
            .vpc_id("vpc-1")
            .availability_zone("us-east-1a")
            .mac_address("0A:00:00:00:00:01")
            .private_ip_address("10.0.0.5")
            .private_ip_addresses(
                NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address("10.0.0.5")
                    .primary(true)
                    .build(),
            )
            .private_ip_addresses(
                NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address("10.0.0.6")
                    .primary(false)
                    .build(),
            )
            .groups(GroupIdentifier::builder().group_id("sg-1").build())
            .tag_set(Tag::builder().key("k").value("v").build())
            .status(NetworkInterfaceStatus::InUse)
            .attachment(
                NetworkInterfaceAttachment::builder()
                    .attachment_id("eni-attach-1")
                    .instance_id("i-1")
                    .device_index(1)
                    .status(AttachmentStatus::Attached)
                    .build(),
            )
    }

    #[test]
    fn parses_a_complete_interface() -> Result<()> {
        let eni = eni(A, &mk_ni().build())?;
        assert_eq!(eni.id, "eni-1");
        assert_eq!(eni.mac, "0a:00:00:00:00:01");
        assert_eq!(eni.primary_ip, Ipv4Addr::new(10, 0, 0, 5));
        assert_eq!(eni.secondary_ips, vec![Ipv4Addr::new(10, 0, 0, 6)]);
        assert_eq!(eni.security_groups, vec!["sg-1".to_owned()]);
        assert_eq!(eni.tags.get("k").map(String::as_str), Some("v"));
        assert_eq!(eni.state, EniState::InUse);
        assert_eq!(
            eni.attachment,
            Some(Attachment {
                id: "eni-attach-1".into(),
                instance_id: "i-1".into(),
                device_index: 1
            })
        );
        Ok(())
    }

    #[test]
    fn missing_id_or_bad_address_is_malformed_not_a_panic() {
        let no_id = mk_ni().set_network_interface_id(None).build();
        assert!(matches!(eni(A, &no_id), Err(Error::Unavailable { .. })));
        let bad_ip = mk_ni().private_ip_address("10.0.0.999").build();
        let err = eni(A, &bad_ip)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("malformed response"), "{err}");
        let no_index = mk_ni()
            .attachment(
                NetworkInterfaceAttachment::builder()
                    .attachment_id("eni-attach-1")
                    .instance_id("i-1")
                    .build(),
            )
            .build();
        assert!(eni(A, &no_index).is_err());
    }

    #[test]
    fn service_attachment_without_instance_is_in_use_without_attachment() -> Result<()> {
        let ni = mk_ni()
            .attachment(
                NetworkInterfaceAttachment::builder()
                    .attachment_id("ela-attach-1")
                    .instance_owner_id("amazon-elb")
                    .device_index(1)
                    .build(),
            )
            .build();
        let eni = eni(A, &ni)?;
        assert_eq!(eni.attachment, None);
        assert_eq!(eni.state, EniState::InUse);
        Ok(())
    }
}
