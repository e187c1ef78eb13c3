//! The Alibaba ECS provider against a loopback ECS stand-in
//! ([`support::ecs`]): every request's POP signature recomputed
//! independently, ECS-shaped answers, queued faults.

mod support;

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use anyhow::{Context, Result, bail, ensure};
use sextant_cloud::{
    AssignIps, CreateEni, Eni, EniCloud, EniState, Error, PageRequest, Tags,
    alibaba::{AlibabaCloud, AlibabaConfig, sign, string_to_sign},
};
use support::ecs::{
    BIG_VPC, Fault, KEY_ID, Params, REGION, SECRET, StandIn, VPC, ZONE, expected_signature,
};

fn actions(calls: &[Params]) -> Vec<&str> {
    calls.iter().map(|c| c["Action"].as_str()).collect()
}

fn create_request(subnet: &str, secondary_ips: u32) -> CreateEni {
    CreateEni {
        subnet_id: subnet.into(),
        security_groups: vec!["sg-pods".into(), "sg-default".into()],
        tags: Tags::from([
            ("sextant.io/cluster".to_owned(), "prod".to_owned()),
            ("sextant.io/node".to_owned(), "node 1*~".to_owned()),
        ]),
        secondary_ips,
        description: "sextant pod ENI".into(),
    }
}

async fn attached_eni(cloud: &AlibabaCloud, instance: &str, secondary_ips: u32) -> Result<Eni> {
    let eni = cloud
        .create_eni(&create_request("vsw-pods", secondary_ips))
        .await?;
    cloud.attach_eni(&eni.id, instance, 1).await?;
    let net = cloud.instance_network(instance).await?;
    net.enis
        .into_iter()
        .find(|e| e.id == eni.id)
        .context("attached ENI not described")
}

// ---------------------------------------------------------------------------
// Tests.

/// The example of the ECS API reference, "Request signatures", Example 1
/// (DescribeRegions with AccessKey testid/testsecret; AlibabaCloudDocs/ecs,
/// `intl.en-US/API Reference/Getting started/Request signatures.md`).
#[test]
fn signature_matches_the_documented_describe_regions_example() {
    let params: Params = [
        ("Timestamp", "2016-02-23T12:46:24Z"),
        ("Format", "XML"),
        ("AccessKeyId", "testid"),
        ("Action", "DescribeRegions"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
        ("Version", "2014-05-26"),
        ("SignatureVersion", "1.0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let documented_string_to_sign = "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions\
        %26Format%3DXML%26SignatureMethod%3DHMAC-SHA1\
        %26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0\
        %26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26";
    assert_eq!(string_to_sign("GET", &params), documented_string_to_sign);
    assert_eq!(
        sign("GET", &params, "testsecret"),
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
    // The stand-in's independent check agrees with the documentation too.
    assert_eq!(
        expected_signature("GET", &params, "testsecret"),
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
}

#[tokio::test]
async fn stand_in_rejects_a_request_signed_with_the_wrong_secret() -> Result<()> {
    let ecs = StandIn::start().await?;
    let config = AlibabaConfig::new(REGION, KEY_ID, "not-the-secret")
        .with_endpoint(&ecs.url)
        .with_timeout(Duration::from_secs(5));
    let cloud = AlibabaCloud::new(config)?;
    let e = cloud.subnets(VPC).await.expect_err("must be refused");
    ensure!(
        matches!(&e, Error::InvalidRequest { message, .. } if message.contains("SignatureDoesNotMatch")),
        "{e:?}"
    );
    ensure!(ecs.state().refused == vec!["SignatureDoesNotMatch".to_owned()]);
    ensure!(ecs.state().log.is_empty(), "nothing served");
    // The right secret passes the same check.
    ensure!(!ecs.client()?.subnets(VPC).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn sts_token_is_sent_and_covered_by_the_signature() -> Result<()> {
    let ecs = StandIn::start().await?;
    ecs.state().security_token = Some("sts/token+1".into());
    let e = ecs.client()?.subnets(VPC).await.expect_err("no token sent");
    ensure!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
    let cloud = AlibabaCloud::new(ecs.config().with_security_token("sts/token+1"))?;
    ensure!(cloud.subnets(VPC).await?.len() == 2);
    Ok(())
}

#[tokio::test]
async fn creates_an_eni_with_security_groups_tags_and_secondary_ips() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let mark = ecs.mark();
    let eni = cloud.create_eni(&create_request("vsw-pods", 49)).await?;

    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["CreateNetworkInterface"]);
    let c = &calls[0];
    ensure!(c["VSwitchId"] == "vsw-pods");
    ensure!(c["SecurityGroupIds.1"] == "sg-pods" && c["SecurityGroupIds.2"] == "sg-default");
    ensure!(c["Tag.1.Key"] == "sextant.io/cluster" && c["Tag.1.Value"] == "prod");
    ensure!(c["Tag.2.Key"] == "sextant.io/node" && c["Tag.2.Value"] == "node 1*~");
    ensure!(c["SecondaryPrivateIpAddressCount"] == "49");

    ensure!(eni.id.starts_with("eni-"));
    ensure!(eni.subnet_id == "vsw-pods" && eni.vpc_id == VPC && eni.zone == ZONE);
    ensure!(eni.secondary_ips.len() == 49);
    ensure!(!eni.secondary_ips.contains(&eni.primary_ip));
    ensure!(eni.mac == eni.mac.to_ascii_lowercase());
    ensure!(eni.state == EniState::Available && eni.attachment.is_none());
    ensure!(eni.security_groups == ["sg-pods", "sg-default"]);
    ensure!(eni.tags.get("sextant.io/node").map(String::as_str) == Some("node 1*~"));
    Ok(())
}

#[tokio::test]
async fn more_than_49_ips_at_creation_is_refused_without_a_call() -> Result<()> {
    let ecs = StandIn::start().await?;
    let mark = ecs.mark();
    let e = ecs
        .client()?
        .create_eni(&create_request("vsw-pods", 50))
        .await
        .expect_err("over the creation limit");
    ensure!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
    ensure!(ecs.calls_since(mark).is_empty());
    Ok(())
}

#[tokio::test]
async fn attaches_and_describes_an_instance_primary_first() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let first = cloud.create_eni(&create_request("vsw-pods", 2)).await?;
    let second = cloud.create_eni(&create_request("vsw-pods", 0)).await?;
    // Attach in reverse creation order: indices still follow creation.
    let mark = ecs.mark();
    cloud.attach_eni(&second.id, "i-node2", 2).await?;
    cloud.attach_eni(&first.id, "i-node2", 1).await?;
    let attach = ecs.calls_since(mark);
    ensure!(attach[0]["NetworkInterfaceId"] == second.id && attach[0]["InstanceId"] == "i-node2");
    ensure!(!attach[0].contains_key("DeviceIndex"));

    let mark = ecs.mark();
    let net = cloud.instance_network("i-node2").await?;
    let describe = ecs.calls_since(mark);
    ensure!(
        actions(&describe) == ["DescribeNetworkInterfaces"],
        "one scoped call"
    );
    ensure!(describe[0]["InstanceId"] == "i-node2");

    let got: Vec<(&str, u32, EniState)> = net
        .enis
        .iter()
        .map(|e| {
            (
                e.id.as_str(),
                e.attachment.as_ref().map_or(u32::MAX, |a| a.device_index),
                e.state,
            )
        })
        .collect();
    ensure!(
        got == [
            ("eni-primary2", 0, EniState::InUse),
            (first.id.as_str(), 1, EniState::InUse),
            (second.id.as_str(), 2, EniState::InUse),
        ],
        "{got:?}"
    );
    let described_first = &net.enis[1];
    ensure!(described_first.secondary_ips == first.secondary_ips);
    ensure!(
        described_first
            .attachment
            .as_ref()
            .is_some_and(|a| a.instance_id == "i-node2" && a.id.is_empty())
    );
    Ok(())
}

#[tokio::test]
async fn attaching_past_the_instance_types_eni_quantity_is_limit_exceeded() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    // ecs.g7.large takes 3 ENIs, the primary included.
    attached_eni(&cloud, "i-node1", 0).await?;
    attached_eni(&cloud, "i-node1", 0).await?;
    let extra = cloud.create_eni(&create_request("vsw-pods", 0)).await?;
    let e = cloud
        .attach_eni(&extra.id, "i-node1", 3)
        .await
        .expect_err("fourth ENI");
    ensure!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn assigns_a_count_of_secondary_ips() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let eni = attached_eni(&cloud, "i-node2", 1).await?;
    let mark = ecs.mark();
    let got = cloud.assign_ips(&eni.id, &AssignIps::Count(5)).await?;
    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["AssignPrivateIpAddresses"]);
    ensure!(calls[0]["SecondaryPrivateIpAddressCount"] == "5");
    ensure!(got.len() == 5);
    let now = cloud.instance_network("i-node2").await?;
    let described = now.enis.iter().find(|e| e.id == eni.id).context("eni")?;
    ensure!(described.secondary_ips.len() == 6);
    ensure!(got.iter().all(|ip| described.secondary_ips.contains(ip)));

    // ecs.g7.xlarge: 15 addresses per ENI, so 14 secondaries; 6 + 9 > 14.
    let e = cloud
        .assign_ips(&eni.id, &AssignIps::Count(9))
        .await
        .expect_err("over the per-ENI limit");
    ensure!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    // Nothing asked, nothing sent.
    let mark = ecs.mark();
    ensure!(
        cloud
            .assign_ips(&eni.id, &AssignIps::Count(0))
            .await?
            .is_empty()
    );
    ensure!(ecs.calls_since(mark).is_empty());
    Ok(())
}

#[tokio::test]
async fn assigns_specific_ips_moving_them_off_their_current_eni() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let from = attached_eni(&cloud, "i-node1", 0).await?;
    let to = attached_eni(&cloud, "i-node2", 0).await?;
    let fixed = Ipv4Addr::new(10, 0, 1, 150);
    let keep = Ipv4Addr::new(10, 0, 1, 151);
    let specific = |ips: Vec<Ipv4Addr>, allow_reassignment| AssignIps::Specific {
        ips,
        allow_reassignment,
    };
    ensure!(
        cloud
            .assign_ips(&from.id, &specific(vec![fixed, keep], false))
            .await?
            == [fixed, keep]
    );

    // Without reassignment the holder keeps it.
    let e = cloud
        .assign_ips(&to.id, &specific(vec![fixed], false))
        .await
        .expect_err("held elsewhere");
    ensure!(
        matches!(&e, Error::InvalidRequest { message, .. } if message.contains("InvalidIp.IpAssigned")),
        "{e:?}"
    );

    let mark = ecs.mark();
    ensure!(
        cloud
            .assign_ips(&to.id, &specific(vec![fixed], true))
            .await?
            == [fixed]
    );
    let calls = ecs.calls_since(mark);
    ensure!(
        actions(&calls)
            == [
                "DescribeNetworkInterfaces",
                "DescribeNetworkInterfaces",
                "UnassignPrivateIpAddresses",
                "AssignPrivateIpAddresses"
            ],
        "{:?}",
        actions(&calls)
    );
    ensure!(calls[0]["NetworkInterfaceId.1"] == to.id);
    ensure!(calls[1]["PrivateIpAddress.1"] == "10.0.1.150" && calls[1]["VSwitchId"] == "vsw-pods");
    ensure!(
        calls[2]["NetworkInterfaceId"] == from.id && calls[2]["PrivateIpAddress.1"] == "10.0.1.150"
    );
    ensure!(
        !calls[2].contains_key("PrivateIpAddress.2"),
        "only the moved address"
    );
    ensure!(
        calls[3]["NetworkInterfaceId"] == to.id && calls[3]["PrivateIpAddress.1"] == "10.0.1.150"
    );

    let node1 = cloud.instance_network("i-node1").await?;
    let node2 = cloud.instance_network("i-node2").await?;
    let on = |net: &sextant_cloud::InstanceNetwork, id: &str| {
        net.enis
            .iter()
            .find(|e| e.id == id)
            .map(|e| e.secondary_ips.clone())
            .unwrap_or_default()
    };
    ensure!(on(&node1, &from.id) == [keep]);
    ensure!(on(&node2, &to.id) == [fixed]);

    // Asking again for what the ENI holds is a success with no mutation.
    let mark = ecs.mark();
    ensure!(
        cloud
            .assign_ips(&to.id, &specific(vec![fixed], true))
            .await?
            == [fixed]
    );
    ensure!(
        actions(&ecs.calls_since(mark))
            .iter()
            .all(|a| *a == "DescribeNetworkInterfaces")
    );

    // A free address with reassignment allowed: no unassign, just assign.
    let mark = ecs.mark();
    let free = Ipv4Addr::new(10, 0, 1, 160);
    ensure!(
        cloud
            .assign_ips(&to.id, &specific(vec![free], true))
            .await?
            == [free]
    );
    ensure!(!actions(&ecs.calls_since(mark)).contains(&"UnassignPrivateIpAddresses"));
    Ok(())
}

#[tokio::test]
async fn unassigns_secondary_ips() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let eni = attached_eni(&cloud, "i-node2", 4).await?;
    let drop: Vec<Ipv4Addr> = eni.secondary_ips[1..3].to_vec();
    let mark = ecs.mark();
    cloud.unassign_ips(&eni.id, &drop).await?;
    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["UnassignPrivateIpAddresses"]);
    ensure!(calls[0]["PrivateIpAddress.1"] == drop[0].to_string());
    ensure!(calls[0]["PrivateIpAddress.2"] == drop[1].to_string());
    let net = cloud.instance_network("i-node2").await?;
    let left = &net
        .enis
        .iter()
        .find(|e| e.id == eni.id)
        .context("eni")?
        .secondary_ips;
    ensure!(left == &[eni.secondary_ips[0], eni.secondary_ips[3]]);
    // An address the ENI does not hold is the caller's mistake.
    let e = cloud
        .unassign_ips(&eni.id, &drop[..1])
        .await
        .expect_err("already gone");
    ensure!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn lists_a_vpc_page_by_page_with_next_token() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let mut created = BTreeSet::from(["eni-primary1".to_owned(), "eni-primary2".to_owned()]);
    for _ in 0..5 {
        created.insert(cloud.create_eni(&create_request("vsw-pods", 0)).await?.id);
    }
    for _ in 0..3 {
        created.insert(cloud.create_eni(&create_request("vsw-pods", 1)).await?.id);
    }

    let mark = ecs.mark();
    let mut seen = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = cloud
            .list_enis(
                VPC,
                PageRequest {
                    token: token.clone(),
                    size: 2,
                },
            )
            .await?;
        pages += 1;
        ensure!(page.items.len() <= 2);
        seen.extend(page.items.into_iter().map(|e| e.id));
        match page.next {
            Some(next) => token = Some(next),
            None => break,
        }
        ensure!(pages < 20, "paging does not end");
    }
    let calls = ecs.calls_since(mark);
    ensure!(
        calls
            .iter()
            .all(|c| c["VpcId"] == VPC && c["MaxResults"] == "2")
    );
    ensure!(!calls[0].contains_key("NextToken"));
    ensure!(calls[1..].iter().all(|c| c.contains_key("NextToken")));
    let seen_set: BTreeSet<String> = seen.iter().cloned().collect();
    ensure!(seen.len() == seen_set.len(), "no ENI twice: {seen:?}");
    ensure!(seen_set == created, "{seen_set:?} vs {created:?}");
    ensure!(pages == created.len().div_ceil(2));
    Ok(())
}

#[tokio::test]
async fn detaches_then_deletes_an_eni() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let eni = attached_eni(&cloud, "i-node1", 3).await?;
    let free_before = cloud
        .subnets(VPC)
        .await?
        .into_iter()
        .find(|s| s.id == "vsw-pods")
        .context("vsw-pods")?
        .available_ips;

    let e = cloud.delete_eni(&eni.id).await.expect_err("still attached");
    ensure!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");

    let mark = ecs.mark();
    cloud.detach_eni(&eni).await?;
    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["DetachNetworkInterface"]);
    ensure!(calls[0]["InstanceId"] == "i-node1" && calls[0]["NetworkInterfaceId"] == eni.id);
    ensure!(cloud.instance_network("i-node1").await?.enis.len() == 1);

    cloud.delete_eni(&eni.id).await?;
    let free_after = cloud
        .subnets(VPC)
        .await?
        .into_iter()
        .find(|s| s.id == "vsw-pods")
        .context("vsw-pods")?
        .available_ips;
    ensure!(
        free_after == free_before + 4,
        "{free_before} -> {free_after}"
    );

    let e = cloud.delete_eni(&eni.id).await.expect_err("gone");
    ensure!(matches!(e, Error::NotFound { .. }), "{e:?}");
    // Detaching what is not attached is refused before any call.
    let mark = ecs.mark();
    let mut loose = eni.clone();
    loose.attachment = None;
    ensure!(matches!(
        cloud.detach_eni(&loose).await,
        Err(Error::InvalidRequest { .. })
    ));
    ensure!(ecs.calls_since(mark).is_empty());
    Ok(())
}

#[tokio::test]
async fn primary_eni_cannot_be_detached() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let net = cloud.instance_network("i-node1").await?;
    let e = cloud.detach_eni(&net.enis[0]).await.expect_err("primary");
    ensure!(matches!(e, Error::InvalidRequest { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn parses_vswitches_with_zone_free_addresses_and_tags() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let subnets = cloud.subnets(VPC).await?;
    ensure!(subnets.len() == 2, "only this VPC's: {subnets:?}");
    let pods = subnets
        .iter()
        .find(|s| s.id == "vsw-pods")
        .context("vsw-pods")?;
    ensure!(pods.vpc_id == VPC && pods.zone == ZONE && pods.cidr == "10.0.1.0/24");
    // 200 addresses, two primaries of the seeded instances taken.
    ensure!(pods.available_ips == 198, "{}", pods.available_ips);
    ensure!(pods.tags.get("sextant.io/pods").map(String::as_str) == Some("true"));
    ensure!(pods.tags.get("team").map(String::as_str) == Some("net"));

    // 55 vSwitches take two pages of 50.
    let mark = ecs.mark();
    let big = cloud.subnets(BIG_VPC).await?;
    ensure!(big.len() == 55);
    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["DescribeVSwitches", "DescribeVSwitches"]);
    ensure!(calls[1]["PageNumber"] == "2" && calls[1]["PageSize"] == "50");
    Ok(())
}

#[tokio::test]
async fn full_vswitch_gives_insufficient_addresses() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    // vsw-tiny has three addresses: a primary and two secondaries fit.
    let eni = cloud.create_eni(&create_request("vsw-tiny", 2)).await?;
    ensure!(
        cloud
            .subnets(VPC)
            .await?
            .iter()
            .any(|s| s.id == "vsw-tiny" && s.available_ips == 0)
    );
    let e = cloud
        .create_eni(&create_request("vsw-tiny", 0))
        .await
        .expect_err("full");
    ensure!(matches!(e, Error::InsufficientAddresses { .. }), "{e:?}");
    cloud.unassign_ips(&eni.id, &eni.secondary_ips[..1]).await?;
    let e = cloud
        .assign_ips(&eni.id, &AssignIps::Count(2))
        .await
        .expect_err("one free, two asked");
    ensure!(matches!(e, Error::InsufficientAddresses { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn parses_security_groups_of_the_vpc() -> Result<()> {
    let ecs = StandIn::start().await?;
    let groups = ecs.client()?.security_groups(VPC).await?;
    let ids: Vec<&str> = groups.iter().map(|g| g.id.as_str()).collect();
    ensure!(ids == ["sg-pods", "sg-default"], "{ids:?}");
    ensure!(groups[0].name == "pods" && groups[0].vpc_id == VPC);
    ensure!(groups[0].tags.get("sextant.io/pods").map(String::as_str) == Some("true"));
    Ok(())
}

/// Figures published in the ECS documentation, "General purpose instance
/// families", g7 (AlibabaCloudDocs/ecs, `intl.en-US/Instance/Instance type
/// families/General purpose instance families.md`): ecs.g7.large has 3 ENIs
/// of 6 private IPv4 addresses, ecs.g7.xlarge 4 ENIs of 15.
#[tokio::test]
async fn reads_published_eni_limits_of_g7_large_and_xlarge() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let mark = ecs.mark();
    let large = cloud.instance_limits("ecs.g7.large").await?;
    ensure!(ecs.calls_since(mark)[0]["InstanceTypes.1"] == "ecs.g7.large");
    ensure!(large.max_enis == 3 && large.ipv4_per_eni == 6 && large.secondary_per_eni() == 5);
    let xlarge = cloud.instance_limits("ecs.g7.xlarge").await?;
    ensure!(xlarge.max_enis == 4 && xlarge.ipv4_per_eni == 15 && xlarge.secondary_per_eni() == 14);
    let e = cloud
        .instance_limits("ecs.nope.large")
        .await
        .expect_err("unknown type");
    ensure!(matches!(e, Error::NotFound { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn throttling_user_maps_to_throttled_without_a_retry_hint() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    ecs.inject(Fault::Throttle);
    let e = cloud
        .instance_network("i-node1")
        .await
        .expect_err("throttled");
    ensure!(
        matches!(
            e,
            Error::Throttled {
                retry_after: None,
                action: sextant_cloud::Action::DescribeInstanceNetwork
            }
        ),
        "{e:?}"
    );
    ensure!(e.is_transient());
    // The window passes: the next call is served.
    ensure!(cloud.instance_network("i-node1").await?.enis.len() == 1);
    Ok(())
}

#[tokio::test]
async fn garbage_answers_are_typed_unavailable_errors() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;

    ecs.inject(Fault::Garbage);
    let e = cloud
        .list_enis(VPC, PageRequest::default())
        .await
        .expect_err("HTML is not JSON");
    ensure!(
        matches!(&e, Error::Unavailable { message, .. } if message.contains("malformed")),
        "{e:?}"
    );

    ecs.inject(Fault::GarbageError);
    let e = cloud.subnets(VPC).await.expect_err("502 HTML");
    ensure!(
        matches!(&e, Error::Unavailable { message, .. } if message.contains("502")),
        "{e:?}"
    );

    ecs.inject(Fault::Unavailable);
    let e = cloud.security_groups(VPC).await.expect_err("503");
    ensure!(matches!(e, Error::Unavailable { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn missing_fields_and_bad_addresses_are_malformed_errors() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;

    ecs.inject(Fault::MissingFields);
    let e = cloud
        .instance_network("i-node1")
        .await
        .expect_err("half an ENI");
    ensure!(
        matches!(&e, Error::Unavailable { message, .. } if message.contains("malformed") && message.contains("VpcId")),
        "{e:?}"
    );

    ecs.inject(Fault::BadIp);
    let e = cloud
        .list_enis(VPC, PageRequest::default())
        .await
        .expect_err("10.0.1.999");
    ensure!(
        matches!(&e, Error::Unavailable { message, .. } if message.contains("10.0.1.999")),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_eni_or_instance_is_not_found() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = ecs.client()?;
    let e = cloud
        .assign_ips("eni-missing", &AssignIps::Count(1))
        .await
        .expect_err("no such ENI");
    ensure!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let eni = cloud.create_eni(&create_request("vsw-pods", 0)).await?;
    let e = cloud
        .attach_eni(&eni.id, "i-missing", 1)
        .await
        .expect_err("no such instance");
    ensure!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = cloud
        .create_eni(&create_request("vsw-missing", 0))
        .await
        .expect_err("no such vSwitch");
    ensure!(matches!(e, Error::NotFound { .. }), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn a_stalled_answer_is_a_deadline_exceeded() -> Result<()> {
    let ecs = StandIn::start().await?;
    let cloud = AlibabaCloud::new(ecs.config().with_timeout(Duration::from_millis(200)))?;
    ecs.inject(Fault::Stall(Duration::from_secs(3)));
    match cloud.subnets(VPC).await {
        Err(Error::DeadlineExceeded { deadline, .. }) => {
            ensure!(deadline == Duration::from_millis(200));
        }
        other => bail!("expected a deadline error, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() -> Result<()> {
    // Bind, learn the port, close: nothing listens there any more.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?
        .port();
    let config = AlibabaConfig::new(REGION, KEY_ID, SECRET)
        .with_endpoint(format!("http://127.0.0.1:{port}"))
        .with_timeout(Duration::from_secs(2));
    let e = AlibabaCloud::new(config)?
        .delete_eni("eni-x")
        .await
        .expect_err("nobody home");
    ensure!(
        matches!(
            e,
            Error::Unavailable {
                source: Some(_),
                ..
            }
        ),
        "{e:?}"
    );
    Ok(())
}

/// Issue 14, defect 6: through the `Cloud` wrapper, a create or count
/// assign that ECS answered with a 503 is sent again under the same
/// `ClientToken`, so ECS can answer the repeat with what the first made.
#[tokio::test]
async fn retries_of_one_create_or_count_assign_carry_the_same_client_token() -> Result<()> {
    use sextant_cloud::{Cloud, CloudConfig, CloudMetrics};
    use std::sync::Arc;

    let ecs = StandIn::start().await?;
    let cloud = Cloud::new(
        Arc::new(ecs.client()?),
        CloudConfig {
            seed: Some(3),
            ..CloudConfig::default()
        },
        CloudMetrics::default(),
    );
    let token_of = |c: &Params| c.get("ClientToken").cloned().unwrap_or_default();

    let mark = ecs.mark();
    ecs.inject(Fault::Unavailable);
    let eni = cloud.create_eni(&create_request("vsw-pods", 2)).await?;
    let calls = ecs.calls_since(mark);
    ensure!(
        actions(&calls) == ["CreateNetworkInterface", "CreateNetworkInterface"],
        "{:?}",
        actions(&calls)
    );
    let first = token_of(&calls[0]);
    ensure!(!first.is_empty(), "no ClientToken sent: {:?}", calls[0]);
    ensure!(token_of(&calls[1]) == first, "a retry with another token");

    cloud.attach_eni(&eni.id, "i-node2", 1).await?;
    let mark = ecs.mark();
    ecs.inject(Fault::Unavailable);
    cloud.assign_ips(&eni.id, &AssignIps::Count(3)).await?;
    let calls = ecs.calls_since(mark);
    ensure!(actions(&calls) == ["AssignPrivateIpAddresses", "AssignPrivateIpAddresses"]);
    let token = token_of(&calls[0]);
    ensure!(!token.is_empty() && token != first, "{calls:?}");
    ensure!(token_of(&calls[1]) == token);

    // The next intent gets a token of its own.
    let mark = ecs.mark();
    cloud.create_eni(&create_request("vsw-pods", 1)).await?;
    let calls = ecs.calls_since(mark);
    ensure!(token_of(&calls[0]) != first);
    Ok(())
}
