//! `sextantctl observe`: flows from a node's observer or the relay, like
//! `hubble observe`: the last N or a live stream, Hubble's filters, one line
//! per flow (`compact`), a `table` or JSON as Hubble prints it.
//!
//! Filters name an endpoint on either side (`--pod`, `--ip`, `--label`,
//! `--identity`, `--port`, `--service`: from it OR to it) or one side
//! (`--from-*`, `--to-*`); everything else must hold too.

use std::{io::Write, time::Duration};

use anyhow::Context;
use sextant_observer::{
    api::{
        flow::{DropReason, Flow, FlowFilter, Verdict, layer4::Protocol},
        observer::{GetFlowsRequest, GetFlowsResponse, get_flows_response::ResponseTypes},
        relay::NodeState,
    },
    client::{Address, connect},
    json,
};

/// How flows are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per flow.
    #[default]
    Compact,
    /// Aligned columns.
    Table,
    /// One JSON object per line, field names as Hubble prints them.
    Json,
}

/// Flags of `sextantctl observe`.
#[derive(clap::Args, Debug, Default)]
pub struct ObserveArgs {
    /// The observer: a unix socket path of a node's agent, or host:port of
    /// the relay.
    #[arg(
        long,
        env = "SEXTANT_OBSERVER",
        default_value = "unix:///run/sextant/observer.sock"
    )]
    pub server: String,
    /// Keep streaming new flows.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The last N stored flows (default 20 unless following).
    #[arg(long)]
    pub last: Option<u64>,
    /// The first N stored flows.
    #[arg(long, conflicts_with_all = ["last", "follow"])]
    pub first: Option<u64>,
    /// Only flows newer than this long ago (`30s`, `5m`).
    #[arg(long, value_parser = sextant_kit::duration::parse)]
    pub since: Option<Duration>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "compact")]
    pub output: Output,
    /// Flows from or to this pod, `[namespace/]name-prefix`.
    #[arg(long)]
    pub pod: Vec<String>,
    /// Flows from this pod.
    #[arg(long)]
    pub from_pod: Vec<String>,
    /// Flows to this pod.
    #[arg(long)]
    pub to_pod: Vec<String>,
    /// Namespace of the pods named, or flows from or to any pod in it.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Flows from or to an IP address or CIDR.
    #[arg(long)]
    pub ip: Vec<String>,
    /// Flows from this IP address or CIDR.
    #[arg(long)]
    pub from_ip: Vec<String>,
    /// Flows to this IP address or CIDR.
    #[arg(long)]
    pub to_ip: Vec<String>,
    /// Flows from or to endpoints with these labels (selector, `app=db`).
    #[arg(short = 'l', long)]
    pub label: Vec<String>,
    /// Flows from endpoints with these labels.
    #[arg(long)]
    pub from_label: Vec<String>,
    /// Flows to endpoints with these labels.
    #[arg(long)]
    pub to_label: Vec<String>,
    /// Flows from or to this security identity.
    #[arg(long)]
    pub identity: Vec<u32>,
    /// Flows from this security identity.
    #[arg(long)]
    pub from_identity: Vec<u32>,
    /// Flows to this security identity.
    #[arg(long)]
    pub to_identity: Vec<u32>,
    /// Flows from or to this port.
    #[arg(long)]
    pub port: Vec<String>,
    /// Flows from this port.
    #[arg(long)]
    pub from_port: Vec<String>,
    /// Flows to this port.
    #[arg(long)]
    pub to_port: Vec<String>,
    /// Flows from or to this service, `[namespace/]name-prefix`.
    #[arg(long)]
    pub service: Vec<String>,
    /// Flows to this service.
    #[arg(long)]
    pub to_service: Vec<String>,
    /// Flows with this verdict (FORWARDED, DROPPED, AUDIT, ERROR).
    #[arg(long)]
    pub verdict: Vec<String>,
    /// Drops for this reason (POLICY_DENIED, INVALID_SOURCE_IP, or a number).
    #[arg(long)]
    pub drop_reason: Vec<String>,
    /// Flows of this protocol (tcp, udp, icmp, icmpv4, icmpv6).
    #[arg(long)]
    pub protocol: Vec<String>,
    /// Flows seen on nodes matching this pattern (`node-*`).
    #[arg(long)]
    pub node_name: Vec<String>,
    /// How long to wait for the server to answer the connect.
    #[arg(long, default_value = "5s", value_parser = sextant_kit::duration::parse)]
    pub timeout: Duration,
}

fn pod_selector(namespace: Option<&str>, pod: &str) -> String {
    match namespace {
        Some(ns) if !pod.contains('/') => format!("{ns}/{pod}"),
        _ => pod.to_owned(),
    }
}

/// The request `args` ask for; a flag value that cannot be one is an error
/// naming the flag.
pub fn request(args: &ObserveArgs, now: std::time::SystemTime) -> anyhow::Result<GetFlowsRequest> {
    let ns = args.namespace.as_deref();
    let pods = |v: &[String]| -> Vec<String> { v.iter().map(|p| pod_selector(ns, p)).collect() };
    let mut base = FlowFilter {
        source_pod: pods(&args.from_pod),
        destination_pod: pods(&args.to_pod),
        source_ip: args.from_ip.clone(),
        destination_ip: args.to_ip.clone(),
        source_label: args.from_label.clone(),
        destination_label: args.to_label.clone(),
        source_identity: args.from_identity.clone(),
        destination_identity: args.to_identity.clone(),
        source_port: args.from_port.clone(),
        destination_port: args.to_port.clone(),
        destination_service: pods(&args.to_service),
        protocol: args.protocol.clone(),
        node_name: args.node_name.clone(),
        ..Default::default()
    };
    for v in &args.verdict {
        let verdict = Verdict::from_str_name(&v.to_ascii_uppercase())
            .with_context(|| format!("--verdict {v:?}: want FORWARDED, DROPPED, AUDIT, ERROR, REDIRECTED, TRACED or TRANSLATED"))?;
        base.verdict.push(verdict as i32);
    }
    for r in &args.drop_reason {
        let n = match r.parse::<i32>() {
            Ok(n) if n >= 0 => n,
            _ => DropReason::from_str_name(&r.to_ascii_uppercase().replace('-', "_")).with_context(
                || {
                    format!(
                        "--drop-reason {r:?}: not a drop reason name (POLICY_DENIED, ...) or number"
                    )
                },
            )? as i32,
        };
        base.drop_reason_desc.push(n);
    }
    // Either-side flags: one filter for the source side, one for the
    // destination side, either may match.
    let mut either_pods = pods(&args.pod);
    if either_pods.is_empty()
        && args.from_pod.is_empty()
        && args.to_pod.is_empty()
        && let Some(ns) = ns
    {
        either_pods.push(format!("{ns}/"));
    }
    let either = !either_pods.is_empty()
        || !args.ip.is_empty()
        || !args.label.is_empty()
        || !args.identity.is_empty()
        || !args.port.is_empty()
        || !args.service.is_empty();
    let whitelist = if either {
        let mut from = base.clone();
        from.source_pod.extend(either_pods.iter().cloned());
        from.source_ip.extend(args.ip.iter().cloned());
        from.source_label.extend(args.label.iter().cloned());
        from.source_identity.extend(args.identity.iter().copied());
        from.source_port.extend(args.port.iter().cloned());
        from.source_service.extend(pods(&args.service));
        let mut to = base;
        to.destination_pod.extend(either_pods);
        to.destination_ip.extend(args.ip.iter().cloned());
        to.destination_label.extend(args.label.iter().cloned());
        to.destination_identity
            .extend(args.identity.iter().copied());
        to.destination_port.extend(args.port.iter().cloned());
        to.destination_service.extend(pods(&args.service));
        vec![from, to]
    } else if base == FlowFilter::default() {
        Vec::new()
    } else {
        vec![base]
    };
    let (number, first) = match (args.first, args.last, args.follow) {
        (Some(n), _, _) => (n, true),
        (None, Some(n), _) => (n, false),
        (None, None, true) => (0, false),
        (None, None, false) if args.since.is_some() => (0, false),
        (None, None, false) => (20, false),
    };
    Ok(GetFlowsRequest {
        number,
        first,
        follow: args.follow,
        whitelist,
        blacklist: Vec::new(),
        since: args
            .since
            .map(|d| now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH).into()),
        until: None,
    })
}

/// `Dec  7 03:40:39.123`, as Hubble's compact output.
fn stamp(f: &Flow) -> String {
    let Some(t) = &f.time else {
        return "N/A".into();
    };
    let s = json::timestamp(t);
    // YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| {
            [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ]
            .get(m.wrapping_sub(1))
            .copied()
        })
        .unwrap_or("???");
    let day = s
        .get(8..10)
        .and_then(|d| d.parse::<u32>().ok())
        .unwrap_or(0);
    format!(
        "{month} {day:>2} {}",
        s.get(11..23).unwrap_or("??:??:??.???")
    )
}

fn ports(f: &Flow) -> (Option<u32>, Option<u32>) {
    match f.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
        Some(Protocol::Tcp(t)) => (Some(t.source_port), Some(t.destination_port)),
        Some(Protocol::Udp(u)) => (Some(u.source_port), Some(u.destination_port)),
        Some(Protocol::Sctp(u)) => (Some(u.source_port), Some(u.destination_port)),
        _ => (None, None),
    }
}

fn side(f: &Flow, source: bool) -> String {
    let (ep, ip) = if source {
        (f.source.as_ref(), f.ip.as_ref().map(|i| i.source.as_str()))
    } else {
        (
            f.destination.as_ref(),
            f.ip.as_ref().map(|i| i.destination.as_str()),
        )
    };
    let (sp, dp) = ports(f);
    let port = if source { sp } else { dp };
    let mut name = match ep {
        Some(e) if !e.pod_name.is_empty() => format!("{}/{}", e.namespace, e.pod_name),
        _ => ip.unwrap_or("?").to_owned(),
    };
    if let Some(p) = port {
        if name.contains(':') && !name.contains('/') {
            name = format!("[{name}]");
        }
        name = format!("{name}:{p}");
    }
    match ep {
        Some(e) if e.identity != 0 => format!("{name} (ID:{})", e.identity),
        _ => name,
    }
}

fn verdict(f: &Flow) -> &'static str {
    Verdict::try_from(f.verdict).map_or("UNKNOWN", |v| v.as_str_name())
}

fn kind(f: &Flow) -> String {
    if f.verdict == Verdict::Dropped as i32 {
        return DropReason::try_from(f.drop_reason_desc).map_or_else(
            |_| format!("drop-reason-{}", f.drop_reason_desc),
            |r| r.as_str_name().to_ascii_lowercase().replace('_', "-"),
        );
    }
    match f.traffic_direction {
        1 => "to-endpoint".into(),
        2 => "from-endpoint".into(),
        _ => "trace".into(),
    }
}

/// One line for a response in `output`'s format; `None` for nothing.
pub fn render(r: &GetFlowsResponse, output: Output) -> Option<String> {
    if output == Output::Json {
        return Some(json::response(r).to_string());
    }
    match &r.response_types {
        Some(ResponseTypes::Flow(f)) => {
            let arrow = if f.is_reply == Some(true) { "<-" } else { "->" };
            Some(match output {
                Output::Table => format!(
                    "{:<20}  {:<44}  {:<44}  {:<24}  {:<10}  {}",
                    stamp(f),
                    side(f, true),
                    side(f, false),
                    kind(f),
                    verdict(f),
                    f.summary
                ),
                _ => format!(
                    "{}: {} {arrow} {} {} {} ({})",
                    stamp(f),
                    side(f, true),
                    side(f, false),
                    kind(f),
                    verdict(f),
                    f.summary
                ),
            })
        }
        Some(ResponseTypes::NodeStatus(s)) => {
            let state = NodeState::try_from(s.state_change).map_or("UNKNOWN", |v| v.as_str_name());
            // Connected nodes are the normal case; say only what is missing.
            (s.state_change != NodeState::NodeConnected as i32).then(|| {
                format!(
                    "NODE STATUS: {state} {}{}",
                    s.node_names.join(", "),
                    if s.message.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", s.message)
                    }
                )
            })
        }
        Some(ResponseTypes::LostEvents(l)) => Some(format!(
            "EVENTS LOST: {} flows lost at {}{}",
            l.num_events_lost,
            sextant_observer::api::flow::LostEventSource::try_from(l.source)
                .map_or("UNKNOWN", |s| s.as_str_name()),
            if r.node_name.is_empty() {
                String::new()
            } else {
                format!(" on {}", r.node_name)
            }
        )),
        None => None,
    }
}

/// Runs `sextantctl observe`, printing to stdout.
pub fn run(args: &ObserveArgs) -> anyhow::Result<()> {
    let address = Address::parse(&args.server)?;
    let req = request(args, std::time::SystemTime::now())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut client = connect(&address, args.timeout).await?;
        let mut stream = client
            .get_flows(req)
            .await
            .map_err(|s| {
                anyhow::anyhow!(
                    "{address} refused the request ({:?}): {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        if args.output == Output::Table {
            writeln!(
                out,
                "{:<20}  {:<44}  {:<44}  {:<24}  {:<10}  SUMMARY",
                "TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT"
            )?;
        }
        while let Some(r) = stream.message().await.map_err(|s| {
            anyhow::anyhow!(
                "stream from {address} failed ({:?}): {}",
                s.code(),
                s.message()
            )
        })? {
            if let Some(line) = render(&r, args.output) {
                writeln!(out, "{line}")?;
                if args.follow {
                    out.flush()?;
                }
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ObserveArgs {
        ObserveArgs {
            server: "unix:///x".into(),
            ..Default::default()
        }
    }

    #[test]
    fn either_side_flags_become_a_source_and_a_destination_filter() {
        let a = ObserveArgs {
            pod: vec!["db".into()],
            namespace: Some("data".into()),
            verdict: vec!["dropped".into()],
            ..args()
        };
        let r = request(&a, std::time::SystemTime::now()).expect("request");
        assert_eq!(r.number, 20);
        assert_eq!(r.whitelist.len(), 2);
        assert_eq!(r.whitelist[0].source_pod, ["data/db"]);
        assert!(r.whitelist[0].destination_pod.is_empty());
        assert_eq!(r.whitelist[1].destination_pod, ["data/db"]);
        for f in &r.whitelist {
            assert_eq!(f.verdict, [Verdict::Dropped as i32]);
        }
    }

    #[test]
    fn one_sided_flags_make_one_filter_and_a_namespace_alone_selects_it() {
        let a = ObserveArgs {
            to_port: vec!["5432".into()],
            from_pod: vec!["web".into()],
            namespace: Some("shop".into()),
            follow: true,
            drop_reason: vec!["policy-denied".into(), "181".into()],
            ..args()
        };
        let r = request(&a, std::time::SystemTime::now()).expect("request");
        assert_eq!((r.number, r.follow), (0, true));
        assert_eq!(r.whitelist.len(), 1);
        assert_eq!(r.whitelist[0].source_pod, ["shop/web"]);
        assert_eq!(r.whitelist[0].destination_port, ["5432"]);
        assert_eq!(r.whitelist[0].drop_reason_desc, [133, 181]);
        let ns = ObserveArgs {
            namespace: Some("shop".into()),
            ..args()
        };
        let r = request(&ns, std::time::SystemTime::now()).expect("request");
        assert_eq!(r.whitelist[0].source_pod, ["shop/"]);
        assert_eq!(r.whitelist[1].destination_pod, ["shop/"]);
    }

    #[test]
    fn unknown_verdicts_and_drop_reasons_are_refused_by_name() {
        let e = request(
            &ObserveArgs {
                verdict: vec!["maybe".into()],
                ..args()
            },
            std::time::SystemTime::now(),
        )
        .expect_err("refused");
        assert!(e.to_string().contains("--verdict"), "{e}");
        let e = request(
            &ObserveArgs {
                drop_reason: vec!["gremlins".into()],
                ..args()
            },
            std::time::SystemTime::now(),
        )
        .expect_err("refused");
        assert!(e.to_string().contains("--drop-reason"), "{e}");
    }
}
