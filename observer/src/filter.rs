//! Hubble's flow filters over the fields Sextant fills: a request's
//! whitelist matches when any of its filters does (OR), a filter when all
//! its fields do (AND), a field when any of its values does (OR); a flow is
//! returned when the whitelist is empty or matches and no blacklist filter
//! matches.
//!
//! Filters are parsed once per request ([`FilterSet::new`]); a malformed
//! value, or a field for what Sextant does not record (L7, FQDNs,
//! workloads, trace IDs), is an [`Error::InvalidFilter`] naming the field,
//! which the server answers as gRPC `InvalidArgument`.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{
    Error, Result,
    api::flow::{
        DropReason, EventTypeFilter, Flow, FlowFilter, IpVersion, TcpFlags, TrafficDirection,
        Verdict, layer4::Protocol,
    },
};

/// A request's whitelist and blacklist, parsed.
#[derive(Clone, Debug, Default)]
pub struct FilterSet {
    whitelist: Vec<Compiled>,
    blacklist: Vec<Compiled>,
}

impl FilterSet {
    /// Parses `whitelist` and `blacklist`.
    pub fn new(whitelist: &[FlowFilter], blacklist: &[FlowFilter]) -> Result<Self> {
        Ok(FilterSet {
            whitelist: whitelist.iter().map(compile).collect::<Result<_>>()?,
            blacklist: blacklist.iter().map(compile).collect::<Result<_>>()?,
        })
    }

    /// Whether `flow` passes.
    pub fn matches(&self, flow: &Flow) -> bool {
        (self.whitelist.is_empty() || self.whitelist.iter().any(|c| c.matches(flow)))
            && !self.blacklist.iter().any(|c| c.matches(flow))
    }
}

/// One filter: every check must pass.
#[derive(Clone, Debug, Default)]
struct Compiled(Vec<Check>);

impl Compiled {
    fn matches(&self, f: &Flow) -> bool {
        self.0.iter().all(|c| c.matches(f))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Source,
    Destination,
}

#[derive(Clone, Debug)]
enum Check {
    Uuid(Vec<String>),
    Ip(Side, Vec<IpNet>),
    Pod(Side, Vec<NameSelector>),
    Service(Side, Vec<NameSelector>),
    Label(Side, Vec<LabelSelector>),
    Identity(Side, Vec<u32>),
    Port(Side, Vec<u16>),
    Direction(Vec<i32>),
    Verdict(Vec<i32>),
    DropReason(Vec<i32>),
    EventType(Vec<EventTypeFilter>),
    Protocol(Vec<L4Proto>),
    Reply(Vec<bool>),
    TcpFlags(Vec<TcpFlags>),
    NodeName(Vec<String>),
    IpVersion(Vec<i32>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum L4Proto {
    Tcp,
    Udp,
    Icmp4,
    Icmp6,
    Sctp,
    /// L7 protocols Sextant does not record: match nothing.
    None,
}

/// `namespace/name-prefix`, `name-prefix` (any namespace) or `namespace/`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NameSelector {
    namespace: Option<String>,
    prefix: String,
}

/// One Kubernetes label selector: all its requirements must hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct LabelKey {
    /// `k8s` in `k8s:app`; `None` matches any source.
    source: Option<String>,
    key: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Exists(LabelKey),
    NotExists(LabelKey),
    In(LabelKey, Vec<String>),
    NotIn(LabelKey, Vec<String>),
}

fn invalid(field: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidFilter(format!("{field}: {why}"))
}

fn unsupported(field: &str, what: &str) -> Error {
    Error::InvalidFilter(format!(
        "{field}: Sextant does not record {what}, so this filter can never match"
    ))
}

fn compile(f: &FlowFilter) -> Result<Compiled> {
    let mut checks = Vec::new();
    for (field, set, what) in [
        ("source_fqdn", !f.source_fqdn.is_empty(), "DNS names"),
        (
            "destination_fqdn",
            !f.destination_fqdn.is_empty(),
            "DNS names",
        ),
        (
            "source_workload",
            !f.source_workload.is_empty(),
            "workloads",
        ),
        (
            "destination_workload",
            !f.destination_workload.is_empty(),
            "workloads",
        ),
        (
            "http_status_code",
            !f.http_status_code.is_empty(),
            "L7 (HTTP) flows",
        ),
        ("http_method", !f.http_method.is_empty(), "L7 (HTTP) flows"),
        ("http_path", !f.http_path.is_empty(), "L7 (HTTP) flows"),
        ("dns_query", !f.dns_query.is_empty(), "L7 (DNS) flows"),
        ("trace_id", !f.trace_id.is_empty(), "trace contexts"),
    ] {
        if set {
            return Err(unsupported(field, what));
        }
    }
    if !f.uuid.is_empty() {
        checks.push(Check::Uuid(f.uuid.clone()));
    }
    for (side, field, values) in [
        (Side::Source, "source_ip", &f.source_ip),
        (Side::Destination, "destination_ip", &f.destination_ip),
    ] {
        if !values.is_empty() {
            checks.push(Check::Ip(
                side,
                values
                    .iter()
                    .map(|v| parse_ip(field, v))
                    .collect::<Result<_>>()?,
            ));
        }
    }
    for (side, field, values) in [
        (Side::Source, "source_pod", &f.source_pod),
        (Side::Destination, "destination_pod", &f.destination_pod),
    ] {
        if !values.is_empty() {
            checks.push(Check::Pod(
                side,
                values
                    .iter()
                    .map(|v| parse_name(field, v))
                    .collect::<Result<_>>()?,
            ));
        }
    }
    for (side, field, values) in [
        (Side::Source, "source_service", &f.source_service),
        (
            Side::Destination,
            "destination_service",
            &f.destination_service,
        ),
    ] {
        if !values.is_empty() {
            checks.push(Check::Service(
                side,
                values
                    .iter()
                    .map(|v| parse_name(field, v))
                    .collect::<Result<_>>()?,
            ));
        }
    }
    for (side, field, values) in [
        (Side::Source, "source_label", &f.source_label),
        (Side::Destination, "destination_label", &f.destination_label),
    ] {
        if !values.is_empty() {
            checks.push(Check::Label(
                side,
                values
                    .iter()
                    .map(|v| LabelSelector::parse(v).map_err(|e| invalid(field, e)))
                    .collect::<Result<_>>()?,
            ));
        }
    }
    if !f.source_identity.is_empty() {
        checks.push(Check::Identity(Side::Source, f.source_identity.clone()));
    }
    if !f.destination_identity.is_empty() {
        checks.push(Check::Identity(
            Side::Destination,
            f.destination_identity.clone(),
        ));
    }
    for (side, field, values) in [
        (Side::Source, "source_port", &f.source_port),
        (Side::Destination, "destination_port", &f.destination_port),
    ] {
        if !values.is_empty() {
            checks.push(Check::Port(
                side,
                values
                    .iter()
                    .map(|v| {
                        v.trim().parse::<u16>().map_err(|_| {
                            invalid(field, format!("{v:?} is not a port number (0-65535)"))
                        })
                    })
                    .collect::<Result<_>>()?,
            ));
        }
    }
    if !f.traffic_direction.is_empty() {
        for &d in &f.traffic_direction {
            TrafficDirection::try_from(d)
                .map_err(|_| invalid("traffic_direction", format!("unknown direction {d}")))?;
        }
        checks.push(Check::Direction(f.traffic_direction.clone()));
    }
    if !f.verdict.is_empty() {
        for &v in &f.verdict {
            Verdict::try_from(v).map_err(|_| invalid("verdict", format!("unknown verdict {v}")))?;
        }
        checks.push(Check::Verdict(f.verdict.clone()));
    }
    if !f.drop_reason_desc.is_empty() {
        for &r in &f.drop_reason_desc {
            // Reasons this build does not name are still valid numbers.
            if r < 0 {
                return Err(invalid(
                    "drop_reason_desc",
                    format!("drop reason {r} is negative"),
                ));
            }
        }
        checks.push(Check::DropReason(f.drop_reason_desc.clone()));
    }
    if !f.event_type.is_empty() {
        checks.push(Check::EventType(f.event_type.clone()));
    }
    if !f.protocol.is_empty() {
        checks.push(Check::Protocol(
            f.protocol
                .iter()
                .map(|p| match p.trim().to_ascii_lowercase().as_str() {
                    "tcp" => Ok(L4Proto::Tcp),
                    "udp" => Ok(L4Proto::Udp),
                    "icmp" | "icmpv4" => Ok(L4Proto::Icmp4),
                    "icmpv6" => Ok(L4Proto::Icmp6),
                    "sctp" => Ok(L4Proto::Sctp),
                    "http" | "dns" | "kafka" => Ok(L4Proto::None),
                    _ => Err(invalid(
                        "protocol",
                        format!(
                            "unknown protocol {p:?} (tcp, udp, icmp, icmpv4, icmpv6, sctp, http, dns, kafka)"
                        ),
                    )),
                })
                .collect::<Result<_>>()?,
        ));
        // `icmp` means either version.
        if f.protocol
            .iter()
            .any(|p| p.trim().eq_ignore_ascii_case("icmp"))
            && let Some(Check::Protocol(ps)) = checks.last_mut()
        {
            ps.push(L4Proto::Icmp6);
        }
    }
    if !f.reply.is_empty() {
        checks.push(Check::Reply(f.reply.clone()));
    }
    if !f.tcp_flags.is_empty() {
        checks.push(Check::TcpFlags(f.tcp_flags.clone()));
    }
    if !f.node_name.is_empty() {
        checks.push(Check::NodeName(
            f.node_name
                .iter()
                .map(|p| parse_node_pattern(p))
                .collect::<Result<_>>()?,
        ));
    }
    if !f.ip_version.is_empty() {
        for &v in &f.ip_version {
            IpVersion::try_from(v)
                .map_err(|_| invalid("ip_version", format!("unknown IP version {v}")))?;
        }
        checks.push(Check::IpVersion(f.ip_version.clone()));
    }
    Ok(Compiled(checks))
}

fn parse_ip(field: &str, v: &str) -> Result<IpNet> {
    let v = v.trim();
    if let Ok(net) = v.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    v.parse::<IpAddr>()
        .map(IpNet::from)
        .map_err(|_| invalid(field, format!("{v:?} is neither an IP address nor a CIDR")))
}

fn valid_name_chars(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

fn parse_name(field: &str, v: &str) -> Result<NameSelector> {
    let v = v.trim();
    if v.is_empty() {
        return Err(invalid(field, "empty selector"));
    }
    let (namespace, prefix) = match v.split_once('/') {
        Some((ns, p)) => {
            if ns.is_empty() {
                return Err(invalid(field, format!("{v:?} has an empty namespace")));
            }
            (Some(ns.to_owned()), p.to_owned())
        }
        None => (None, v.to_owned()),
    };
    if !namespace.as_deref().is_none_or(valid_name_chars) || !valid_name_chars(&prefix) {
        return Err(invalid(
            field,
            format!("{v:?} is not `namespace/name-prefix`, `name-prefix` or `namespace/`"),
        ));
    }
    Ok(NameSelector { namespace, prefix })
}

fn parse_node_pattern(p: &str) -> Result<String> {
    let p = p.trim();
    // `cluster/node`: Sextant's flows carry the node's name only.
    let node = p.rsplit_once('/').map_or(p, |(_, n)| n);
    if !node
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '*'))
    {
        return Err(invalid(
            "node_name",
            format!("{p:?} is not a node name pattern"),
        ));
    }
    Ok(if node.is_empty() {
        "*".into()
    } else {
        node.into()
    })
}

/// `*` matches any run of characters within one dot-separated label.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => {
            let mut i = 0;
            loop {
                if glob(rest, &name[i..]) {
                    return true;
                }
                if i == name.len() || name[i] == b'.' {
                    return false;
                }
                i += 1;
            }
        }
        Some((c, rest)) => name
            .split_first()
            .is_some_and(|(n, name)| n == c && glob(rest, name)),
    }
}

impl NameSelector {
    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.namespace.as_deref().is_none_or(|ns| ns == namespace) && name.starts_with(&self.prefix)
    }
}

fn label_key(s: &str) -> std::result::Result<LabelKey, String> {
    let s = s.trim();
    let (source, key) = match s.split_once(':') {
        Some((src, key)) => (Some(src.to_owned()), key),
        None => (None, s),
    };
    let ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/'))
    };
    if !ok(key) || !source.as_deref().is_none_or(ok) {
        return Err(format!("{s:?} is not a label key"));
    }
    Ok(LabelKey {
        source,
        key: key.to_owned(),
    })
}

fn label_value(s: &str) -> std::result::Result<String, String> {
    let s = s.trim();
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} is not a label value"))
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> std::result::Result<Vec<&str>, String> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced `)`".into());
                }
            }
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced `(`".into());
    }
    out.push(&s[start..]);
    Ok(out)
}

fn set_values(s: &str) -> std::result::Result<Vec<String>, String> {
    let s = s.trim();
    let inner = s
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("{s:?} is not a `(v1, v2)` set"))?;
    inner.split(',').map(label_value).collect()
}

impl LabelSelector {
    /// Parses Kubernetes label selector syntax: `a=b`, `a==b`, `a!=b`,
    /// `a in (x,y)`, `a notin (x)`, `a`, `!a`, joined by commas (AND). A key
    /// may carry a source, `k8s:app`; without one it matches any source.
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Err("empty label selector".into());
        }
        let mut reqs = Vec::new();
        for term in split_top(s)? {
            let t = term.trim();
            let req = if let Some(k) = t.strip_prefix('!') {
                Requirement::NotExists(label_key(k)?)
            } else if let Some((k, v)) = t.split_once("!=") {
                Requirement::NotIn(label_key(k)?, vec![label_value(v)?])
            } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                Requirement::In(label_key(k)?, vec![label_value(v)?])
            } else if let Some((k, v)) = t.split_once(" notin ") {
                Requirement::NotIn(label_key(k)?, set_values(v)?)
            } else if let Some((k, v)) = t.split_once(" in ") {
                Requirement::In(label_key(k)?, set_values(v)?)
            } else {
                Requirement::Exists(label_key(t)?)
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    /// Whether `labels` (`source:key=value`) satisfy every requirement.
    pub fn matches(&self, labels: &[String]) -> bool {
        let value_of = |k: &LabelKey| -> Option<&str> {
            labels.iter().find_map(|l| {
                let (src, rest) = match l.split_once(':') {
                    Some((s, r)) if !s.contains('=') => (Some(s), r),
                    _ => (None, l.as_str()),
                };
                let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
                (key == k.key
                    && k.source
                        .as_deref()
                        .is_none_or(|want| src.is_some_and(|s| s == want)))
                .then_some(value)
            })
        };
        self.0.iter().all(|r| match r {
            Requirement::Exists(k) => value_of(k).is_some(),
            Requirement::NotExists(k) => value_of(k).is_none(),
            Requirement::In(k, vs) => value_of(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            Requirement::NotIn(k, vs) => value_of(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        })
    }
}

fn ports(f: &Flow) -> Option<(u32, u32)> {
    match f.l4.as_ref()?.protocol.as_ref()? {
        Protocol::Tcp(t) => Some((t.source_port, t.destination_port)),
        Protocol::Udp(u) => Some((u.source_port, u.destination_port)),
        Protocol::Sctp(s) => Some((s.source_port, s.destination_port)),
        Protocol::IcmPv4(_) | Protocol::IcmPv6(_) => None,
    }
}

impl Check {
    fn matches(&self, f: &Flow) -> bool {
        let ep = |side: Side| match side {
            Side::Source => f.source.as_ref(),
            Side::Destination => f.destination.as_ref(),
        };
        match self {
            Check::Uuid(us) => us.contains(&f.uuid),
            Check::Ip(side, nets) => {
                let ip = f.ip.as_ref().map(|ip| match side {
                    Side::Source => ip.source.as_str(),
                    Side::Destination => ip.destination.as_str(),
                });
                ip.and_then(|s| s.parse::<IpAddr>().ok())
                    .is_some_and(|a| nets.iter().any(|n| n.contains(&a)))
            }
            Check::Pod(side, sels) => ep(*side).is_some_and(|e| {
                !e.pod_name.is_empty() && sels.iter().any(|s| s.matches(&e.namespace, &e.pod_name))
            }),
            Check::Service(side, sels) => {
                let svc = match side {
                    Side::Source => f.source_service.as_ref(),
                    Side::Destination => f.destination_service.as_ref(),
                };
                svc.is_some_and(|s| {
                    !s.name.is_empty() && sels.iter().any(|x| x.matches(&s.namespace, &s.name))
                })
            }
            Check::Label(side, sels) => {
                ep(*side).is_some_and(|e| sels.iter().any(|s| s.matches(&e.labels)))
            }
            Check::Identity(side, ids) => ep(*side).is_some_and(|e| ids.contains(&e.identity)),
            Check::Port(side, ps) => ports(f).is_some_and(|(s, d)| {
                let p = if *side == Side::Source { s } else { d };
                ps.iter().any(|x| u32::from(*x) == p)
            }),
            Check::Direction(ds) => ds.contains(&f.traffic_direction),
            Check::Verdict(vs) => vs.contains(&f.verdict),
            Check::DropReason(rs) => {
                f.verdict == Verdict::Dropped as i32
                    && f.drop_reason_desc != DropReason::Unknown as i32
                    && rs.contains(&f.drop_reason_desc)
            }
            Check::EventType(ts) => f.event_type.as_ref().is_some_and(|e| {
                ts.iter().any(|t| {
                    t.r#type == e.r#type && (!t.match_sub_type || t.sub_type == e.sub_type)
                })
            }),
            Check::Protocol(ps) => {
                let p = f.l4.as_ref().and_then(|l| l.protocol.as_ref());
                p.is_some_and(|p| {
                    let have = match p {
                        Protocol::Tcp(_) => L4Proto::Tcp,
                        Protocol::Udp(_) => L4Proto::Udp,
                        Protocol::IcmPv4(_) => L4Proto::Icmp4,
                        Protocol::IcmPv6(_) => L4Proto::Icmp6,
                        Protocol::Sctp(_) => L4Proto::Sctp,
                    };
                    ps.contains(&have)
                })
            }
            Check::Reply(rs) => f.is_reply.is_some_and(|r| rs.contains(&r)),
            Check::TcpFlags(fs) => {
                let have = match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
                    Some(Protocol::Tcp(t)) => t.flags.unwrap_or_default(),
                    _ => return false,
                };
                fs.iter().any(|w| {
                    (!w.syn || have.syn)
                        && (!w.ack || have.ack)
                        && (!w.fin || have.fin)
                        && (!w.rst || have.rst)
                        && (!w.psh || have.psh)
                        && (!w.urg || have.urg)
                        && (!w.ece || have.ece)
                        && (!w.cwr || have.cwr)
                        && (!w.ns || have.ns)
                })
            }
            Check::NodeName(ps) => ps
                .iter()
                .any(|p| glob(p.as_bytes(), f.node_name.as_bytes())),
            Check::IpVersion(vs) => f.ip.as_ref().is_some_and(|ip| vs.contains(&ip.ip_version)),
        }
    }
}

#[cfg(test)]
mod tests;
