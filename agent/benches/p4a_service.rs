//! P4a: connect latency (TCP handshake + one echo) from a pod to a ClusterIP
//! with 10, 1K and 10K services installed: the BPF service map against
//! kube-proxy-style iptables rules (KUBE-SERVICES -> KUBE-SVC -> KUBE-SEP
//! DNAT, nat PREROUTING) on the same veth path, in one run. The measured
//! service is the last one installed (the end of the iptables chain).

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow};
use sextant_agent_api::{Backend, Frontend, Proto, ServiceSpec};
use sextant_lab::{Lab, LabConfig, in_netns, line_server};

const SIZES: [usize; 3] = [10, 1_000, 10_000];
const CONNECTIONS: usize = 300;

fn vip(i: usize) -> Ipv4Addr {
    let i = u32::try_from(i).unwrap_or(0) + 1;
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn main() {
    if !common::can_run("P4a") || !common::has_iptables("P4a") {
        return;
    }
    if let Err(e) = run() {
        println!("P4a: FAILED: {e:#}");
        std::process::exit(1);
    }
}

fn mk_lab(tag: &str, datapath: bool) -> Result<Lab> {
    let mut lab = Lab::new(LabConfig {
        prefix: format!("p4{tag}{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.80.0.0/28".into(),
        pods: 2,
        datapath,
    })?;
    lab.start_agent()?;
    lab.add(0)?;
    let backend = lab.add(1)?;
    line_server(
        &lab.pods[1].name,
        SocketAddrV4::new(backend, 8080),
        "echo".into(),
    )?;
    Ok(lab)
}

fn measure(lab: &Lab, target: Ipv4Addr) -> Result<Vec<Duration>> {
    in_netns(
        &lab.pods[0].name.clone(),
        move || -> std::io::Result<Vec<Duration>> {
            let mut out = Vec::with_capacity(CONNECTIONS);
            for i in 0..CONNECTIONS + 20 {
                let t = Instant::now();
                let s = TcpStream::connect_timeout(
                    &SocketAddrV4::new(target, 80).into(),
                    Duration::from_secs(3),
                )?;
                s.set_read_timeout(Some(Duration::from_secs(3)))?;
                s.set_nodelay(true)?;
                let mut w = s.try_clone()?;
                w.write_all(b"ping\n")?;
                let mut line = String::new();
                BufReader::new(s).read_line(&mut line)?;
                if i >= 20 {
                    out.push(t.elapsed());
                }
            }
            out.sort();
            Ok(out)
        },
    )?
    .with_context(|| format!("connecting to {target}:80"))
}

fn iptables_rules(n: usize, backend: Ipv4Addr) -> String {
    let mut r = String::from(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    for i in 0..n {
        r.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n:KUBE-SEP-{i} - [0:0]\n"));
    }
    r.push_str("-A PREROUTING -j KUBE-SERVICES\n");
    for i in 0..n {
        let v = vip(i);
        r.push_str(&format!(
            "-A KUBE-SERVICES -d {v}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i}\n\
             -A KUBE-SVC-{i} -j KUBE-SEP-{i}\n\
             -A KUBE-SEP-{i} -p tcp -m tcp -j DNAT --to-destination {backend}:8080\n"
        ));
    }
    r.push_str("COMMIT\n");
    r
}

fn run() -> Result<()> {
    let bpf = mk_lab("b", true)?;
    let ipt = mk_lab("i", false)?;
    common::in_node(&ipt, &["sysctl", "-qw", "net.ipv4.ip_forward=1"], None)?;
    let bpf_backend = bpf.pods[1].ip.ok_or_else(|| anyhow!("no backend"))?;
    let ipt_backend = ipt.pods[1].ip.ok_or_else(|| anyhow!("no backend"))?;
    let mut installed = 0;
    let mut rows = Vec::new();
    for n in SIZES {
        for i in installed..n {
            bpf.set_service(&ServiceSpec {
                frontend: Frontend {
                    vip: vip(i),
                    port: 80,
                    proto: Proto::Tcp,
                },
                backends: vec![Backend {
                    ip: bpf_backend,
                    port: 8080,
                }],
            })?;
        }
        installed = n;
        common::in_node(
            &ipt,
            &["iptables-restore", "-w"],
            Some(iptables_rules(n, ipt_backend)),
        )?;
        let target = vip(n - 1);
        let b = measure(&bpf, target)?;
        let t = measure(&ipt, target)?;
        rows.push((
            n,
            common::pct(&b, 50.0),
            common::pct(&b, 99.0),
            common::pct(&t, 50.0),
            common::pct(&t, 99.0),
        ));
    }
    println!(
        "P4a service connect latency (TCP connect + 1 echo, {CONNECTIONS} connections, last service of n):"
    );
    println!(
        "{:>8} {:>12} {:>12} {:>14} {:>14} {:>9} {:>9}",
        "services", "bpf p50 ms", "bpf p99 ms", "iptables p50", "iptables p99", "p50 x", "p99 x"
    );
    for (n, b50, b99, t50, t99) in rows {
        println!(
            "{n:>8} {b50:>12.3} {b99:>12.3} {t50:>14.3} {t99:>14.3} {:>8.2}x {:>8.2}x",
            t50 / b50,
            t99 / b99
        );
        println!(
            "P4a services={n} p99: sextant-bpf {b99:.3} ms, iptables {t99:.3} ms, ratio {:.2}x",
            t99 / b99
        );
    }
    Ok(())
}
