//! The stand-in's VPC: vSwitches handing out addresses of a /24 from host
//! `.10` on, security groups, instances of published ECS types, ENIs; and
//! the state behind the server (faults queued, verified requests, nonces).

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    net::Ipv4Addr,
    time::Duration,
};

use serde_json::{Value, json};

use super::{BIG_VPC, Params, VPC, ZONE, api::tags_json};

#[derive(Clone, Debug)]
pub struct FakeEni {
    pub id: String,
    pub vswitch: String,
    pub vpc: String,
    pub zone: String,
    pub mac: String,
    pub primary: Ipv4Addr,
    pub secondaries: Vec<Ipv4Addr>,
    pub security_groups: Vec<String>,
    pub tags: Vec<(String, String)>,
    pub instance: Option<String>,
    pub is_primary: bool,
    pub created: String,
}

pub struct FakeVSwitch {
    pub id: String,
    pub vpc: String,
    pub zone: String,
    /// First three octets of a /24.
    pub net: [u8; 3],
    /// Host octets handed out from, in order.
    pub first_host: u8,
    pub capacity: u8,
    pub used: BTreeSet<u8>,
    pub tags: Vec<(String, String)>,
}

impl FakeVSwitch {
    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", self.net[0], self.net[1], self.net[2])
    }
    pub fn hosts(&self) -> impl Iterator<Item = u8> + '_ {
        (0..self.capacity).map(|i| self.first_host.saturating_add(i))
    }
    pub fn available(&self) -> usize {
        self.hosts().filter(|h| !self.used.contains(h)).count()
    }
    pub fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host)
    }
    pub fn host_of(&self, ip: Ipv4Addr) -> Option<u8> {
        let o = ip.octets();
        (o[..3] == self.net && self.hosts().any(|h| h == o[3])).then_some(o[3])
    }
    pub fn take(&mut self, n: usize) -> Option<Vec<Ipv4Addr>> {
        let free: Vec<u8> = self
            .hosts()
            .filter(|h| !self.used.contains(h))
            .take(n)
            .collect();
        if free.len() < n {
            return None;
        }
        self.used.extend(free.iter().copied());
        Some(free.into_iter().map(|h| self.ip(h)).collect())
    }
    pub fn release(&mut self, ip: Ipv4Addr) {
        if let Some(h) = self.host_of(ip) {
            self.used.remove(&h);
        }
    }
}

pub struct FakeGroup {
    pub id: String,
    pub name: String,
    pub vpc: String,
    pub tags: Vec<(String, String)>,
}

/// Something the stand-in answers instead of serving the next call.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// 400 `Throttling.User`.
    Throttle,
    /// 200 with an HTML body.
    Garbage,
    /// 502 with an HTML body.
    GarbageError,
    /// 503 `ServiceUnavailable`.
    Unavailable,
    /// 200 with an ENI lacking VpcId, ZoneId and MacAddress.
    MissingFields,
    /// 200 with an ENI whose address is not an address.
    BadIp,
    /// Answers after this long.
    Stall(Duration),
}

/// Keys an STS handed out, which ECS accepts until they expire.
pub struct StsKey {
    pub secret: String,
    pub security_token: String,
    pub expires: jiff::Timestamp,
}

pub struct State {
    pub secret: String,
    pub security_token: Option<String>,
    /// STS keys by AccessKeyId (RRSA tests).
    pub sts_keys: BTreeMap<String, StsKey>,
    pub enis: BTreeMap<String, FakeEni>,
    pub vswitches: Vec<FakeVSwitch>,
    pub security_groups: Vec<FakeGroup>,
    pub instances: BTreeMap<String, (String, String)>,
    pub instance_types: Vec<(String, usize, usize)>,
    pub faults: VecDeque<Fault>,
    /// Verified requests, in order.
    pub log: Vec<Params>,
    /// Codes of requests refused before dispatch.
    pub refused: Vec<String>,
    pub nonces: HashSet<String>,
    pub seq: u32,
}

impl State {
    pub fn new(secret: &str) -> Self {
        let t = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut s = State {
            secret: secret.to_owned(),
            security_token: None,
            sts_keys: BTreeMap::new(),
            enis: BTreeMap::new(),
            vswitches: vec![
                FakeVSwitch {
                    id: "vsw-pods".into(),
                    vpc: VPC.into(),
                    zone: ZONE.into(),
                    net: [10, 0, 1],
                    first_host: 10,
                    capacity: 200,
                    used: BTreeSet::new(),
                    tags: vec![t("sextant.io/pods", "true"), t("team", "net")],
                },
                FakeVSwitch {
                    id: "vsw-tiny".into(),
                    vpc: VPC.into(),
                    zone: ZONE.into(),
                    net: [10, 0, 2],
                    first_host: 10,
                    capacity: 3,
                    used: BTreeSet::new(),
                    tags: vec![],
                },
                FakeVSwitch {
                    id: "vsw-elsewhere".into(),
                    vpc: "vpc-other".into(),
                    zone: ZONE.into(),
                    net: [172, 16, 0],
                    first_host: 10,
                    capacity: 10,
                    used: BTreeSet::new(),
                    tags: vec![],
                },
            ],
            security_groups: vec![
                FakeGroup {
                    id: "sg-pods".into(),
                    name: "pods".into(),
                    vpc: VPC.into(),
                    tags: vec![t("sextant.io/pods", "true")],
                },
                FakeGroup {
                    id: "sg-default".into(),
                    name: "default".into(),
                    vpc: VPC.into(),
                    tags: vec![],
                },
                FakeGroup {
                    id: "sg-other".into(),
                    name: "other".into(),
                    vpc: "vpc-other".into(),
                    tags: vec![],
                },
            ],
            instances: BTreeMap::from([
                ("i-node1".into(), ("ecs.g7.large".into(), ZONE.into())),
                ("i-node2".into(), ("ecs.g7.xlarge".into(), ZONE.into())),
            ]),
            // Published figures (ENIs, private IPv4 addresses per ENI), from
            // the ECS docs' "General purpose instance families", g7.
            instance_types: vec![
                ("ecs.g7.large".into(), 3, 6),
                ("ecs.g7.xlarge".into(), 4, 15),
            ],
            faults: VecDeque::new(),
            log: Vec::new(),
            refused: Vec::new(),
            nonces: HashSet::new(),
            seq: 0,
        };
        for n in 0..55u8 {
            s.vswitches.push(FakeVSwitch {
                id: format!("vsw-big-{n:02}"),
                vpc: BIG_VPC.into(),
                zone: ZONE.into(),
                net: [10, 1, n],
                first_host: 10,
                capacity: 100,
                used: BTreeSet::new(),
                tags: vec![],
            });
        }
        for (instance, eni) in [("i-node1", "eni-primary1"), ("i-node2", "eni-primary2")] {
            s.make_eni(
                eni,
                "vsw-pods",
                Some(instance),
                true,
                0,
                &["sg-default".into()],
                &[],
            )
            .expect("seed addresses");
        }
        s
    }

    #[allow(clippy::too_many_arguments)]
    pub fn make_eni(
        &mut self,
        id: &str,
        vswitch: &str,
        instance: Option<&str>,
        is_primary: bool,
        secondaries: usize,
        security_groups: &[String],
        tags: &[(String, String)],
    ) -> Option<FakeEni> {
        self.seq += 1;
        let seq = self.seq;
        let vsw = self.vswitches.iter_mut().find(|v| v.id == vswitch)?;
        let ips = vsw.take(secondaries + 1)?;
        let eni = FakeEni {
            id: id.to_owned(),
            vswitch: vswitch.to_owned(),
            vpc: vsw.vpc.clone(),
            zone: vsw.zone.clone(),
            mac: format!("00:16:3E:5E:{:02X}:{:02X}", seq / 256, seq % 256),
            primary: ips[0],
            secondaries: ips[1..].to_vec(),
            security_groups: security_groups.to_vec(),
            tags: tags.to_vec(),
            instance: instance.map(str::to_owned),
            is_primary,
            created: format!("2026-05-01T00:{:02}:{:02}Z", seq / 60, seq % 60),
        };
        self.enis.insert(id.to_owned(), eni.clone());
        Some(eni)
    }

    pub fn eni_json(e: &FakeEni) -> Value {
        let mut ips = vec![
            json!({"PrivateIpAddress": e.primary.to_string(), "Primary": true, "AssociatedPublicIp": {}}),
        ];
        ips.extend(e.secondaries.iter().map(|ip| {
            json!({"PrivateIpAddress": ip.to_string(), "Primary": false, "AssociatedPublicIp": {}})
        }));
        json!({
            "NetworkInterfaceId": e.id,
            "Status": if e.instance.is_some() { "InUse" } else { "Available" },
            "Type": if e.is_primary { "Primary" } else { "Secondary" },
            "VSwitchId": e.vswitch,
            "VpcId": e.vpc,
            "ZoneId": e.zone,
            "MacAddress": e.mac,
            "PrivateIpAddress": e.primary.to_string(),
            "InstanceId": e.instance.clone().unwrap_or_default(),
            "CreationTime": e.created,
            "Description": "",
            "NetworkInterfaceName": "",
            "OwnerId": "1234567890",
            "ResourceGroupId": "rg-acfm",
            "ServiceManaged": false,
            "AssociatedPublicIp": {},
            "Ipv6Sets": {"Ipv6Set": []},
            "PrivateIpSets": {"PrivateIpSet": ips},
            "SecurityGroupIds": {"SecurityGroupId": e.security_groups},
            "Tags": tags_json(&e.tags, "TagKey", "TagValue"),
        })
    }

    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<&FakeEni> {
        self.enis
            .values()
            .find(|e| e.primary == ip || e.secondaries.contains(&ip))
    }

    pub fn vswitch_mut(&mut self, id: &str) -> Option<&mut FakeVSwitch> {
        self.vswitches.iter_mut().find(|v| v.id == id)
    }
}
