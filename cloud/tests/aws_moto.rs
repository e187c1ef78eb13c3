//! The AWS provider through the real aws-sdk-ec2 client: against
//! `moto_server` (PyPI `moto[server]`) for the EC2 behaviour, and against a
//! hand-written loopback EC2 for what moto does not do (throttling,
//! malformed answers, real paging, silence).
//!
//! Every test starts its own server on a free loopback port, so tests run in
//! parallel; the server dies with the test (`Drop`).

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, TcpListener as StdListener},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use sextant_cloud::{
    AssignIps, CreateEni, Eni, EniCloud, EniState, Error, PageRequest, Tags,
    aws::{AwsCloud, AwsConfig, StaticCredentials},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// An AMI id from moto's bundled image list (moto does not validate AMIs by
/// default, but a real one keeps the fixture honest).
const MOTO_AMI: &str = "ami-12c6146b";
const REGION: &str = "us-east-1";
const ZONE: &str = "us-east-1a";

// ---------------------------------------------------------------- moto ----

#[path = "support/moto.rs"]
mod moto;
use moto::Moto;

async fn cloud_at(url: &str, operation_timeout: Duration) -> AwsCloud {
    AwsCloud::new(AwsConfig {
        region: REGION.into(),
        endpoint_url: Some(url.into()),
        credentials: Some(StaticCredentials {
            access_key_id: "testing".into(),
            secret_access_key: "testing".into(),
        }),
        operation_timeout,
        connect_timeout: Duration::from_secs(2),
    })
    .await
    .expect("static keys need no environment")
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tag_spec(resource: ResourceType, key: &str, value: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(tag(key, value))
        .build()
}

/// A moto server with a VPC, a tagged subnet and security group, and one
/// running m5.large in the subnet, all made through the SDK.
struct Lab {
    _moto: Moto,
    cloud: AwsCloud,
    vpc: String,
    subnet: String,
    sg: String,
    instance: String,
}

impl Lab {
    async fn new() -> Result<Lab> {
        let moto = Moto::start(&[])?;
        let cloud = cloud_at(&moto.url, Duration::from_secs(20)).await;
        let c = cloud.client();
        let vpc = c
            .create_vpc()
            .cidr_block("10.0.0.0/16")
            .send()
            .await?
            .vpc()
            .and_then(|v| v.vpc_id())
            .context("CreateVpc: no id")?
            .to_owned();
        let subnet = create_subnet(&cloud, &vpc, "10.0.1.0/24").await?;
        let sg = c
            .create_security_group()
            .group_name("pods")
            .description("pod traffic")
            .vpc_id(&vpc)
            .tag_specifications(tag_spec(
                ResourceType::SecurityGroup,
                "sextant.io/pods",
                "true",
            ))
            .send()
            .await?
            .group_id()
            .context("CreateSecurityGroup: no id")?
            .to_owned();
        let run = c
            .run_instances()
            .image_id(MOTO_AMI)
            .instance_type(InstanceType::M5Large)
            .min_count(1)
            .max_count(1)
            .subnet_id(&subnet)
            .security_group_ids(&sg)
            .send()
            .await?;
        let instance = run
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .context("RunInstances: no id")?
            .to_owned();
        Ok(Lab {
            _moto: moto,
            cloud,
            vpc,
            subnet,
            sg,
            instance,
        })
    }

    fn create_request(&self, secondary_ips: u32) -> CreateEni {
        CreateEni {
            subnet_id: self.subnet.clone(),
            security_groups: vec![self.sg.clone()],
            tags: Tags::from([
                ("sextant.io/cluster".to_owned(), "test".to_owned()),
                ("sextant.io/node".to_owned(), "node-a".to_owned()),
            ]),
            secondary_ips,
            description: "sextant test".into(),
        }
    }

    /// The ENI as EC2 describes it now.
    async fn describe(&self, eni_id: &str) -> Result<Eni> {
        let mut token = None;
        loop {
            let page = self
                .cloud
                .list_enis(&self.vpc, PageRequest { token, size: 1000 })
                .await?;
            if let Some(eni) = page.items.into_iter().find(|e| e.id == eni_id) {
                return Ok(eni);
            }
            match page.next {
                Some(next) => token = Some(next),
                None => bail!("{eni_id} is not listed"),
            }
        }
    }
}

async fn create_subnet(cloud: &AwsCloud, vpc: &str, cidr: &str) -> Result<String> {
    Ok(cloud
        .client()
        .create_subnet()
        .vpc_id(vpc)
        .cidr_block(cidr)
        .availability_zone(ZONE)
        .tag_specifications(tag_spec(ResourceType::Subnet, "sextant.io/pods", "true"))
        .send()
        .await?
        .subnet()
        .and_then(|s| s.subnet_id())
        .context("CreateSubnet: no id")?
        .to_owned())
}

fn set(ips: &[Ipv4Addr]) -> BTreeSet<Ipv4Addr> {
    ips.iter().copied().collect()
}

// ------------------------------------------------------- moto: behaviour ----

#[tokio::test]
async fn created_eni_carries_subnet_groups_tags_and_secondary_ips() -> Result<()> {
    let lab = Lab::new().await?;
    let eni = lab.cloud.create_eni(&lab.create_request(3)).await?;
    ensure!(eni.id.starts_with("eni-"), "{eni:?}");
    assert_eq!(eni.subnet_id, lab.subnet);
    assert_eq!(eni.vpc_id, lab.vpc);
    assert_eq!(eni.zone, ZONE);
    assert_eq!(eni.security_groups, vec![lab.sg.clone()]);
    assert_eq!(eni.secondary_ips.len(), 3);
    assert!(!eni.secondary_ips.contains(&eni.primary_ip));
    assert_eq!(eni.tags, lab.create_request(3).tags);
    assert_eq!(eni.state, EniState::Available);
    assert_eq!(eni.attachment, None);
    assert_eq!(lab.describe(&eni.id).await?, eni);
    Ok(())
}

#[tokio::test]
async fn attached_eni_appears_in_instance_network_after_the_primary() -> Result<()> {
    let lab = Lab::new().await?;
    let before = lab.cloud.instance_network(&lab.instance).await?;
    assert_eq!(before.enis.len(), 1, "{before:?}");
    let eni = lab.cloud.create_eni(&lab.create_request(2)).await?;
    lab.cloud.attach_eni(&eni.id, &lab.instance, 1).await?;

    let net = lab.cloud.instance_network(&lab.instance).await?;
    assert_eq!(net.instance_id, lab.instance);
    let indices: Vec<_> = net
        .enis
        .iter()
        .map(|e| e.attachment.as_ref().map(|a| a.device_index))
        .collect();
    assert_eq!(indices, vec![Some(0), Some(1)]);
    assert_eq!(net.enis[0].id, before.enis[0].id);
    let ours = &net.enis[1];
    assert_eq!(ours.id, eni.id);
    assert_eq!(ours.state, EniState::InUse);
    assert_eq!(set(&ours.secondary_ips), set(&eni.secondary_ips));
    let attachment = ours.attachment.as_ref().context("no attachment")?;
    assert_eq!(attachment.instance_id, lab.instance);
    ensure!(attachment.id.starts_with("eni-attach-"), "{attachment:?}");
    Ok(())
}

#[tokio::test]
async fn assign_by_count_returns_only_the_new_addresses() -> Result<()> {
    let lab = Lab::new().await?;
    let eni = lab.cloud.create_eni(&lab.create_request(1)).await?;
    let new = lab.cloud.assign_ips(&eni.id, &AssignIps::Count(4)).await?;
    assert_eq!(new.len(), 4);
    let old = set(&eni.secondary_ips);
    ensure!(!new.contains(&eni.primary_ip), "{new:?} has the primary");
    ensure!(
        new.iter().all(|ip| !old.contains(ip)),
        "{new:?} repeats {old:?}"
    );

    let now = lab.describe(&eni.id).await?;
    let expected: BTreeSet<_> = old.union(&set(&new)).copied().collect();
    assert_eq!(set(&now.secondary_ips), expected);
    assert_eq!(
        lab.cloud.assign_ips(&eni.id, &AssignIps::Count(0)).await?,
        Vec::<Ipv4Addr>::new()
    );
    Ok(())
}

#[tokio::test]
async fn assign_specific_ips_with_reassignment_returns_exactly_those() -> Result<()> {
    let lab = Lab::new().await?;
    let from = lab.cloud.create_eni(&lab.create_request(2)).await?;
    let to = lab.cloud.create_eni(&lab.create_request(0)).await?;
    let moving = from.secondary_ips[0];
    let used: BTreeSet<_> = [from.primary_ip, to.primary_ip]
        .into_iter()
        .chain(from.secondary_ips.iter().copied())
        .collect();
    let fresh = (200..=250)
        .map(|n| Ipv4Addr::new(10, 0, 1, n))
        .find(|ip| !used.contains(ip))
        .context("no free address")?;

    let request = AssignIps::Specific {
        ips: vec![moving, fresh],
        allow_reassignment: true,
    };
    let assigned = lab.cloud.assign_ips(&to.id, &request).await?;
    assert_eq!(assigned, vec![moving, fresh]);
    let to_now = lab.describe(&to.id).await?;
    assert_eq!(set(&to_now.secondary_ips), set(&[moving, fresh]));
    // moto adds the address to the target but, unlike EC2, leaves it on the
    // source ENI too, so the source is not checked here.
    Ok(())
}

#[tokio::test]
async fn unassign_removes_only_the_given_addresses() -> Result<()> {
    let lab = Lab::new().await?;
    let eni = lab.cloud.create_eni(&lab.create_request(4)).await?;
    let (gone, kept) = eni.secondary_ips.split_at(2);
    lab.cloud.unassign_ips(&eni.id, gone).await?;
    let now = lab.describe(&eni.id).await?;
    assert_eq!(set(&now.secondary_ips), set(kept));
    assert_eq!(now.primary_ip, eni.primary_ip);
    lab.cloud.unassign_ips(&eni.id, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn detached_eni_is_available_and_deleted_eni_is_gone() -> Result<()> {
    let lab = Lab::new().await?;
    let eni = lab.cloud.create_eni(&lab.create_request(1)).await?;
    lab.cloud.attach_eni(&eni.id, &lab.instance, 1).await?;
    let attached = lab.describe(&eni.id).await?;

    lab.cloud.detach_eni(&attached).await?;
    let detached = lab.describe(&eni.id).await?;
    assert_eq!(detached.state, EniState::Available);
    assert_eq!(detached.attachment, None);
    let net = lab.cloud.instance_network(&lab.instance).await?;
    ensure!(net.enis.iter().all(|e| e.id != eni.id), "{net:?}");
    // Detaching what is no longer attached is refused before any call.
    assert!(matches!(
        lab.cloud.detach_eni(&detached).await,
        Err(Error::InvalidRequest { .. })
    ));

    lab.cloud.delete_eni(&eni.id).await?;
    ensure!(
        lab.describe(&eni.id).await.is_err(),
        "{} still listed",
        eni.id
    );
    assert!(matches!(
        lab.cloud.delete_eni(&eni.id).await,
        Err(Error::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn list_enis_returns_every_eni_of_the_vpc_and_no_other() -> Result<()> {
    let lab = Lab::new().await?;
    let mut ours = BTreeSet::from([lab.cloud.instance_network(&lab.instance).await?.enis[0]
        .id
        .clone()]);
    for _ in 0..12 {
        ours.insert(lab.cloud.create_eni(&lab.create_request(0)).await?.id);
    }
    // An ENI in another VPC must not show up.
    let other_vpc = lab
        .cloud
        .client()
        .create_vpc()
        .cidr_block("10.9.0.0/16")
        .send()
        .await?
        .vpc()
        .and_then(|v| v.vpc_id())
        .context("no vpc id")?
        .to_owned();
    let other_subnet = create_subnet(&lab.cloud, &other_vpc, "10.9.1.0/24").await?;
    let foreign = lab
        .cloud
        .create_eni(&CreateEni {
            subnet_id: other_subnet,
            security_groups: vec![],
            ..lab.create_request(0)
        })
        .await?;

    // moto ignores MaxResults and answers in one page; the paging itself is
    // covered against the loopback EC2 below.
    let mut seen = BTreeSet::new();
    let mut token = None;
    for _ in 0..100 {
        let page = lab
            .cloud
            .list_enis(&lab.vpc, PageRequest { token, size: 5 })
            .await?;
        for eni in page.items {
            assert_eq!(eni.vpc_id, lab.vpc);
            ensure!(seen.insert(eni.id.clone()), "{} listed twice", eni.id);
        }
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ours);
    ensure!(!seen.contains(&foreign.id));
    Ok(())
}

#[tokio::test]
async fn subnets_and_security_groups_of_the_vpc_carry_tags_and_free_counts() -> Result<()> {
    let lab = Lab::new().await?;
    let subnets = lab.cloud.subnets(&lab.vpc).await?;
    assert_eq!(subnets.len(), 1, "{subnets:?}");
    let s = &subnets[0];
    assert_eq!(
        (s.id.as_str(), s.vpc_id.as_str(), s.zone.as_str()),
        (lab.subnet.as_str(), lab.vpc.as_str(), ZONE)
    );
    assert_eq!(s.cidr, "10.0.1.0/24");
    // A /24 has 251 usable addresses on EC2; the instance holds one.
    ensure!(s.available_ips > 200 && s.available_ips <= 251, "{s:?}");
    assert_eq!(
        s.tags.get("sextant.io/pods").map(String::as_str),
        Some("true")
    );

    let groups = lab.cloud.security_groups(&lab.vpc).await?;
    let pods = groups
        .iter()
        .find(|g| g.id == lab.sg)
        .context("pods group missing")?;
    assert_eq!(pods.name, "pods");
    assert_eq!(pods.vpc_id, lab.vpc);
    assert_eq!(
        pods.tags.get("sextant.io/pods").map(String::as_str),
        Some("true")
    );
    ensure!(groups.iter().all(|g| g.vpc_id == lab.vpc), "{groups:?}");
    Ok(())
}

#[tokio::test]
async fn instance_limits_of_m5_large_are_3_enis_of_10_ipv4() -> Result<()> {
    let moto = Moto::start(&[])?;
    let cloud = cloud_at(&moto.url, Duration::from_secs(20)).await;
    let limits = cloud.instance_limits("m5.large").await?;
    assert_eq!(limits.instance_type, "m5.large");
    assert_eq!((limits.max_enis, limits.ipv4_per_eni), (3, 10));
    assert_eq!(limits.secondary_per_eni(), 9);
    Ok(())
}

// ---------------------------------------------------------- moto: errors ----

#[tokio::test]
async fn missing_eni_or_instance_is_not_found() -> Result<()> {
    let lab = Lab::new().await?;
    let ghost = "eni-0123456789abcdef0";
    let e = lab.cloud.delete_eni(ghost).await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    let e = lab.cloud.assign_ips(ghost, &AssignIps::Count(1)).await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    let e = lab.cloud.attach_eni(ghost, &lab.instance, 1).await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    let e = lab.cloud.instance_network("i-0123456789abcdef0").await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    let e = lab
        .cloud
        .create_eni(&CreateEni {
            subnet_id: "subnet-0123456789abcdef0".into(),
            ..lab.create_request(0)
        })
        .await;
    assert!(matches!(e, Err(Error::NotFound { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn unknown_instance_type_is_invalid_request() -> Result<()> {
    let moto = Moto::start(&[])?;
    let cloud = cloud_at(&moto.url, Duration::from_secs(20)).await;
    let e = cloud.instance_limits("m5.enormous").await;
    assert!(matches!(e, Err(Error::InvalidRequest { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn detaching_the_only_interface_is_invalid_request() -> Result<()> {
    let lab = Lab::new().await?;
    let net = lab.cloud.instance_network(&lab.instance).await?;
    let e = lab.cloud.detach_eni(&net.enis[0]).await;
    assert!(matches!(e, Err(Error::InvalidRequest { .. })), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn more_than_fifty_tags_is_limit_exceeded() -> Result<()> {
    let lab = Lab::new().await?;
    let tags: Tags = (0..51).map(|i| (format!("k{i}"), "v".to_owned())).collect();
    let e = lab
        .cloud
        .create_eni(&CreateEni {
            tags,
            ..lab.create_request(0)
        })
        .await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
    Ok(())
}

// ------------------------------------------------------ loopback EC2 ----

/// What the loopback EC2 does with one request (its form-encoded body).
enum Reply {
    /// Answer with this status and XML body.
    Http(u16, String),
    /// Read the request and never answer.
    Silent,
}

/// A tiny HTTP/1.1 server speaking just enough EC2 Query protocol: one
/// request per connection, every request body recorded.
struct FakeEc2 {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
    accept: JoinHandle<()>,
}

impl FakeEc2 {
    async fn start(respond: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Result<FakeEc2> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let log = requests.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let respond = respond.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let Some(body) = read_request(&mut stream).await else {
                        return;
                    };
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(body.clone());
                    match respond(&body) {
                        Reply::Http(status, xml) => {
                            let head = format!(
                                "HTTP/1.1 {status} X\r\nContent-Type: text/xml;charset=UTF-8\r\n\
                                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                                xml.len()
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(xml.as_bytes()).await;
                            let _ = stream.shutdown().await;
                        }
                        Reply::Silent => tokio::time::sleep(Duration::from_secs(30)).await,
                    }
                });
            }
        });
        Ok(FakeEc2 {
            url,
            requests,
            accept,
        })
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for FakeEc2 {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Reads one request and returns its body.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned())
}

fn ec2_error(code: &str, message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code>\
         <Message>{message}</Message></Error></Errors><RequestID>req-1</RequestID></Response>"
    )
}

fn eni_item(id: Option<&str>, ip: &str) -> String {
    let id = id
        .map(|id| format!("<networkInterfaceId>{id}</networkInterfaceId>"))
        .unwrap_or_default();
    format!(
        "<item>{id}<subnetId>subnet-1</subnetId><vpcId>vpc-1</vpcId>\
         <availabilityZone>us-east-1a</availabilityZone><macAddress>02:00:00:00:00:01</macAddress>\
         <privateIpAddress>{ip}</privateIpAddress><status>available</status>\
         <groupSet><item><groupId>sg-1</groupId><groupName>pods</groupName></item></groupSet>\
         <privateIpAddressesSet><item><privateIpAddress>{ip}</privateIpAddress><primary>true</primary></item>\
         </privateIpAddressesSet><tagSet/></item>"
    )
}

fn describe_enis(items: &[String], next: Option<&str>) -> String {
    let next = next
        .map(|t| format!("<nextToken>{t}</nextToken>"))
        .unwrap_or_default();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeNetworkInterfacesResponse \
         xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>req-1</requestId>\
         <networkInterfaceSet>{}</networkInterfaceSet>{next}</DescribeNetworkInterfacesResponse>",
        items.concat()
    )
}

fn action_of(body: &str) -> &str {
    body.split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or_default()
}

fn page() -> PageRequest {
    PageRequest {
        token: None,
        size: 100,
    }
}

#[tokio::test]
async fn list_enis_follows_next_token_across_pages_with_clamped_page_size() -> Result<()> {
    let ec2 = FakeEc2::start(|body| {
        let item = |n: u8| eni_item(Some(&format!("eni-{n}")), &format!("10.0.0.{n}"));
        let xml = if body.contains("NextToken=t3") {
            describe_enis(&[item(5)], None)
        } else if body.contains("NextToken=t2") {
            describe_enis(&[item(3), item(4)], Some("t3"))
        } else {
            describe_enis(&[item(1), item(2)], Some("t2"))
        };
        Reply::Http(200, xml)
    })
    .await?;
    let cloud = cloud_at(&ec2.url, Duration::from_secs(5)).await;

    let mut ids = Vec::new();
    let mut token = None;
    let mut pages = 0;
    loop {
        let page = cloud
            .list_enis("vpc-1", PageRequest { token, size: 2 })
            .await?;
        pages += 1;
        ids.extend(page.items.into_iter().map(|e| e.id));
        token = page.next;
        if token.is_none() || pages > 10 {
            break;
        }
    }
    assert_eq!(ids, ["eni-1", "eni-2", "eni-3", "eni-4", "eni-5"]);
    assert_eq!(pages, 3);
    let requests = ec2.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(action_of(r), "DescribeNetworkInterfaces");
        // Size 2 is below EC2's minimum of 5.
        ensure!(r.contains("MaxResults=5"), "{r}");
        ensure!(
            r.contains("Filter.1.Name=vpc-id") && r.contains("Filter.1.Value.1=vpc-1"),
            "{r}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn request_limit_exceeded_is_throttled_and_not_retried_inside() -> Result<()> {
    let ec2 = FakeEc2::start(|_| {
        Reply::Http(
            503,
            ec2_error("RequestLimitExceeded", "Request limit exceeded."),
        )
    })
    .await?;
    let cloud = cloud_at(&ec2.url, Duration::from_secs(5)).await;
    let e = cloud.assign_ips("eni-1", &AssignIps::Count(2)).await;
    assert!(
        matches!(
            e,
            Err(Error::Throttled {
                retry_after: None,
                ..
            })
        ),
        "{e:?}"
    );
    // Retries belong to the Cloud wrapper, not the provider.
    assert_eq!(ec2.requests().len(), 1);
    Ok(())
}

#[tokio::test]
async fn ok_answer_missing_eni_id_is_malformed_not_a_panic() -> Result<()> {
    let ec2 = FakeEc2::start(|body| {
        Reply::Http(
            200,
            match action_of(body) {
                "CreateNetworkInterface" => {
                    "<CreateNetworkInterfaceResponse><requestId>r</requestId>\
                     </CreateNetworkInterfaceResponse>"
                        .to_owned()
                }
                _ => describe_enis(&[eni_item(None, "10.0.0.1")], None),
            },
        )
    })
    .await?;
    let cloud = cloud_at(&ec2.url, Duration::from_secs(5)).await;
    for e in [
        cloud.list_enis("vpc-1", page()).await.err(),
        cloud.instance_network("i-1").await.err(),
        cloud
            .create_eni(&CreateEni {
                subnet_id: "subnet-1".into(),
                security_groups: vec![],
                tags: Tags::new(),
                secondary_ips: 0,
                description: String::new(),
            })
            .await
            .err(),
    ] {
        let e = e.context("a malformed answer was accepted")?;
        ensure!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        ensure!(e.to_string().contains("malformed response"), "{e}");
    }
    Ok(())
}

#[tokio::test]
async fn ok_answer_with_bad_address_or_garbage_body_is_unavailable() -> Result<()> {
    let ec2 = FakeEc2::start(|body| {
        Reply::Http(
            200,
            match action_of(body) {
                "DescribeNetworkInterfaces" => describe_enis(&[eni_item(Some("eni-1"), "10.0.0.300")], None),
                "AssignPrivateIpAddresses" => "<AssignPrivateIpAddressesResponse><networkInterfaceId>eni-1\
                     </networkInterfaceId><assignedPrivateIpAddressesSet/></AssignPrivateIpAddressesResponse>"
                    .to_owned(),
                "DescribeInstanceTypes" => "<DescribeInstanceTypesResponse><instanceTypeSet><item>\
                     <instanceType>m5.large</instanceType></item></instanceTypeSet></DescribeInstanceTypesResponse>"
                    .to_owned(),
                _ => "this is not XML <<<".to_owned(),
            },
        )
    })
    .await?;
    let cloud = cloud_at(&ec2.url, Duration::from_secs(5)).await;
    let cases = [
        ("10.0.0.300", cloud.list_enis("vpc-1", page()).await.err()),
        (
            "listed as assigned",
            cloud.assign_ips("eni-1", &AssignIps::Count(2)).await.err(),
        ),
        ("NetworkInfo", cloud.instance_limits("m5.large").await.err()),
        ("malformed response", cloud.subnets("vpc-1").await.err()),
    ];
    for (says, e) in cases {
        let e = e.with_context(|| format!("accepted an answer that should fail with {says:?}"))?;
        ensure!(matches!(e, Error::Unavailable { .. }), "{e:?}");
        let text = e.to_string();
        ensure!(
            text.contains("malformed response") && text.contains(says),
            "{text}"
        );
        eprintln!("{text}");
    }
    Ok(())
}

#[tokio::test]
async fn ec2_limit_and_subnet_exhaustion_codes_map_to_typed_errors() -> Result<()> {
    let ec2 = FakeEc2::start(|body| match action_of(body) {
        "AttachNetworkInterface" => Reply::Http(
            400,
            ec2_error(
                "AttachmentLimitExceeded",
                "Interface count 4 exceeds the limit for m5.large",
            ),
        ),
        "AssignPrivateIpAddresses" => Reply::Http(
            400,
            ec2_error(
                "InsufficientFreeAddressesInSubnet",
                "The specified subnet has no free addresses",
            ),
        ),
        "UnassignPrivateIpAddresses" => Reply::Http(
            400,
            ec2_error(
                "InvalidParameterValue",
                "Some of the specified addresses are not assigned",
            ),
        ),
        "DeleteNetworkInterface" => Reply::Http(
            400,
            ec2_error(
                "InvalidNetworkInterface.InUse",
                "Interface eni-1 is currently in use",
            ),
        ),
        _ => Reply::Http(
            500,
            ec2_error("InternalError", "An internal error has occurred"),
        ),
    })
    .await?;
    let cloud = cloud_at(&ec2.url, Duration::from_secs(5)).await;
    let e = cloud.attach_eni("eni-1", "i-1", 3).await;
    assert!(
        matches!(&e, Err(Error::LimitExceeded { message, .. }) if message.contains("AttachmentLimitExceeded")),
        "{e:?}"
    );
    let e = cloud.assign_ips("eni-1", &AssignIps::Count(1)).await;
    assert!(
        matches!(e, Err(Error::InsufficientAddresses { .. })),
        "{e:?}"
    );
    let e = cloud
        .unassign_ips("eni-1", &[Ipv4Addr::new(10, 0, 0, 9)])
        .await;
    assert!(matches!(e, Err(Error::InvalidRequest { .. })), "{e:?}");
    let e = cloud.delete_eni("eni-1").await;
    assert!(matches!(e, Err(Error::InvalidRequest { .. })), "{e:?}");
    let e = cloud.security_groups("vpc-1").await;
    let e = e.err().context("500 accepted")?;
    ensure!(
        matches!(e, Error::Unavailable { .. }) && e.is_transient(),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test]
async fn no_answer_within_operation_timeout_is_deadline_exceeded() -> Result<()> {
    let ec2 = FakeEc2::start(|_| Reply::Silent).await?;
    let timeout = Duration::from_millis(300);
    let cloud = cloud_at(&ec2.url, timeout).await;
    let e = cloud.instance_network("i-1").await;
    assert!(
        matches!(e, Err(Error::DeadlineExceeded { deadline, .. }) if deadline == timeout),
        "{e:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable() -> Result<()> {
    // A port nobody listens on: bound, then released.
    let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let cloud = cloud_at(&format!("http://127.0.0.1:{port}"), Duration::from_secs(5)).await;
    let e = cloud.subnets("vpc-1").await;
    assert!(
        matches!(
            e,
            Err(Error::Unavailable {
                source: Some(_),
                ..
            })
        ),
        "{e:?}"
    );
    Ok(())
}
