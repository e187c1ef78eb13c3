//! The Alibaba ECS provider against a loopback ECS stand-in.
//!
//! The stand-in is a small HTTP/1.1 server on 127.0.0.1 that recomputes the
//! POP signature of every request with its own canonicalization code (not the
//! library's) and answers `SignatureDoesNotMatch` when it differs, as ECS
//! does. It keeps a small VPC in memory (vSwitches with address pools,
//! security groups, instances of published types, ENIs) and answers each call
//! with ECS-shaped JSON (API 2014-05-26, `Format=JSON`), NextToken paging
//! included. Faults can be queued: `Throttling.User`, garbage bodies,
//! answers with missing fields or bad addresses, 5xx, stalls.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet, VecDeque},
    net::Ipv4Addr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sextant_cloud::{
    AssignIps, CreateEni, Eni, EniCloud, EniState, Error, PageRequest, Tags,
    alibaba::{AlibabaCloud, AlibabaConfig, sign, string_to_sign},
};
use sha1::Sha1;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

const KEY_ID: &str = "LTAI5tSextantTest";
// Characters that the encoding rules treat specially, to catch mistakes.
const SECRET: &str = "s3cr3t/+*~ key";
const REGION: &str = "cn-hangzhou";
const ZONE: &str = "cn-hangzhou-h";
const VPC: &str = "vpc-sextant";
const BIG_VPC: &str = "vpc-big";

type Params = BTreeMap<String, String>;

// ---------------------------------------------------------------------------
// The stand-in's own signature check: written from the documented algorithm,
// independent of `sextant_cloud::alibaba`.

fn pop_escape(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn pop_unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn expected_signature(method: &str, params: &Params, secret: &str) -> String {
    let canonical = params
        .iter()
        .filter(|(k, _)| k.as_str() != "Signature")
        .map(|(k, v)| format!("{}={}", pop_escape(k), pop_escape(v)))
        .collect::<Vec<_>>()
        .join("&");
    let to_sign = format!("{method}&{}&{}", pop_escape("/"), pop_escape(&canonical));
    let mut mac = Hmac::<Sha1>::new_from_slice(format!("{secret}&").as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------
// The stand-in's VPC.

#[derive(Clone, Debug)]
struct FakeEni {
    id: String,
    vswitch: String,
    vpc: String,
    zone: String,
    mac: String,
    primary: Ipv4Addr,
    secondaries: Vec<Ipv4Addr>,
    security_groups: Vec<String>,
    tags: Vec<(String, String)>,
    instance: Option<String>,
    is_primary: bool,
    created: String,
}

struct FakeVSwitch {
    id: String,
    vpc: String,
    zone: String,
    /// First three octets of a /24.
    net: [u8; 3],
    /// Host octets handed out from, in order.
    first_host: u8,
    capacity: u8,
    used: BTreeSet<u8>,
    tags: Vec<(String, String)>,
}

impl FakeVSwitch {
    fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", self.net[0], self.net[1], self.net[2])
    }
    fn hosts(&self) -> impl Iterator<Item = u8> + '_ {
        (0..self.capacity).map(|i| self.first_host.saturating_add(i))
    }
    fn available(&self) -> usize {
        self.hosts().filter(|h| !self.used.contains(h)).count()
    }
    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], host)
    }
    fn host_of(&self, ip: Ipv4Addr) -> Option<u8> {
        let o = ip.octets();
        (o[..3] == self.net && self.hosts().any(|h| h == o[3])).then_some(o[3])
    }
    fn take(&mut self, n: usize) -> Option<Vec<Ipv4Addr>> {
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
    fn release(&mut self, ip: Ipv4Addr) {
        if let Some(h) = self.host_of(ip) {
            self.used.remove(&h);
        }
    }
}

struct FakeGroup {
    id: String,
    name: String,
    vpc: String,
    tags: Vec<(String, String)>,
}

/// Something the stand-in answers instead of serving the next call.
#[derive(Clone, Copy, Debug)]
enum Fault {
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

struct State {
    secret: String,
    security_token: Option<String>,
    enis: BTreeMap<String, FakeEni>,
    vswitches: Vec<FakeVSwitch>,
    security_groups: Vec<FakeGroup>,
    instances: BTreeMap<String, (String, String)>,
    instance_types: Vec<(String, usize, usize)>,
    faults: VecDeque<Fault>,
    /// Verified requests, in order.
    log: Vec<Params>,
    /// Codes of requests refused before dispatch.
    refused: Vec<String>,
    nonces: HashSet<String>,
    seq: u32,
}

struct Answer {
    status: u16,
    body: String,
    delay: Option<Duration>,
}

fn ok(mut body: Value, seq: u32) -> Answer {
    if let Value::Object(m) = &mut body {
        m.insert("RequestId".into(), json!(format!("REQ-{seq:08}")));
    }
    Answer {
        status: 200,
        body: body.to_string(),
        delay: None,
    }
}

fn err(status: u16, code: &str, message: &str) -> Answer {
    Answer {
        status,
        body: json!({
            "Code": code,
            "Message": message,
            "RequestId": "REQ-ERROR",
            "HostId": "ecs.cn-hangzhou.aliyuncs.com",
            "Recommend": "https://api.aliyun.com/troubleshoot"
        })
        .to_string(),
        delay: None,
    }
}

fn tags_json(tags: &[(String, String)], key: &str, value: &str) -> Value {
    json!({"Tag": tags.iter().map(|(k, v)| json!({key: k, value: v})).collect::<Vec<_>>()})
}

fn indexed(params: &Params, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|n| params.get(&format!("{prefix}.{n}")).cloned())
        .collect()
}

fn page_token(offset: usize) -> String {
    format!("AAAAAdDWBF2{offset:08x}")
}

fn parse_token(token: &str) -> Option<usize> {
    usize::from_str_radix(token.strip_prefix("AAAAAdDWBF2")?, 16).ok()
}

impl State {
    fn new(secret: &str) -> Self {
        let t = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        let mut s = State {
            secret: secret.to_owned(),
            security_token: None,
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
    fn make_eni(
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

    fn eni_json(e: &FakeEni) -> Value {
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

    fn holder_of(&self, ip: Ipv4Addr) -> Option<&FakeEni> {
        self.enis
            .values()
            .find(|e| e.primary == ip || e.secondaries.contains(&ip))
    }

    fn vswitch_mut(&mut self, id: &str) -> Option<&mut FakeVSwitch> {
        self.vswitches.iter_mut().find(|v| v.id == id)
    }

    /// Verifies one request and answers it.
    fn handle(&mut self, method: &str, query: &str) -> Answer {
        let mut params = Params::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let (Some(k), Some(v)) = (pop_unescape(k), pop_unescape(v)) else {
                return self.refuse(err(400, "InvalidParameter", "bad percent-encoding"));
            };
            if params.insert(k.clone(), v).is_some() {
                return self.refuse(err(400, "InvalidParameter", &format!("{k} twice")));
            }
        }
        for required in [
            "Action",
            "Version",
            "Format",
            "AccessKeyId",
            "SignatureMethod",
            "SignatureVersion",
            "SignatureNonce",
            "Timestamp",
            "Signature",
            "RegionId",
        ] {
            if !params.contains_key(required) {
                return self.refuse(err(
                    400,
                    "MissingParameter",
                    &format!("The input parameter \"{required}\" that is mandatory for processing this request is not supplied."),
                ));
            }
        }
        let p = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
        if p("AccessKeyId") != KEY_ID {
            return self.refuse(err(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        }
        if p("SignatureMethod") != "HMAC-SHA1" || p("SignatureVersion") != "1.0" {
            return self.refuse(err(400, "InvalidParameter", "unsupported signature method"));
        }
        let expected = expected_signature(method, &params, &self.secret);
        if p("Signature") != expected {
            return self.refuse(err(
                400,
                "SignatureDoesNotMatch",
                "Specified signature is not matched with our calculation.",
            ));
        }
        if !self.nonces.insert(p("SignatureNonce").to_owned()) {
            return self.refuse(err(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        let fresh = p("Timestamp")
            .parse::<jiff::Timestamp>()
            .ok()
            .filter(|_| p("Timestamp").len() == 20 && p("Timestamp").ends_with('Z'))
            .map(|t| jiff::Timestamp::now().duration_since(t).as_secs().abs() < 15 * 60);
        if fresh != Some(true) {
            return self.refuse(err(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        if self.security_token.as_deref() != params.get("SecurityToken").map(String::as_str) {
            return self.refuse(err(
                400,
                "InvalidSecurityToken.Mismatch",
                "Specified SecurityToken mismatch.",
            ));
        }
        if p("Version") != "2014-05-26" || p("Format") != "JSON" || p("RegionId") != REGION {
            return self.refuse(err(400, "InvalidParameter", "version, format or region"));
        }
        self.log.push(params.clone());
        self.seq += 1;

        if let Some(fault) = self.faults.pop_front() {
            return self.fault(fault);
        }
        let answer = match p("Action") {
            "DescribeNetworkInterfaces" => self.describe_network_interfaces(&params),
            "CreateNetworkInterface" => self.create_network_interface(&params),
            "AttachNetworkInterface" => self.attach_network_interface(&params),
            "AssignPrivateIpAddresses" => self.assign_private_ip_addresses(&params),
            "UnassignPrivateIpAddresses" => self.unassign_private_ip_addresses(&params),
            "DetachNetworkInterface" => self.detach_network_interface(&params),
            "DeleteNetworkInterface" => self.delete_network_interface(&params),
            "DescribeVSwitches" => self.describe_vswitches(&params),
            "DescribeSecurityGroups" => self.describe_security_groups(&params),
            "DescribeInstanceTypes" => self.describe_instance_types(&params),
            other => Err(err(
                404,
                "InvalidAction.NotFound",
                &format!("Specified api {other} is not found"),
            )),
        };
        answer.unwrap_or_else(|e| e)
    }

    fn refuse(&mut self, answer: Answer) -> Answer {
        if let Ok(v) = serde_json::from_str::<Value>(&answer.body) {
            self.refused
                .push(v["Code"].as_str().unwrap_or_default().to_owned());
        }
        answer
    }

    fn fault(&mut self, fault: Fault) -> Answer {
        let seq = self.seq;
        match fault {
            Fault::Throttle => err(
                400,
                "Throttling.User",
                "Request was denied due to user flow control.",
            ),
            Fault::Garbage => Answer {
                status: 200,
                body: "<html><body>Tengine</body></html>".into(),
                delay: None,
            },
            Fault::GarbageError => Answer {
                status: 502,
                body: "<html><body>502 Bad Gateway</body></html>".into(),
                delay: None,
            },
            Fault::Unavailable => err(
                503,
                "ServiceUnavailable",
                "The request has failed due to a temporary failure of the server.",
            ),
            Fault::MissingFields => ok(
                json!({"NetworkInterfaceSets": {"NetworkInterfaceSet": [
                    {"NetworkInterfaceId": "eni-half", "Status": "InUse", "VSwitchId": "vsw-pods",
                     "PrivateIpAddress": "10.0.1.77", "InstanceId": "i-node1"}
                ]}, "NextToken": ""}),
                seq,
            ),
            Fault::BadIp => {
                let mut e = Self::eni_json(&self.enis["eni-primary1"]);
                e["PrivateIpAddress"] = json!("10.0.1.999");
                e["PrivateIpSets"] =
                    json!({"PrivateIpSet": [{"PrivateIpAddress": "10.0.1.999", "Primary": true}]});
                ok(
                    json!({"NetworkInterfaceSets": {"NetworkInterfaceSet": [e]}, "NextToken": ""}),
                    seq,
                )
            }
            Fault::Stall(d) => {
                let mut a = ok(json!({}), seq);
                a.delay = Some(d);
                a
            }
        }
    }

    fn eni_param(&self, params: &Params) -> Result<FakeEni, Answer> {
        let id = params
            .get("NetworkInterfaceId")
            .ok_or_else(|| err(400, "MissingParameter", "NetworkInterfaceId"))?;
        self.enis.get(id).cloned().ok_or_else(|| {
            err(
                404,
                "InvalidEniId.NotFound",
                &format!("Specified network interface {id} does not exist."),
            )
        })
    }

    fn describe_network_interfaces(&mut self, params: &Params) -> Result<Answer, Answer> {
        let ids = indexed(params, "NetworkInterfaceId");
        let ips: Vec<Ipv4Addr> = indexed(params, "PrivateIpAddress")
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let matching: Vec<&FakeEni> = self
            .enis
            .values()
            .filter(|e| {
                params
                    .get("InstanceId")
                    .is_none_or(|i| e.instance.as_ref() == Some(i))
            })
            .filter(|e| params.get("VpcId").is_none_or(|v| &e.vpc == v))
            .filter(|e| params.get("VSwitchId").is_none_or(|v| &e.vswitch == v))
            .filter(|e| ids.is_empty() || ids.contains(&e.id))
            .filter(|e| {
                ips.is_empty()
                    || ips
                        .iter()
                        .any(|ip| e.primary == *ip || e.secondaries.contains(ip))
            })
            .collect();
        let size: usize = match params.get("MaxResults") {
            None => 10,
            Some(m) => match m.parse() {
                Ok(n @ 1..=500) => n,
                _ => return Err(err(400, "InvalidParameter", "MaxResults must be 1 to 500")),
            },
        };
        let offset = match params.get("NextToken") {
            None => 0,
            Some(t) => parse_token(t)
                .ok_or_else(|| err(400, "InvalidParameter.NextToken", "bad NextToken"))?,
        };
        let end = (offset + size).min(matching.len());
        let items: Vec<Value> = matching
            .get(offset..end)
            .unwrap_or_default()
            .iter()
            .map(|e| Self::eni_json(e))
            .collect();
        let next = if end < matching.len() {
            page_token(end)
        } else {
            String::new()
        };
        Ok(ok(
            json!({
                "NetworkInterfaceSets": {"NetworkInterfaceSet": items},
                "NextToken": next,
                "TotalCount": matching.len(),
                "PageSize": size,
                "PageNumber": 1,
            }),
            self.seq,
        ))
    }

    fn create_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
        let vsw = params
            .get("VSwitchId")
            .ok_or_else(|| err(400, "MissingParameter", "VSwitchId"))?
            .clone();
        let vpc = self
            .vswitches
            .iter()
            .find(|v| v.id == vsw)
            .map(|v| v.vpc.clone())
            .ok_or_else(|| {
                err(
                    404,
                    "InvalidVSwitchId.NotFound",
                    "Specified virtual switch does not exist.",
                )
            })?;
        let groups = indexed(params, "SecurityGroupIds");
        if groups.is_empty() {
            return Err(err(400, "MissingParameter", "SecurityGroupIds"));
        }
        for g in &groups {
            if !self
                .security_groups
                .iter()
                .any(|sg| &sg.id == g && sg.vpc == vpc)
            {
                return Err(err(
                    404,
                    "InvalidSecurityGroupId.NotFound",
                    "The specified SecurityGroupId does not exist.",
                ));
            }
        }
        let mut tags = Vec::new();
        for n in 1..=20 {
            match (
                params.get(&format!("Tag.{n}.Key")),
                params.get(&format!("Tag.{n}.Value")),
            ) {
                (Some(k), v) => tags.push((k.clone(), v.cloned().unwrap_or_default())),
                (None, _) => break,
            }
        }
        let count: usize = match params.get("SecondaryPrivateIpAddressCount") {
            None => 0,
            Some(c) => match c.parse() {
                Ok(n @ 0..=49) => n,
                _ => {
                    return Err(err(
                        400,
                        "InvalidParameter",
                        "SecondaryPrivateIpAddressCount",
                    ));
                }
            },
        };
        let id = format!("eni-bp1{:016x}", self.seq);
        let eni = self
            .make_eni(&id, &vsw, None, false, count, &groups, &tags)
            .ok_or_else(|| {
                err(
                    403,
                    "InvalidVSwitchId.IpNotEnough",
                    "The specified VSwitch has not enough IpAddress.",
                )
            })?;
        let mut body = Self::eni_json(&eni);
        if let Value::Object(m) = &mut body {
            m.remove("InstanceId");
            m.remove("CreationTime");
        }
        Ok(ok(body, self.seq))
    }

    fn attach_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
        let eni = self.eni_param(params)?;
        let instance = params
            .get("InstanceId")
            .ok_or_else(|| err(400, "MissingParameter", "InstanceId"))?;
        let (itype, zone) = self.instances.get(instance).cloned().ok_or_else(|| {
            err(
                404,
                "InvalidInstanceId.NotFound",
                "The specified InstanceId does not exist",
            )
        })?;
        if eni.instance.is_some() {
            return Err(err(
                403,
                "InvalidOperation.InvalidEniState",
                "The operation is not allowed in the current ENI state.",
            ));
        }
        if zone != eni.zone {
            return Err(err(
                403,
                "InvalidOperation.AvailabilityZoneMismatch",
                "zone mismatch",
            ));
        }
        let max = self
            .instance_types
            .iter()
            .find(|t| t.0 == itype)
            .map_or(0, |t| t.1);
        let attached = self
            .enis
            .values()
            .filter(|e| e.instance.as_deref() == Some(instance.as_str()))
            .count();
        if attached >= max {
            return Err(err(
                403,
                "EniPerInstanceLimitExceeded",
                "The maximum number of network interfaces attached to the instance is exceeded.",
            ));
        }
        if let Some(e) = self.enis.get_mut(&eni.id) {
            e.instance = Some(instance.clone());
        }
        Ok(ok(json!({}), self.seq))
    }

    fn assign_private_ip_addresses(&mut self, params: &Params) -> Result<Answer, Answer> {
        let eni = self.eni_param(params)?;
        let wanted = indexed(params, "PrivateIpAddress");
        let count = params.get("SecondaryPrivateIpAddressCount");
        let n = match (count, wanted.is_empty()) {
            (Some(_), false) => {
                return Err(err(
                    400,
                    "InvalidParameter.Conflict",
                    "PrivateIpAddress and SecondaryPrivateIpAddressCount",
                ));
            }
            (None, true) => return Err(err(400, "MissingParameter", "PrivateIpAddress")),
            (Some(c), true) => c
                .parse::<usize>()
                .map_err(|_| err(400, "InvalidParameter", "SecondaryPrivateIpAddressCount"))?,
            (None, false) => wanted.len(),
        };
        let limit = match &eni.instance {
            Some(i) => {
                let itype = &self.instances[i].0;
                self.instance_types
                    .iter()
                    .find(|t| &t.0 == itype)
                    .map_or(0, |t| t.2.saturating_sub(1))
            }
            None => 10,
        };
        if eni.secondaries.len() + n > limit {
            return Err(err(
                403,
                "MaxEniPrivateIpsCountExceeded",
                &format!("The ENI can have at most {limit} secondary private IPs."),
            ));
        }
        let assigned: Vec<Ipv4Addr> = if wanted.is_empty() {
            let vsw = self
                .vswitch_mut(&eni.vswitch)
                .ok_or_else(|| err(500, "InternalError", "lost vSwitch"))?;
            vsw.take(n).ok_or_else(|| {
                err(
                    403,
                    "InvalidVSwitchId.IpNotEnough",
                    "The specified VSwitch has not enough IpAddress.",
                )
            })?
        } else {
            let mut ips = Vec::new();
            for w in &wanted {
                let ip: Ipv4Addr = w
                    .parse()
                    .map_err(|_| err(403, "InvalidVSwitchId.IpInvalid", "bad address"))?;
                if let Some(holder) = self.holder_of(ip) {
                    return Err(err(
                        403,
                        "InvalidIp.IpAssigned",
                        &format!("The IP {ip} is already assigned to {}.", holder.id),
                    ));
                }
                ips.push(ip);
            }
            let vsw = self
                .vswitch_mut(&eni.vswitch)
                .ok_or_else(|| err(500, "InternalError", "lost vSwitch"))?;
            let hosts: Option<Vec<u8>> = ips.iter().map(|ip| vsw.host_of(*ip)).collect();
            let hosts = hosts.ok_or_else(|| {
                err(
                    403,
                    "InvalidVSwitchId.IpInvalid",
                    "The address is not in the vSwitch.",
                )
            })?;
            vsw.used.extend(hosts);
            ips
        };
        if let Some(e) = self.enis.get_mut(&eni.id) {
            e.secondaries.extend(assigned.iter().copied());
        }
        Ok(ok(
            json!({"AssignedPrivateIpAddressesSet": {
                "NetworkInterfaceId": eni.id,
                "PrivateIpSet": {"PrivateIpAddress": assigned.iter().map(|i| i.to_string()).collect::<Vec<_>>()}
            }}),
            self.seq,
        ))
    }

    fn unassign_private_ip_addresses(&mut self, params: &Params) -> Result<Answer, Answer> {
        let eni = self.eni_param(params)?;
        let ips = indexed(params, "PrivateIpAddress");
        if ips.is_empty() {
            return Err(err(400, "MissingParameter", "PrivateIpAddress"));
        }
        let mut gone = Vec::new();
        for s in &ips {
            let ip: Ipv4Addr = s
                .parse()
                .map_err(|_| err(400, "InvalidParameter", "bad address"))?;
            if !eni.secondaries.contains(&ip) {
                return Err(err(
                    403,
                    "InvalidIp.IpUnassigned",
                    &format!("The IP {ip} is not assigned to {}.", eni.id),
                ));
            }
            gone.push(ip);
        }
        if let Some(e) = self.enis.get_mut(&eni.id) {
            e.secondaries.retain(|ip| !gone.contains(ip));
        }
        if let Some(vsw) = self.vswitch_mut(&eni.vswitch) {
            for ip in gone {
                vsw.release(ip);
            }
        }
        Ok(ok(json!({}), self.seq))
    }

    fn detach_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
        let eni = self.eni_param(params)?;
        let instance = params
            .get("InstanceId")
            .ok_or_else(|| err(400, "MissingParameter", "InstanceId"))?;
        if eni.instance.as_ref() != Some(instance) {
            return Err(err(
                403,
                "InvalidOperation.InvalidEniState",
                "The ENI is not attached to this instance.",
            ));
        }
        if eni.is_primary {
            return Err(err(
                400,
                "InvalidOperation.DetachPrimaryEniNotAllowed",
                "The primary ENI cannot be detached.",
            ));
        }
        if let Some(e) = self.enis.get_mut(&eni.id) {
            e.instance = None;
        }
        Ok(ok(json!({}), self.seq))
    }

    fn delete_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
        let eni = self.eni_param(params)?;
        if eni.instance.is_some() {
            return Err(err(
                403,
                "InvalidOperation.InvalidEniState",
                "The ENI is attached.",
            ));
        }
        self.enis.remove(&eni.id);
        if let Some(vsw) = self.vswitch_mut(&eni.vswitch) {
            vsw.release(eni.primary);
            for ip in &eni.secondaries {
                vsw.release(*ip);
            }
        }
        Ok(ok(json!({}), self.seq))
    }

    fn paging(params: &Params) -> Result<(usize, usize), Answer> {
        let number: usize = params
            .get("PageNumber")
            .map_or(Ok(1), |n| n.parse())
            .map_err(|_| err(400, "InvalidParameter", "PageNumber"))?;
        let size: usize = params
            .get("PageSize")
            .map_or(Ok(10), |n| n.parse())
            .map_err(|_| err(400, "InvalidParameter", "PageSize"))?;
        if number == 0 || !(1..=50).contains(&size) {
            return Err(err(400, "InvalidParameter", "PageNumber or PageSize"));
        }
        Ok((number, size))
    }

    fn describe_vswitches(&mut self, params: &Params) -> Result<Answer, Answer> {
        let (number, size) = Self::paging(params)?;
        let all: Vec<&FakeVSwitch> = self
            .vswitches
            .iter()
            .filter(|v| params.get("VpcId").is_none_or(|id| &v.vpc == id))
            .collect();
        let items: Vec<Value> = all
            .iter()
            .skip((number - 1) * size)
            .take(size)
            .map(|v| {
                json!({
                    "VSwitchId": v.id, "VpcId": v.vpc, "ZoneId": v.zone, "CidrBlock": v.cidr(),
                    "AvailableIpAddressCount": v.available(), "Status": "Available",
                    "VSwitchName": "", "IsDefault": false, "CreationTime": "2026-01-01T00:00:00Z",
                    "Tags": tags_json(&v.tags, "Key", "Value"),
                })
            })
            .collect();
        Ok(ok(
            json!({"VSwitches": {"VSwitch": items}, "TotalCount": all.len(), "PageNumber": number, "PageSize": size}),
            self.seq,
        ))
    }

    fn describe_security_groups(&mut self, params: &Params) -> Result<Answer, Answer> {
        let (number, size) = Self::paging(params)?;
        let all: Vec<Value> = self
            .security_groups
            .iter()
            .filter(|g| params.get("VpcId").is_none_or(|id| &g.vpc == id))
            .map(|g| {
                json!({
                    "SecurityGroupId": g.id, "SecurityGroupName": g.name, "VpcId": g.vpc,
                    "Description": "", "SecurityGroupType": "normal",
                    "CreationTime": "2026-01-01T00:00:00Z",
                    "Tags": tags_json(&g.tags, "TagKey", "TagValue"),
                })
            })
            .collect();
        let items: Vec<&Value> = all.iter().skip((number - 1) * size).take(size).collect();
        Ok(ok(
            json!({"SecurityGroups": {"SecurityGroup": items}, "TotalCount": all.len(), "PageNumber": number, "PageSize": size, "RegionId": REGION}),
            self.seq,
        ))
    }

    fn describe_instance_types(&mut self, params: &Params) -> Result<Answer, Answer> {
        let wanted = indexed(params, "InstanceTypes");
        let items: Vec<Value> = self
            .instance_types
            .iter()
            .filter(|t| wanted.is_empty() || wanted.contains(&t.0))
            .map(|(id, enis, ips)| {
                json!({
                    "InstanceTypeId": id, "InstanceTypeFamily": "ecs.g7",
                    "EniQuantity": enis, "EniPrivateIpAddressQuantity": ips,
                    "EniIpv6AddressQuantity": 1, "CpuCoreCount": 2, "MemorySize": 8.0,
                    "EniTrunkSupported": true, "MaximumQueueNumberPerEni": 4,
                })
            })
            .collect();
        Ok(ok(
            json!({"InstanceTypes": {"InstanceType": items}}),
            self.seq,
        ))
    }
}

// ---------------------------------------------------------------------------
// The loopback server.

struct StandIn {
    state: Arc<Mutex<State>>,
    url: String,
    task: JoinHandle<()>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(sock: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 256 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if path != "/" {
        return None;
    }
    Some((method, query.to_owned()))
}

async fn serve_one(mut sock: TcpStream, state: Arc<Mutex<State>>) {
    let Some((method, query)) = read_request(&mut sock).await else {
        return;
    };
    let answer = lock(&state).handle(&method, &query);
    if let Some(d) = answer.delay {
        tokio::time::sleep(d).await;
    }
    let reason = if answer.status == 200 { "OK" } else { "Error" };
    let response = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: application/json;charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        answer.status,
        answer.body.len(),
        answer.body
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StandIn {
    async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(State::new(SECRET)));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve_one(sock, shared.clone()));
            }
        });
        Ok(StandIn { state, url, task })
    }

    fn config(&self) -> AlibabaConfig {
        AlibabaConfig::new(REGION, KEY_ID, SECRET)
            .with_endpoint(&self.url)
            .with_timeout(Duration::from_secs(5))
    }

    fn client(&self) -> Result<AlibabaCloud> {
        Ok(AlibabaCloud::new(self.config())?)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn inject(&self, fault: Fault) {
        self.state().faults.push_back(fault);
    }

    /// Verified requests from index `from` on, as (Action, params).
    fn calls_since(&self, from: usize) -> Vec<Params> {
        self.state().log.get(from..).unwrap_or_default().to_vec()
    }

    fn mark(&self) -> usize {
        self.state().log.len()
    }
}

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
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
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
