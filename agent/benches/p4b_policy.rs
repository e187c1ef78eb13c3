//! P4b: what network policy adds to a pod-to-pod path with 0, 300 and 3,000
//! policies selecting the server: the eBPF datapath (policies pushed with
//! `PUT /v1/policy`) against iptables rules expressing the same policies
//! (kube-router / Calico-iptables style: conntrack ESTABLISHED accept first,
//! then one `-s client/32 -p tcp --dport` ACCEPT per policy in a chain for
//! the server, then DROP) in the FORWARD chain of a lab without BPF.
//!
//! Every policy selects `app=server`; policy k < n-1 admits `app=client-k`
//! (a pod on another node; the 2,999 of them are there at every size) on
//! port 10000+k, and the last one admits the measured client on 8080, so
//! iptables walks the whole chain for a new flow. Two figures per size, both
//! client -> server round trips:
//! - per packet: request/answer on one established connection. The BPF
//!   programs look policy up on every request packet; iptables only runs
//!   conntrack and its first rule for established packets.
//! - connect: TCP handshake + one echo on a new connection (the SYN walks
//!   the iptables chain).
//!
//! One lab per (datapath, size), all up at once and measured in rotating
//! chunks, so every figure sees the same machine state. (One lab per size
//! also means one policy push per agent: a re-sync of a large snapshot is
//! slow, see docs/network-policy.md.)

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};
use sextant_lab::{Lab, LabConfig, in_netns, line_server};

const SIZES: [usize; 3] = [0, 300, 3_000];
/// Rounds over all labs (each round's p50 shows the run's noise).
const ROUNDS: usize = 5;
/// Chunks per lab in one round, the labs' order rotating between chunks.
const CHUNKS: usize = 6;
/// Round trips on the established connection per chunk.
const RTTS: usize = 2_000;
/// New connections per chunk.
const CONNECTS: usize = 100;
const WARMUP: usize = 50;
/// The port the last policy opens to the measured client.
const PORT: u16 = 8080;
/// A port no policy opens: must be refused whenever policies exist.
const CLOSED_PORT: u16 = 8081;

fn main() {
    if !common::can_run("P4b") || !common::has_iptables("P4b") {
        return;
    }
    if let Err(e) = run() {
        println!("P4b: FAILED: {e:#}");
        std::process::exit(1);
    }
}

/// Address of `client-k`, a pod on another node.
fn remote(k: usize) -> Ipv4Addr {
    let k = u32::try_from(k).unwrap_or(0);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 82, 0, 0)) + k + 1)
}

fn port_of(k: usize, n: usize) -> u16 {
    if k + 1 == n {
        PORT
    } else {
        10_000 + u16::try_from(k).unwrap_or(0)
    }
}

fn client_label(k: usize, n: usize) -> String {
    if k + 1 == n {
        "bench-client".into()
    } else {
        format!("client-{k}")
    }
}

/// One lab: a client pod (0) and a server pod (1) echoing lines on
/// [`PORT`] and [`CLOSED_PORT`], behind `n` policies.
struct Side {
    lab: Lab,
    client: Ipv4Addr,
    server: Ipv4Addr,
}

fn mk_side(tag: &str, datapath: bool) -> Result<Side> {
    let mut lab = Lab::new(LabConfig {
        prefix: format!("p4{tag}{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.80.0.0/28".into(),
        pods: 2,
        datapath,
    })?;
    lab.start_agent()?;
    let client = lab.add(0)?;
    let server = lab.add(1)?;
    for port in [PORT, CLOSED_PORT] {
        line_server(
            &lab.pods[1].name,
            SocketAddrV4::new(server, port),
            "echo".into(),
        )?;
    }
    Ok(Side {
        lab,
        client,
        server,
    })
}

/// One client connection (created in the client netns; the socket keeps it).
struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
    line: String,
}

impl Conn {
    fn open(side: &Side, port: u16, timeout: Duration) -> std::io::Result<Conn> {
        let to = SocketAddrV4::new(side.server, port);
        in_netns(&side.lab.pods[0].name, move || -> std::io::Result<Conn> {
            let s = TcpStream::connect_timeout(&to.into(), timeout)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.set_nodelay(true)?;
            Ok(Conn {
                r: BufReader::new(s.try_clone()?),
                w: s,
                line: String::new(),
            })
        })
        .map_err(std::io::Error::other)?
    }

    fn ask(&mut self) -> std::io::Result<()> {
        self.w.write_all(b"ping\n")?;
        self.line.clear();
        if self.r.read_line(&mut self.line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }
}

/// `n` round trips on `c`, each timed.
fn round_trips(c: &mut Conn, n: usize, out: &mut Vec<Duration>) -> Result<()> {
    for _ in 0..n {
        let t = Instant::now();
        c.ask().context("round trip on the established flow")?;
        out.push(t.elapsed());
    }
    Ok(())
}

/// `n` new connections (connect + one echo), each timed.
fn connects(side: &Side, n: usize, out: &mut Vec<Duration>) -> Result<()> {
    let to = SocketAddrV4::new(side.server, PORT);
    let samples = in_netns(
        &side.lab.pods[0].name,
        move || -> std::io::Result<Vec<Duration>> {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.set_nodelay(true)?;
                let mut w = s.try_clone()?;
                w.write_all(b"ping\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                v.push(t.elapsed());
            }
            Ok(v)
        },
    )?
    .with_context(|| format!("connecting to {to}"))?;
    out.extend(samples);
    Ok(())
}

fn policy(k: usize, n: usize) -> Value {
    json!({
        "apiVersion": "sextant.io/v1alpha1",
        "kind": "SextantNetworkPolicy",
        "metadata": {"name": format!("p4b-{k}"), "namespace": "lab"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": client_label(k, n)}}],
                "toPorts": [{"ports": [{"port": port_of(k, n).to_string(), "protocol": "TCP"}]}]
            }]
        }
    })
}

/// The control plane's snapshot with `n` policies. The cluster's pods are
/// the same at every size: the two lab pods and the largest size's remote
/// clients.
fn snapshot(lab: &Lab, n: usize) -> Value {
    let max = SIZES.iter().copied().max().unwrap_or(0);
    let mut pods = vec![
        json!({"namespace": "lab", "name": lab.pods[0].name, "labels": {"app": "bench-client"}}),
        json!({"namespace": "lab", "name": lab.pods[1].name, "labels": {"app": "server"}}),
    ];
    pods.extend((0..max.saturating_sub(1)).map(|k| {
        json!({"namespace": "lab", "name": format!("client-{k}"),
               "labels": {"app": format!("client-{k}")}, "ip": remote(k).to_string()})
    }));
    json!({
        "policies": (0..n).map(|k| policy(k, n)).collect::<Vec<_>>(),
        "pods": pods,
        "namespaces": {},
        "nodes": [],
    })
}

fn put_policy(side: &Side, n: usize) -> Result<()> {
    let report: Value = sextant_agent_api::blocking::call_json(
        &side.lab.socket,
        "PUT",
        "/v1/policy",
        Some(&snapshot(&side.lab, n)),
        Duration::from_secs(60),
    )?;
    let enforced = report["enforced"].as_array().map_or(0, Vec::len);
    let entries = report["policyEntries"].as_u64().unwrap_or(0);
    // One allow entry per policy: its client's identity on its port.
    if enforced != n || entries < n as u64 || report["rejected"] != json!([]) {
        return Err(anyhow!(
            "{n} policies sent, {enforced} enforced, {entries} map entries: {}",
            report["rejected"]
        ));
    }
    Ok(())
}

fn iptables_rules(n: usize, client: Ipv4Addr, server: Ipv4Addr) -> String {
    let mut r =
        String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    if n > 0 {
        r.push_str(":SEXTANT-POD-FW - [0:0]\n");
        r.push_str("-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
        r.push_str(&format!("-A FORWARD -d {server}/32 -j SEXTANT-POD-FW\n"));
        for k in 0..n {
            let from = if k + 1 == n { client } else { remote(k) };
            r.push_str(&format!(
                "-A SEXTANT-POD-FW -s {from}/32 -p tcp -m tcp --dport {} -j ACCEPT\n",
                port_of(k, n)
            ));
        }
        r.push_str("-A SEXTANT-POD-FW -j DROP\n");
    }
    r.push_str("COMMIT\n");
    r
}

/// With policies in place the closed port must be refused on both sides,
/// else the comparison would measure nothing.
fn check_enforced(side: &Side, what: &str) -> Result<()> {
    match Conn::open(side, CLOSED_PORT, Duration::from_millis(300)) {
        Err(_) => Ok(()),
        Ok(_) => Err(anyhow!(
            "{what}: client reached the server on {CLOSED_PORT}, which no policy opens"
        )),
    }
}

#[derive(Default)]
struct Samples {
    rtt: Vec<Duration>,
    connect: Vec<Duration>,
    /// Per-packet p50 of each round, ms.
    rtt_p50_by_round: Vec<f64>,
}

/// Both labs of one size: [sextant, iptables].
fn mk_pair(i: usize, n: usize) -> Result<([Side; 2], Duration)> {
    let bpf = mk_side(&format!("e{i}"), true)?;
    let t = Instant::now();
    put_policy(&bpf, n)?;
    let pushed = t.elapsed();
    let ipt = mk_side(&format!("i{i}"), false)?;
    common::in_node(&ipt.lab, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None)?;
    common::in_node(
        &ipt.lab,
        &["iptables-restore", "-w"],
        Some(iptables_rules(n, ipt.client, ipt.server)),
    )?;
    if n > 0 {
        check_enforced(&bpf, "sextant")?;
        check_enforced(&ipt, "iptables")?;
    }
    Ok(([bpf, ipt], pushed))
}

fn run() -> Result<()> {
    let started = Instant::now();
    let mut labs = Vec::new();
    let mut pushes = Vec::new();
    for (i, &n) in SIZES.iter().enumerate() {
        let (pair, pushed) = mk_pair(i, n)?;
        labs.push(pair);
        pushes.push(pushed);
    }
    let mut conns = Vec::new();
    for pair in &labs {
        let mut row = Vec::new();
        for side in pair {
            let mut c = Conn::open(side, PORT, Duration::from_secs(3))
                .context("opening the measured flow")?;
            round_trips(&mut c, WARMUP, &mut Vec::new())?;
            row.push(c);
        }
        conns.push(row);
    }
    let built = started.elapsed();
    // One unmeasured pass first: the labs just built are still settling.
    for (pair, row) in labs.iter().zip(&mut conns) {
        for (side, c) in pair.iter().zip(row.iter_mut()) {
            round_trips(c, RTTS, &mut Vec::new())?;
            connects(side, CONNECTS, &mut Vec::new())?;
        }
    }

    // [size][0 = sextant, 1 = iptables]
    let mut s: Vec<[Samples; 2]> = SIZES.iter().map(|_| Default::default()).collect();
    let order: Vec<(usize, usize)> = (0..SIZES.len()).flat_map(|i| [(i, 0), (i, 1)]).collect();
    for round in 0..ROUNDS {
        let from: Vec<[usize; 2]> = s.iter().map(|p| [p[0].rtt.len(), p[1].rtt.len()]).collect();
        for chunk in 0..CHUNKS {
            // Rotate (and every other chunk reverse) who goes first.
            let step = round * CHUNKS + chunk;
            let mut o = order.clone();
            o.rotate_left(step % order.len());
            if step % 2 == 1 {
                o.reverse();
            }
            for (i, j) in o {
                round_trips(&mut conns[i][j], RTTS, &mut s[i][j].rtt)?;
                connects(&labs[i][j], CONNECTS, &mut s[i][j].connect)?;
            }
        }
        for (i, pair) in s.iter_mut().enumerate() {
            for (j, side) in pair.iter_mut().enumerate() {
                let mut r = side.rtt[from[i][j]..].to_vec();
                r.sort();
                side.rtt_p50_by_round.push(common::pct(&r, 50.0));
            }
        }
    }
    for pair in &mut s {
        for side in pair.iter_mut() {
            side.rtt.sort();
            side.connect.sort();
        }
    }
    let lookups = policy_lookups(&labs)?;
    report(&s, &pushes, &lookups);
    println!(
        "P4b run time {:.1} s ({:.1} s building 6 labs and loading their policies)",
        started.elapsed().as_secs_f64(),
        built.as_secs_f64()
    );
    Ok(())
}

/// Packets each sextant lab passed by a policy allow entry. With policies,
/// every request of the measured flow must be among them (the lookup is per
/// packet, not per connection).
fn policy_lookups(labs: &[[Side; 2]]) -> Result<Vec<u64>> {
    let requests = (WARMUP + ROUNDS * CHUNKS * RTTS) as u64;
    let key = "sextant_agent_datapath_packets_total{verdict=\"policy_allowed\"}";
    let mut out = Vec::new();
    for (pair, n) in labs.iter().zip(SIZES) {
        let text = pair[0].lab.metrics()?;
        let allowed: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if n > 0 && allowed < requests {
            return Err(anyhow!(
                "{n} policies: {allowed} packets passed a policy lookup, fewer than the \
                 {requests} requests of the measured flow"
            ));
        }
        out.push(allowed);
    }
    Ok(out)
}

fn report(s: &[[Samples; 2]], pushes: &[Duration], lookups: &[u64]) {
    println!(
        "P4b pod -> pod through n policies selecting the server, the last admitting the client; \
         one lab per datapath and size, all measured in rotation. per-packet = request/answer \
         round trip on one established TCP connection ({} per lab); connect = TCP connect + \
         1 echo ({} per lab); ms",
        ROUNDS * CHUNKS * RTTS,
        ROUNDS * CHUNKS * CONNECTS
    );
    println!(
        "{:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "policies",
        "pkt sxt",
        "pkt ipt",
        "p99 sxt",
        "p99 ipt",
        "conn sxt",
        "conn ipt",
        "p99 sxt",
        "p99 ipt",
        "PUT s",
        "lookups"
    );
    for (i, n) in SIZES.iter().enumerate() {
        let [b, t] = &s[i];
        println!(
            "{n:>8} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>9.4} {:>7.2} {:>9}",
            common::pct(&b.rtt, 50.0),
            common::pct(&t.rtt, 50.0),
            common::pct(&b.rtt, 99.0),
            common::pct(&t.rtt, 99.0),
            common::pct(&b.connect, 50.0),
            common::pct(&t.connect, 50.0),
            common::pct(&b.connect, 99.0),
            common::pct(&t.connect, 99.0),
            pushes[i].as_secs_f64(),
            lookups[i]
        );
    }
    let by_round = |j: usize| {
        SIZES
            .iter()
            .zip(s)
            .map(|(n, p)| {
                let r: Vec<String> = p[j]
                    .rtt_p50_by_round
                    .iter()
                    .map(|v| format!("{v:.4}"))
                    .collect();
                format!("{n}: {}", r.join("/"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "P4b noise, per-packet p50 of each round (ms): sextant {}; iptables {}",
        by_round(0),
        by_round(1)
    );

    type Pick = fn(&Samples) -> &Vec<Duration>;
    let figures: [(&str, Pick); 2] = [
        ("per-packet round trip", |x| &x.rtt),
        ("connect + 1 echo", |x| &x.connect),
    ];
    let mut goals = Vec::new();
    for (label, pick) in figures {
        for p in [50.0, 99.0] {
            let at = |i: usize, j: usize| common::pct(pick(&s[i][j]), p);
            let base = [at(0, 0), at(0, 1)];
            println!(
                "P4b policy {label} p{p:.0} at 0 policies: sextant {:.4} ms, iptables {:.4} ms \
                 (baselines)",
                base[0], base[1]
            );
            for (i, &n) in SIZES.iter().enumerate().skip(1) {
                let v = [at(i, 0), at(i, 1)];
                let added = [v[0] - base[0], v[1] - base[1]];
                println!(
                    "P4b policy {label} p{p:.0} at {n} policies: sextant {:.4} ms ({:+.0}% over 0), \
                     iptables {:.4} ms ({:+.0}% over 0), {}",
                    v[0],
                    100.0 * added[0] / base[0],
                    v[1],
                    100.0 * added[1] / base[1],
                    ratio(added)
                );
                if n == SIZES[SIZES.len() - 1] && p == 50.0 {
                    goals.push((label, n, added, base));
                }
            }
        }
    }
    for (label, n, added, base) in goals {
        let within = 100.0 * added[0] / base[0];
        println!(
            "P4b goal sextant within 10% of its 0-policy baseline at {n} ({label} p50): \
             {within:+.1}% {}",
            if within <= 10.0 { "MET" } else { "MISSED" }
        );
        // Added latency at or below zero counts as none.
        let met = added[1] > 0.0 && added[1] >= 5.0 * added[0].max(0.0);
        println!(
            "P4b goal >= 5x less added latency than iptables at {n} ({label} p50): {} {}",
            ratio(added),
            if met { "MET" } else { "MISSED" }
        );
    }
}

/// Added latency of [sextant, iptables] (ms) as the line's last part.
fn ratio(added: [f64; 2]) -> String {
    let us = |v: f64| format!("{:+.2} us", 1e3 * v);
    if added[0] > 0.0 && added[1] > 0.0 {
        format!(
            "added-latency ratio {:.1}x (sextant {}, iptables {})",
            added[1] / added[0],
            us(added[0]),
            us(added[1])
        )
    } else if added[1] > 0.0 {
        format!(
            "added-latency ratio n/a: sextant added none measurable ({}), iptables {}",
            us(added[0]),
            us(added[1])
        )
    } else {
        format!(
            "added-latency ratio n/a: iptables added none measurable ({}; sextant {})",
            us(added[1]),
            us(added[0])
        )
    }
}
