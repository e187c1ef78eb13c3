//! Kernel tests: real namespaces, veths, BPF programs and packets. Each test
//! builds its own uniquely named lab (node + pod namespaces, bpffs root) and
//! removes it on drop, so tests run in parallel. Without root they fail with
//! the reason, unless `SEXTANT_SKIP=kernel` (see `sextant-testkit`).

use sextant_testkit::prometheus::{Prometheus, wait_for};
use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use sextant_agent_api::{Backend, Frontend, Proto, ServiceSpec};
use sextant_lab::{Lab, in_netns, line_server, spawn_in_netns};

mod support;

fn kernel(what: &str) -> bool {
    support::kernel(file!(), what)
}

fn lab(name: &str, pods: usize) -> Option<Lab> {
    support::lab(file!(), "sx", "10.77.0.0/26", name, pods)
}

/// Pod 0 says `hello` to the tag server on `server`:8080 and returns its answer.
fn hello_from_pod_0(lab: &Lab, server: Ipv4Addr) -> String {
    in_netns(
        &lab.pods[0].name.clone(),
        move || -> std::io::Result<String> {
            let (mut s, mut r) = connect(SocketAddrV4::new(server, 8080))?;
            ask(&mut s, &mut r, "hello")
        },
    )
    .expect("netns")
    .expect("TCP to the other pod")
}

/// A TCP server in pod `pod` on `port` that answers each line with `tag`.
fn tag_server(lab: &Lab, pod: usize, port: u16, tag: String) {
    let ip = lab.pods[pod].ip.expect("pod added");
    line_server(&lab.pods[pod].name, SocketAddrV4::new(ip, port), tag).expect("server listens");
}

fn connect(to: SocketAddrV4) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_nodelay(true)?;
    let r = BufReader::new(s.try_clone()?);
    Ok((s, r))
}

fn ask(s: &mut TcpStream, r: &mut BufReader<TcpStream>, msg: &str) -> std::io::Result<String> {
    s.write_all(format!("{msg}\n").as_bytes())?;
    let mut line = String::new();
    r.read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// TCP `RetransSegs` of the calling thread's network namespace.
fn tcp_retransmits() -> std::io::Result<u64> {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        return Err(std::io::Error::other("no Tcp lines in snmp"));
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RetransSegs")
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| std::io::Error::other("no RetransSegs"))
}

fn counter(lab: &Lab, verdict: &str) -> u64 {
    packets(&lab.metrics().expect("metrics"), verdict)
}

/// The datapath's packet count for `verdict` in Prometheus text.
fn packets(text: &str, verdict: &str) -> u64 {
    let key = format!("sextant_agent_datapath_packets_total{{verdict=\"{verdict}\"}}");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET path` from the agent's TCP admin listener at `addr`, inside the
/// lab's node namespace (where the agent runs).
fn admin_get(lab: &Lab, addr: SocketAddrV4, path: &'static str) -> String {
    in_netns(&lab.node, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nhost: agent\r\nconnection: close\r\n\r\n"
        )?;
        let mut out = String::new();
        std::io::Read::read_to_string(&mut s, &mut out)?;
        Ok(out)
    })
    .expect("netns")
    .expect("the agent's TCP admin listener answers")
}

/// What Prometheus scrapes: the agent's series on TCP (the chart's host
/// port), fresh at every scrape, a datapath counter among them that moves
/// when pods talk, seen moving by a real Prometheus; readiness there too.
#[test]
fn the_agent_serves_metrics_on_tcp_and_a_datapath_counter_moves_with_traffic() {
    let Some(mut lab) = lab("mtcp", 2) else {
        return;
    };
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9964);
    lab.kill_agent();
    lab.start_agent_with(&["--metrics-addr", &addr.to_string()])
        .expect("agent with a metrics listener");
    lab.add(0).expect("ADD 0");
    let server = lab.add(1).expect("ADD 1");
    tag_server(&lab, 1, 8080, "b".into());
    let ready = admin_get(&lab, addr, "/readyz");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let first = admin_get(&lab, addr, "/metrics");
    assert!(
        first.contains("sextant_agent_pool_ips{state=\"allocated\"} 2"),
        "pool gauges refreshed at scrape time: {first}"
    );
    // A real Prometheus (Debian's) in the node's namespace scrapes it.
    let prom = Prometheus::start(
        &[("sextant-agent", addr.to_string())],
        19_964,
        Some(&std::path::Path::new("/var/run/netns").join(&lab.node)),
    )
    .expect("prometheus starts");
    let series = "sextant_agent_datapath_packets_total{job=\"sextant-agent\",verdict=\"forward\"}";
    let scraped = |min: f64| {
        prom.query(series)
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .filter(|v| *v >= min)
    };
    let seen_before = wait_for(
        Duration::from_secs(60),
        "Prometheus to scrape the agent",
        || {
            prom.query("up{job=\"sextant-agent\"}")
                .filter(|(_, v)| v == "1")
                .and_then(|_| scraped(0.0))
        },
    )
    .expect("the agent scraped");
    let before = packets(&first, "forward");
    assert_eq!(hello_from_pod_0(&lab, server), "b hello");
    let after = packets(&admin_get(&lab, addr, "/metrics"), "forward");
    assert!(after > before, "forwarded packets {before} -> {after}");
    let seen_after = wait_for(
        Duration::from_secs(30),
        "Prometheus to see the forwarded packets",
        || scraped(seen_before + 1.0),
    )
    .expect("the counter moved in Prometheus");
    assert!(seen_after > seen_before, "{seen_before} -> {seen_after}");
}

#[test]
fn cni_add_del_check_are_idempotent_and_del_works_with_the_agent_down() {
    let Some(mut lab) = lab("idem", 2) else {
        return;
    };
    let conf = lab.net_conf();
    let (ok, out) = lab.cni("STATUS", 0, &conf).expect("STATUS runs");
    assert!(ok, "STATUS with a ready agent and free IPs: {out}");
    let (ok, out) = lab.cni("VERSION", 0, "").expect("VERSION runs");
    assert!(ok && out.contains("1.1.0"), "{out}");
    let ip = lab.add(0).expect("ADD");
    let again = lab.add(0).expect("second ADD");
    assert_eq!(ip, again, "ADD twice gives the same IP");
    let (ok, out) = lab.cni("CHECK", 0, &conf).expect("CHECK runs");
    assert!(ok, "CHECK right after ADD: {out}");
    let h = lab.health().expect("healthz");
    assert_eq!(h.state, sextant_agent_api::AgentState::Ready);
    assert_eq!(h.ipam.allocated, 1);
    assert_eq!(h.ipam.status, format!("IPv4: 1/{} allocated", h.ipam.pool));
    assert_eq!(h.datapath.endpoints, 1);

    let (ok, out) = lab.cni("DEL", 0, &conf).expect("DEL runs");
    assert!(ok, "DEL: {out}");
    let (ok, out) = lab.cni("DEL", 0, &conf).expect("DEL runs");
    assert!(ok, "second DEL of a gone pod succeeds: {out}");
    let (ok, out) = lab.cni("CHECK", 0, &conf).expect("CHECK runs");
    assert!(!ok, "CHECK after DEL fails");
    assert!(out.contains("\"code\""), "CNI error JSON: {out}");
    assert_eq!(lab.health().expect("healthz").ipam.cooldown, 1);

    lab.add(1).expect("ADD pod 1");
    lab.kill_agent();
    let (ok, out) = lab.cni("DEL", 1, &conf).expect("DEL runs");
    assert!(ok, "DEL with the agent down succeeds: {out}");
    let (ok, out) = lab.cni("ADD", 1, "{not json").expect("ADD runs");
    assert!(!ok);
    let v: serde_json::Value = serde_json::from_str(&out).expect("error JSON");
    assert_eq!(v["code"], 6, "{out}");
}

#[test]
fn checkpoint_restore_keeps_live_pods_and_never_reissues_their_ips() {
    let Some(mut lab) = lab("rest", 3) else {
        return;
    };
    let a = lab.add(0).expect("ADD 0");
    let b = lab.add(1).expect("ADD 1");
    lab.kill_agent();
    // Pod 1 vanishes while the agent is down.
    let p1 = lab.pods[1].name.clone();
    let links = node_links(&lab);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &p1])
        .status();
    // The kernel removes the veth of a destroyed netns asynchronously; a
    // restore that still sees it keeps the pod (its sweep frees it later).
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        node_links(&lab) < links
    });
    assert!(gone, "the kernel removes the veth of a destroyed netns");
    lab.start_agent().expect("restart");
    let h = lab.health().expect("healthz");
    assert_eq!(h.ipam.allocated, 1, "{h:?}");
    assert_eq!(h.ipam.cooldown, 1, "the gone pod's IP waits out a cooldown");
    let c = lab.add(2).expect("ADD 2");
    assert_ne!(c, a);
    assert_ne!(c, b);
}

/// Interfaces in the lab's node namespace.
fn node_links(lab: &Lab) -> usize {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.node, "-o", "link", "show"])
        .output()
        .expect("ip runs");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// A pod whose netns path the agent cannot see (another mount namespace,
/// a path the runtime moved) is alive as long as its host veth is: the
/// restore keeps its IP, and frees it once the netns is really gone.
#[test]
fn a_live_pod_whose_netns_path_the_agent_cannot_see_keeps_its_ip() {
    let Some(mut lab) = lab("hide", 2) else {
        return;
    };
    let a = lab.add(0).expect("ADD 0");
    lab.kill_agent();
    let ns = lab.pods[0].netns();
    let holder = std::env::temp_dir().join(format!("{}-holder", lab.pods[0].name));
    std::fs::write(&holder, b"").expect("holder file");
    let run = |args: &[&str]| {
        let st = std::process::Command::new(args[0])
            .args(&args[1..])
            .status()
            .expect("runs");
        assert!(st.success(), "{args:?}");
    };
    // The netns stays alive through another bind mount; its path is gone.
    run(&[
        "mount",
        "--bind",
        &ns.display().to_string(),
        &holder.display().to_string(),
    ]);
    run(&["umount", &ns.display().to_string()]);
    std::fs::remove_file(&ns).expect("netns path removed");
    lab.start_agent().expect("restart");
    let h = lab.health().expect("healthz");
    assert_eq!(h.ipam.allocated, 1, "the live pod keeps {a}: {h:?}");
    let b = lab.add(1).expect("ADD 1");
    assert_ne!(a, b, "never handed out twice");
    let links = node_links(&lab);
    // Now the netns really goes; its veth with it.
    lab.kill_agent();
    run(&["umount", &holder.display().to_string()]);
    let _ = std::fs::remove_file(&holder);
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        node_links(&lab) < links
    });
    assert!(gone, "the kernel removes the veth of a destroyed netns");
    lab.start_agent().expect("restart");
    let h = lab.health().expect("healthz");
    assert_eq!(h.ipam.allocated, 1, "only pod 1 left: {h:?}");
    assert_eq!(h.ipam.cooldown, 1, "pod 0's IP waits out a cooldown");
}

#[test]
fn pod_to_pod_tcp_goes_through_the_bpf_redirect() {
    let Some(mut lab) = lab("p2p", 2) else { return };
    lab.add(0).expect("ADD 0");
    let server = lab.add(1).expect("ADD 1");
    tag_server(&lab, 1, 8080, "b".into());
    let before = counter(&lab, "forward");
    assert_eq!(hello_from_pod_0(&lab, server), "b hello");
    assert!(
        counter(&lab, "forward") > before,
        "packets were redirected by BPF"
    );
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn service_lab(name: &str) -> Option<Lab> {
    let mut lab = lab(name, 4)?;
    for i in 0..4 {
        lab.add(i).expect("ADD");
    }
    let mut backends = Vec::new();
    for i in 1..4 {
        tag_server(&lab, i, 8080, format!("backend{i}"));
        backends.push(Backend {
            ip: lab.pods[i].ip.expect("ip"),
            port: 8080,
        });
    }
    lab.set_service(&ServiceSpec {
        frontend: Frontend {
            vip: VIP,
            port: 80,
            proto: Proto::Tcp,
        },
        backends,
    })
    .expect("service");
    Some(lab)
}

#[test]
fn cluster_ip_spreads_new_connections_and_keeps_each_on_one_backend() {
    let Some(lab) = service_lab("svc") else {
        return;
    };
    let seen = in_netns(
        &lab.pods[0].name.clone(),
        || -> std::io::Result<Vec<String>> {
            let mut seen = Vec::new();
            for c in 0..30 {
                let (mut s, mut r) = connect(SocketAddrV4::new(VIP, 80))?;
                let first = ask(&mut s, &mut r, &format!("c{c}m0"))?;
                let tag = first.split(' ').next().unwrap_or_default().to_string();
                for m in 1..5 {
                    let again = ask(&mut s, &mut r, &format!("c{c}m{m}"))?;
                    assert_eq!(
                        again,
                        format!("{tag} c{c}m{m}"),
                        "a connection stays on its backend"
                    );
                }
                seen.push(tag);
            }
            Ok(seen)
        },
    )
    .expect("netns")
    .expect("connections through the VIP");
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "30 connections reach all three backends: {seen:?}"
    );
    assert!(counter(&lab, "dnat") > 0 && counter(&lab, "revnat") > 0);
}

#[test]
fn established_tcp_flow_survives_an_agent_restart() {
    let Some(mut lab) = service_lab("r4") else {
        return;
    };
    let client = lab.pods[0].name.clone();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let flow = spawn_in_netns(&client, move || -> std::io::Result<(usize, usize, u64)> {
        let (mut s, mut r) = connect(SocketAddrV4::new(VIP, 80))?;
        let tag = ask(&mut s, &mut r, "m0")?
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        let retrans_before = tcp_retransmits()?;
        let _ = ready_tx.send(());
        let mut n = 1;
        let mut after_restart = 0;
        let mut restarted = false;
        loop {
            if !restarted && go_rx.try_recv().is_ok() {
                restarted = true;
            }
            let got = ask(&mut s, &mut r, &format!("m{n}"))?;
            assert_eq!(got, format!("{tag} m{n}"));
            n += 1;
            if restarted {
                after_restart += 1;
                if after_restart >= 200 {
                    return Ok((n, after_restart, tcp_retransmits()? - retrans_before));
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .expect("client thread");
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("flow established");
    lab.kill_agent();
    std::thread::sleep(Duration::from_millis(300));
    lab.start_agent().expect("agent restarts");
    let h = lab.health().expect("healthz");
    assert_eq!(h.ipam.allocated, 4, "allocations survive");
    assert_eq!(h.datapath.services, 1, "service map re-adopted");
    go_tx.send(()).expect("signal");
    let (sent, after, retransmits) = flow
        .join()
        .expect("thread")
        .expect("netns")
        .expect("flow never broke");
    assert!(sent > after && after >= 200);
    assert_eq!(
        retransmits, 0,
        "no segment of the flow was lost across the restart"
    );
}

#[test]
fn lab_demo_reaches_every_pod_and_the_service() {
    if !kernel("lab demo") {
        return;
    }
    let report = sextant_lab::demo(
        std::path::Path::new(env!("CARGO_BIN_EXE_sextant-agent")),
        std::path::Path::new(env!("CARGO_BIN_EXE_sextant-cni")),
        4,
    )
    .expect("lab runs");
    let table = report.to_string();
    assert!(report.probes.iter().all(|p| p.answer.is_ok()), "{table}");
    assert_eq!(report.policy.len(), 4, "{table}");
    assert!(
        report
            .policy
            .iter()
            .all(|(p, allowed)| p.answer.is_ok() == *allowed),
        "the example policy allows and denies as written:\n{table}"
    );
    assert_eq!(
        report.health.state,
        sextant_agent_api::AgentState::Ready,
        "{table}"
    );
    assert!(table.contains("10.96.0.10:80"), "{table}");
}

#[test]
fn datapath_pins_are_readopted_with_their_maps() {
    if !kernel("datapath re-adoption") {
        return;
    }
    let root = std::path::PathBuf::from(format!(
        "/sys/fs/bpf/sextant-test-adopt-{}",
        std::process::id()
    ));
    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = sextant_agent::datapath::remove_pins(&self.0);
        }
    }
    let _pins = Pins(root.clone());
    let fe = Frontend {
        vip: Ipv4Addr::new(10, 96, 1, 1),
        port: 53,
        proto: Proto::Udp,
    };
    {
        let mut dp = sextant_agent::datapath::Datapath::open(&root).expect("fresh load");
        assert!(!dp.adopted());
        dp.set_service(
            &fe,
            &[Backend {
                ip: Ipv4Addr::new(10, 0, 0, 9),
                port: 5353,
            }],
        )
        .expect("service");
    }
    let mut dp = sextant_agent::datapath::Datapath::open(&root).expect("re-open");
    assert!(dp.adopted(), "pins of the previous instance are re-adopted");
    assert_eq!(dp.service_count(), 1, "maps keep their entries");
    dp.remove_service(&fe).expect("remove");
    assert_eq!(dp.service_count(), 0);
}
