//! The ECS API as the stand-in answers it: every request verified first
//! (parameters, access key (the fixed one or an unexpired key an STS
//! stand-in issued), POP signature, nonce, timestamp, STS token,
//! version and region), then a queued fault or the action on the VPC, in
//! ECS-shaped JSON (API 2014-05-26, `Format=JSON`) with ECS's error codes.

use std::{net::Ipv4Addr, time::Duration};

use serde_json::{Value, json};

use super::{
    KEY_ID, Params, REGION,
    signature::{expected_signature, pop_unescape},
    vpc::{FakeEni, FakeVSwitch, Fault, State},
};

pub struct Answer {
    pub status: u16,
    pub body: String,
    pub delay: Option<Duration>,
}

pub fn ok(mut body: Value, seq: u32) -> Answer {
    if let Value::Object(m) = &mut body {
        m.insert("RequestId".into(), json!(format!("REQ-{seq:08}")));
    }
    Answer {
        status: 200,
        body: body.to_string(),
        delay: None,
    }
}

pub fn err(status: u16, code: &str, message: &str) -> Answer {
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

pub fn tags_json(tags: &[(String, String)], key: &str, value: &str) -> Value {
    json!({"Tag": tags.iter().map(|(k, v)| json!({key: k, value: v})).collect::<Vec<_>>()})
}

pub fn indexed(params: &Params, prefix: &str) -> Vec<String> {
    (1..)
        .map_while(|n| params.get(&format!("{prefix}.{n}")).cloned())
        .collect()
}

pub fn page_token(offset: usize) -> String {
    format!("AAAAAdDWBF2{offset:08x}")
}

pub fn parse_token(token: &str) -> Option<usize> {
    usize::from_str_radix(token.strip_prefix("AAAAAdDWBF2")?, 16).ok()
}

impl State {
    /// Verifies one request and answers it.
    pub fn handle(&mut self, method: &str, query: &str) -> Answer {
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
        let (secret, security_token) = if p("AccessKeyId") == KEY_ID {
            (self.secret.clone(), self.security_token.clone())
        } else if let Some(key) = self.sts_keys.get(p("AccessKeyId")) {
            if jiff::Timestamp::now() >= key.expires {
                return self.refuse(err(
                    400,
                    "InvalidSecurityToken.Expired",
                    "Specified SecurityToken is expired.",
                ));
            }
            (key.secret.clone(), Some(key.security_token.clone()))
        } else {
            return self.refuse(err(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            ));
        };
        if p("SignatureMethod") != "HMAC-SHA1" || p("SignatureVersion") != "1.0" {
            return self.refuse(err(400, "InvalidParameter", "unsupported signature method"));
        }
        let expected = expected_signature(method, &params, &secret);
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
        if security_token.as_deref() != params.get("SecurityToken").map(String::as_str) {
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

    pub fn refuse(&mut self, answer: Answer) -> Answer {
        if let Ok(v) = serde_json::from_str::<Value>(&answer.body) {
            self.refused
                .push(v["Code"].as_str().unwrap_or_default().to_owned());
        }
        answer
    }

    pub fn fault(&mut self, fault: Fault) -> Answer {
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

    pub fn eni_param(&self, params: &Params) -> Result<FakeEni, Answer> {
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

    pub fn describe_network_interfaces(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn create_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn attach_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn assign_private_ip_addresses(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn unassign_private_ip_addresses(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn detach_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn delete_network_interface(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn paging(params: &Params) -> Result<(usize, usize), Answer> {
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

    pub fn describe_vswitches(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn describe_security_groups(&mut self, params: &Params) -> Result<Answer, Answer> {
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

    pub fn describe_instance_types(&mut self, params: &Params) -> Result<Answer, Answer> {
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
