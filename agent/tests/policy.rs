//! Network policy on the real kernel: pods in namespaces, the real agent,
//! CNI and BPF programs, policies sent as the control plane would
//! (`PUT /v1/policy`), and TCP connections that must pass or be dropped.
//! Without root the tests fail with the reason, unless `SEXTANT_SKIP=kernel`
//! (see `sextant-testkit`).

use std::{
    io::{BufRead, BufReader, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpStream},
    time::Duration,
};

use serde_json::{Value, json};
use sextant_agent::datapath::{CtTimeouts, Datapath, Endpoint};
use sextant_agent_api::{Backend, Frontend, Proto, ServiceSpec};
use sextant_lab::{Lab, LabConfig, in_netns, line_server};

mod support;

fn kernel(what: &str) -> bool {
    support::kernel(file!(), what)
}

fn lab(name: &str, pods: usize) -> Option<Lab> {
    let mut lab = support::lab(file!(), "sp", "10.76.0.0/26", name, pods)?;
    for i in 0..pods {
        lab.add(i).expect("ADD");
    }
    Some(lab)
}

/// A TCP server in netns `ns` on `ip:port` answering each line with `tag line`.
fn server(ns: &str, ip: Ipv4Addr, port: u16, tag: &str) {
    line_server(ns, SocketAddrV4::new(ip, port), tag.to_string()).expect("server listens");
}

struct Conn {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn ask(&mut self, msg: &str) -> std::io::Result<String> {
        self.w.write_all(format!("{msg}\n").as_bytes())?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        Ok(line.trim().to_string())
    }
}

/// Opens a connection from inside pod netns `ns`; the socket keeps its netns.
fn open(ns: &str, to: SocketAddrV4) -> std::io::Result<Conn> {
    in_netns(ns, move || -> std::io::Result<Conn> {
        let s = TcpStream::connect_timeout(&to.into(), Duration::from_millis(800))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    })
    .expect("netns")
}

/// Whether one request/answer over a new connection works.
fn reaches(ns: &str, to: SocketAddrV4) -> bool {
    open(ns, to).and_then(|mut c| c.ask("ping")).is_ok()
}

fn pod(lab: &Lab, i: usize, labels: Value) -> Value {
    json!({"namespace": "lab", "name": lab.pods[i].name, "labels": labels})
}

fn put_policy(lab: &Lab, snap: &Value) -> Value {
    sextant_agent_api::blocking::call_json(
        &lab.socket,
        "PUT",
        "/v1/policy",
        Some(snap),
        Duration::from_secs(10),
    )
    .expect("PUT /v1/policy")
}

fn metric(lab: &Lab, prefix: &str) -> u64 {
    let text = lab.metrics().expect("metrics");
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn seed_policy() -> Value {
    let mut p: Value =
        serde_yaml::from_str(include_str!("../../docs/examples/protected-db-policy.yaml"))
            .expect("the example is YAML");
    p["metadata"]["namespace"] = json!("lab");
    p
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 7, 9);

#[test]
fn seed_example_lets_only_employees_reach_the_protected_db_on_6379() {
    let Some(lab) = lab("seed", 3) else {
        return;
    };
    let (employee, db, visitor) = (lab.pods[0].name.clone(), 1, lab.pods[2].name.clone());
    let db_ip = lab.pods[db].ip.expect("ip");
    server(&lab.pods[db].name, db_ip, 6379, "redis");
    server(&lab.pods[db].name, db_ip, 6380, "other");
    lab.set_service(&ServiceSpec {
        frontend: Frontend {
            vip: VIP,
            port: 6379,
            proto: Proto::Tcp,
        },
        backends: vec![Backend {
            ip: db_ip,
            port: 6379,
        }],
    })
    .expect("service");
    let redis = SocketAddrV4::new(db_ip, 6379);
    let other_port = SocketAddrV4::new(db_ip, 6380);
    assert!(reaches(&visitor, redis), "no policy yet: open");

    let report = put_policy(
        &lab,
        &json!({
            "policies": [seed_policy()],
            "pods": [
                pod(&lab, 0, json!({"app": "employee"})),
                pod(&lab, 1, json!({"app": "protected-db"})),
                pod(&lab, 2, json!({"app": "visitor"})),
            ],
        }),
    );
    assert_eq!(report["rejected"], json!([]), "{report}");
    assert_eq!(
        report["enforced"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );

    assert!(reaches(&employee, redis), "employee -> db:6379 is allowed");
    assert!(
        reaches(&employee, SocketAddrV4::new(VIP, 6379)),
        "and so through the ClusterIP (policy sees the backend)"
    );
    assert!(
        !reaches(&employee, other_port),
        "employee -> db:6380 is not"
    );
    assert!(!reaches(&visitor, redis), "visitor -> db:6379 is not");
    assert!(
        !reaches(&visitor, SocketAddrV4::new(VIP, 6379)),
        "nor through the ClusterIP"
    );
    // The db itself is not selected for egress: it still reaches others.
    server(&employee, lab.pods[0].ip.expect("ip"), 7000, "emp");
    assert!(reaches(
        &lab.pods[db].name,
        SocketAddrV4::new(lab.pods[0].ip.expect("ip"), 7000)
    ));

    assert!(
        metric(
            &lab,
            "sextant_agent_datapath_packets_total{verdict=\"policy_denied_ingress\"}"
        ) > 0
    );
    assert!(
        metric(
            &lab,
            "sextant_agent_policy_verdicts_total{policy=\"SextantNetworkPolicy/lab/protected-db\"}"
        ) > 0,
        "{}",
        lab.metrics().expect("metrics")
    );
}

#[test]
fn egress_rules_with_endpoints_and_cidrs_with_except() {
    let Some(lab) = lab("egr", 3) else {
        return;
    };
    let (client, srv, other) = (0, 1, 2);
    // Two addresses outside the cluster, on the node's loopback.
    let node = lab.node.clone();
    for args in [
        ["addr", "add", "198.51.100.1/32", "dev", "lo"],
        ["addr", "add", "198.51.100.200/32", "dev", "lo"],
    ] {
        let st = std::process::Command::new("ip")
            .arg("-n")
            .arg(&node)
            .args(args)
            .status()
            .expect("ip");
        assert!(st.success(), "ip {args:?}");
    }
    server(&node, Ipv4Addr::new(198, 51, 100, 1), 9000, "ext1");
    server(&node, Ipv4Addr::new(198, 51, 100, 200), 9000, "ext200");
    for i in [srv, other] {
        server(&lab.pods[i].name, lab.pods[i].ip.expect("ip"), 8080, "app");
    }
    let policy = json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "client-egress", "namespace": "lab"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "client"}},
            "egress": [
                {"toEndpoints": [{"matchLabels": {"app": "server"}}],
                 "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]},
                {"toCIDRSet": [{"cidr": "198.51.100.0/24", "except": ["198.51.100.128/25"]}],
                 "toPorts": [{"ports": [{"port": "9000", "protocol": "TCP"}]}]}
            ]
        }
    });
    let report = put_policy(
        &lab,
        &json!({
            "policies": [policy],
            "pods": [
                pod(&lab, client, json!({"app": "client"})),
                pod(&lab, srv, json!({"app": "server"})),
                pod(&lab, other, json!({"app": "other"})),
            ],
        }),
    );
    assert_eq!(report["rejected"], json!([]), "{report}");
    let c = lab.pods[client].name.clone();
    let at = |i: usize| SocketAddrV4::new(lab.pods[i].ip.expect("ip"), 8080);
    assert!(reaches(&c, at(srv)), "to app=server on 8080");
    assert!(!reaches(&c, at(other)), "not to app=other");
    assert!(
        reaches(&c, SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 9000)),
        "CIDR"
    );
    assert!(
        !reaches(
            &c,
            SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 200), 9000)
        ),
        "the except carves .128/25 out"
    );
    assert!(
        reaches(&lab.pods[other].name, at(srv)),
        "pods the policy does not select keep full egress"
    );
    assert!(
        metric(
            &lab,
            "sextant_agent_datapath_packets_total{verdict=\"policy_denied_egress\"}"
        ) > 0
    );
}

#[test]
fn policy_change_applies_to_new_flows_and_keeps_allowed_established_ones() {
    let Some(lab) = lab("chg", 2) else {
        return;
    };
    let emp = lab.pods[0].name.clone();
    let db_ip = lab.pods[1].ip.expect("ip");
    server(&lab.pods[1].name, db_ip, 6379, "redis");
    server(&lab.pods[1].name, db_ip, 6380, "other");
    let pods = json!([
        pod(&lab, 0, json!({"app": "employee"})),
        pod(&lab, 1, json!({"app": "protected-db"})),
    ]);
    put_policy(&lab, &json!({"policies": [seed_policy()], "pods": pods}));
    let mut flow = open(&emp, SocketAddrV4::new(db_ip, 6379)).expect("allowed");
    assert_eq!(flow.ask("a").expect("answer"), "redis a");
    assert!(!reaches(&emp, SocketAddrV4::new(db_ip, 6380)));

    // Widen the policy to 6379-6380: the established flow keeps going.
    let mut wider = seed_policy();
    wider["spec"]["ingress"][0]["toPorts"][0]["ports"][0] =
        json!({"port": "6379", "endPort": 6380, "protocol": "TCP"});
    let report = put_policy(&lab, &json!({"policies": [wider], "pods": pods}));
    assert!(report["changes"].as_u64().unwrap_or(0) > 0, "{report}");
    for i in 0..20 {
        assert_eq!(
            flow.ask(&format!("m{i}"))
                .expect("established flow answered"),
            format!("redis m{i}")
        );
    }
    assert!(
        reaches(&emp, SocketAddrV4::new(db_ip, 6380)),
        "new rule applies"
    );

    // Take employees out: new connections are refused.
    let mut admins_only = seed_policy();
    admins_only["spec"]["ingress"][0]["fromEndpoints"][0]["matchLabels"] = json!({"app": "admin"});
    put_policy(&lab, &json!({"policies": [admins_only], "pods": pods}));
    assert!(!reaches(&emp, SocketAddrV4::new(db_ip, 6379)));
}

#[test]
fn conntrack_sweep_removes_only_idle_entries() {
    let Some(lab) = lab("ct", 2) else {
        return;
    };
    let ip = lab.pods[1].ip.expect("ip");
    server(&lab.pods[1].name, ip, 8080, "b");
    lab.set_service(&ServiceSpec {
        frontend: Frontend {
            vip: VIP,
            port: 80,
            proto: Proto::Tcp,
        },
        backends: vec![Backend { ip, port: 8080 }],
    })
    .expect("service");
    assert!(reaches(&lab.pods[0].name, SocketAddrV4::new(VIP, 80)));
    // The agent's own pins, opened beside it.
    let mut dp = Datapath::open(&lab.bpf_root).expect("adopt the lab's datapath");
    let fresh = dp.sweep_conntrack(CtTimeouts::default());
    assert_eq!(fresh.expired, 0, "nothing is idle for hours");
    assert!(
        fresh.live >= 4,
        "service and policy entries of the flow: {fresh:?}"
    );
    let aged = dp.sweep_conntrack(CtTimeouts {
        tcp: Duration::ZERO,
        other: Duration::ZERO,
    });
    assert_eq!(aged.expired, fresh.live, "{aged:?}");
    assert_eq!(dp.sweep_conntrack(CtTimeouts::default()).live, 0);
    assert!(
        reaches(&lab.pods[0].name, SocketAddrV4::new(VIP, 80)),
        "new flows still work"
    );
}

#[test]
fn fail_open_opens_selected_pods_when_the_control_plane_stays_away_and_a_sync_restores() {
    if !kernel("fail-open") {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        prefix: format!("spfo{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.76.0.0/26".into(),
        pods: 3,
        datapath: true,
    })
    .expect("lab namespaces");
    lab.start_agent_with(&[
        "--policy-fail-open-after",
        "3s",
        "--policy-fail-open-selector",
        "tier=critical",
    ])
    .expect("agent starts");
    for i in 0..3 {
        lab.add(i).expect("ADD");
    }
    let visitor = lab.pods[0].name.clone();
    let at = |i: usize| SocketAddrV4::new(lab.pods[i].ip.expect("ip"), 6379);
    for i in [1, 2] {
        server(
            &lab.pods[i].name,
            lab.pods[i].ip.expect("ip"),
            6379,
            "redis",
        );
    }
    let snap = json!({
        "policies": [seed_policy()],
        "pods": [
            pod(&lab, 0, json!({"app": "visitor"})),
            pod(&lab, 1, json!({"app": "protected-db", "tier": "critical"})),
            pod(&lab, 2, json!({"app": "protected-db"})),
        ],
    });
    let synced = std::time::Instant::now();
    put_policy(&lab, &snap);
    assert!(
        !reaches(&visitor, at(1)),
        "enforced while the control plane is there"
    );
    std::thread::sleep(Duration::from_millis(4500).saturating_sub(synced.elapsed()));
    assert_eq!(metric(&lab, "sextant_agent_policy_fail_open "), 1);
    assert_eq!(
        metric(&lab, "sextant_agent_policy_fail_open_engagements_total"),
        1
    );
    assert!(reaches(&visitor, at(1)), "the selected pod is opened");
    assert!(
        !reaches(&visitor, at(2)),
        "pods the selector leaves out stay enforced"
    );
    put_policy(&lab, &snap);
    assert_eq!(metric(&lab, "sextant_agent_policy_fail_open "), 0);
    assert!(!reaches(&visitor, at(1)), "a sync restores enforcement");
}

/// Runs `ip args`, failing the test with its stderr.
fn ip_cmd(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Another "node": a netns joined to the lab node by a veth pair, the node
/// side `node_ip`/24, the far side `remote_ip`/24 routing everything through
/// the node. Deleted with the netns on drop.
struct RemoteNode {
    netns: String,
}

impl RemoteNode {
    fn new(lab: &Lab, tag: &str, node_ip: &str, remote_ip: &str) -> Self {
        let id = std::process::id() % 100_000;
        let netns = format!("{}-{tag}", lab.node);
        let (near, far) = (format!("{tag}{id}a"), format!("{tag}{id}b"));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns])
            .status();
        ip_cmd(&["netns", "add", &netns]);
        let rn = RemoteNode { netns };
        ip_cmd(&[
            "-n", &lab.node, "link", "add", &near, "type", "veth", "peer", "name", &far, "netns",
            &rn.netns,
        ]);
        ip_cmd(&[
            "-n",
            &lab.node,
            "addr",
            "add",
            &format!("{node_ip}/24"),
            "dev",
            &near,
        ]);
        ip_cmd(&["-n", &lab.node, "link", "set", &near, "up"]);
        ip_cmd(&["-n", &rn.netns, "link", "set", "lo", "up"]);
        ip_cmd(&[
            "-n",
            &rn.netns,
            "addr",
            "add",
            &format!("{remote_ip}/24"),
            "dev",
            &far,
        ]);
        ip_cmd(&["-n", &rn.netns, "link", "set", &far, "up"]);
        ip_cmd(&["-n", &rn.netns, "route", "add", "default", "via", node_ip]);
        let st = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.node,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .expect("sysctl");
        assert!(st.success(), "forwarding on the lab node");
        rn
    }
}

impl Drop for RemoteNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn another_nodes_address_is_remote_node_denied_by_default_deny_and_allowed_by_from_entities() {
    let Some(lab) = lab("rnode", 1) else {
        return;
    };
    let db_ip = lab.pods[0].ip.expect("ip");
    server(&lab.pods[0].name, db_ip, 8080, "db");
    let (this_node, other_node) = ("192.0.2.1", "192.0.2.2");
    let rn = RemoteNode::new(&lab, "rn", this_node, other_node);
    let db = SocketAddrV4::new(db_ip, 8080);
    assert!(
        reaches(&rn.netns, db),
        "no policy yet: the other node reaches the pod"
    );

    let with_rule = |rules: Value| {
        json!({
            "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "db", "namespace": "lab"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "db"}}, "ingress": rules}
        })
    };
    let snap = |policy: Value| {
        json!({
            "policies": [policy],
            "pods": [pod(&lab, 0, json!({"app": "db"}))],
            // The API lists every node's InternalIP; this node's are also `host`.
            "nodes": [this_node, other_node],
            "host": [this_node],
        })
    };
    let deny = with_rule(json!([{"fromEndpoints": [{"matchLabels": {"app": "employee"}}]}]));
    let report = put_policy(&lab, &snap(deny));
    assert_eq!(report["rejected"], json!([]), "{report}");
    assert!(
        !reaches(&rn.netns, db),
        "another node's address is remote-node: default deny holds (it was host before)"
    );
    // The local host stays allowed (kubelet probes), from its own address.
    let from_host = open(&lab.node, db).expect("this node reaches its pod");
    assert_eq!(
        from_host
            .w
            .local_addr()
            .expect("local addr")
            .ip()
            .to_string(),
        this_node,
        "the probe comes from this node's address"
    );
    let mut from_host = from_host;
    assert_eq!(from_host.ask("probe").expect("answer"), "db probe");

    let allow = with_rule(json!([
        {"fromEndpoints": [{"matchLabels": {"app": "employee"}}]},
        {"fromEntities": ["remote-node"], "toPorts": [{"ports": [{"port": "8080", "protocol": "TCP"}]}]}
    ]));
    let report = put_policy(&lab, &snap(allow));
    assert_eq!(report["rejected"], json!([]), "{report}");
    assert!(
        reaches(&rn.netns, db),
        "fromEntities: [remote-node] admits it"
    );
    assert!(
        metric(
            &lab,
            "sextant_agent_datapath_packets_total{verdict=\"policy_denied_ingress\"}"
        ) > 0,
        "{}",
        lab.metrics().expect("metrics")
    );
}

/// Receives UDP datagrams on `at` in netns `ns` until `quiet` passes without
/// one; returns their sources.
fn udp_sink(
    ns: &str,
    at: SocketAddrV4,
    quiet: Duration,
) -> std::thread::JoinHandle<sextant_lab::Result<Vec<Ipv4Addr>>> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let h = sextant_lab::spawn_in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(at).expect("udp bind");
        s.set_read_timeout(Some(quiet)).expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut from = Vec::new();
        let mut buf = [0u8; 64];
        while let Ok((_, src)) = s.recv_from(&mut buf) {
            if let std::net::SocketAddr::V4(v4) = src {
                from.push(*v4.ip());
            }
        }
        from
    })
    .expect("netns");
    ready_rx.recv().expect("sink ready");
    h
}

/// Sends three datagrams from `from` (an address of netns `ns`) to `to`.
fn udp_send(ns: &str, from: Ipv4Addr, to: SocketAddrV4) {
    in_netns(ns, move || {
        let s = std::net::UdpSocket::bind(SocketAddrV4::new(from, 0)).expect("bind source");
        for _ in 0..3 {
            s.send_to(b"hello", to).expect("send");
        }
    })
    .expect("netns");
}

#[test]
fn a_pod_sending_from_an_address_not_its_own_is_dropped_and_counted() {
    let Some(lab) = lab("spoof", 2) else {
        return;
    };
    let (forger, victim) = (lab.pods[0].name.clone(), 1);
    let real = lab.pods[0].ip.expect("ip");
    let victim_ip = lab.pods[victim].ip.expect("ip");
    // Addresses the pod has no right to: an unused pool address and another
    // node's, both added to its own eth0 so the kernel lets it bind them.
    let forged = [Ipv4Addr::new(10, 76, 0, 61), Ipv4Addr::new(192, 0, 2, 99)];
    for f in forged {
        ip_cmd(&[
            "-n",
            &forger,
            "addr",
            "add",
            &format!("{f}/32"),
            "dev",
            "eth0",
        ]);
    }
    let at = SocketAddrV4::new(victim_ip, 9999);
    let sink = udp_sink(&lab.pods[victim].name, at, Duration::from_millis(1500));
    for f in forged {
        udp_send(&forger, f, at);
    }
    udp_send(&forger, real, at);
    let got = sink.join().expect("sink thread").expect("netns");
    assert!(
        got.contains(&real),
        "the pod's own address still works: {got:?}"
    );
    for f in forged {
        assert!(
            !got.contains(&f),
            "a datagram forged from {f} was delivered: {got:?}"
        );
    }
    let dropped = metric(
        &lab,
        "sextant_agent_datapath_drops_total{reason=\"spoofed_source\"}",
    );
    assert!(dropped >= 6, "6 forged datagrams, {dropped} counted");
    // TCP from the real address is unaffected.
    for f in forged {
        ip_cmd(&[
            "-n",
            &forger,
            "addr",
            "del",
            &format!("{f}/32"),
            "dev",
            "eth0",
        ]);
    }
    server(&lab.pods[victim].name, victim_ip, 8080, "v");
    assert!(reaches(&forger, SocketAddrV4::new(victim_ip, 8080)));
}

#[test]
fn an_oversized_policy_is_refused_while_the_others_keep_enforcing() {
    if !kernel("budget") {
        return;
    }
    let mut lab = Lab::new(LabConfig {
        prefix: format!("spbu{}", std::process::id() % 100_000),
        agent_bin: env!("CARGO_BIN_EXE_sextant-agent").into(),
        cni_bin: env!("CARGO_BIN_EXE_sextant-cni").into(),
        pool: "10.76.0.0/26".into(),
        pods: 3,
        datapath: true,
    })
    .expect("lab namespaces");
    lab.start_agent_with(&["--policy-max-entries-per-policy", "50"])
        .expect("agent starts");
    for i in 0..3 {
        lab.add(i).expect("ADD");
    }
    let (employee, db, visitor) = (0, 1, 2);
    let ip = |i: usize| lab.pods[i].ip.expect("ip");
    server(&lab.pods[db].name, ip(db), 6379, "redis");
    server(&lab.pods[employee].name, ip(employee), 7000, "emp");
    // 200 single ports on the employee pod: 200 entries, over the budget of 50.
    let ports: Vec<Value> = (1000..1200)
        .map(|p| json!({"port": p.to_string(), "protocol": "TCP"}))
        .collect();
    let huge = json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "huge", "namespace": "lab"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "employee"}},
            "ingress": [{"toPorts": [{"ports": ports}]}]
        }
    });
    let report = put_policy(
        &lab,
        &json!({
            "policies": [seed_policy(), huge],
            "pods": [
                pod(&lab, employee, json!({"app": "employee"})),
                pod(&lab, db, json!({"app": "protected-db"})),
                pod(&lab, visitor, json!({"app": "visitor"})),
            ],
        }),
    );
    let rejected = report["rejected"].as_array().expect("rejected");
    assert_eq!(rejected.len(), 1, "{report}");
    assert_eq!(rejected[0]["policy"], "SextantNetworkPolicy/lab/huge");
    assert_eq!(rejected[0]["reason"], "TooLarge");
    assert!(
        rejected[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("200 policy map entries")),
        "{report}"
    );
    assert_eq!(
        report["enforced"],
        json!(["SextantNetworkPolicy/lab/protected-db"])
    );
    assert!(
        report["policyEntries"].as_u64().unwrap_or(u64::MAX) < 50,
        "{report}"
    );
    // The other policy keeps enforcing; the refused one is not applied.
    let redis = SocketAddrV4::new(ip(db), 6379);
    assert!(reaches(&lab.pods[employee].name, redis));
    assert!(!reaches(&lab.pods[visitor].name, redis));
    assert!(
        reaches(
            &lab.pods[visitor].name,
            SocketAddrV4::new(ip(employee), 7000)
        ),
        "the refused policy's subject is not default-deny"
    );
    assert_eq!(
        metric(&lab, "sextant_agent_policies{state=\"too_large\"}"),
        1
    );
}

#[test]
fn entries_of_objects_deleted_while_the_agent_was_down_are_gone_after_a_restart() {
    let Some(mut lab) = lab("stale", 3) else {
        return;
    };
    let (employee, db, visitor) = (0, 1, 2);
    let db_ip = lab.pods[db].ip.expect("ip");
    server(&lab.pods[db].name, db_ip, 6379, "redis");
    let redis = SocketAddrV4::new(db_ip, 6379);
    let pods = json!([
        pod(&lab, employee, json!({"app": "employee"})),
        pod(&lab, db, json!({"app": "protected-db"})),
        pod(&lab, visitor, json!({"app": "visitor"})),
    ]);
    let gone_node = Ipv4Addr::new(192, 0, 2, 50);
    let report = put_policy(
        &lab,
        &json!({"policies": [seed_policy()], "pods": pods, "nodes": [gone_node.to_string()]}),
    );
    assert_eq!(report["rejected"], json!([]), "{report}");
    assert!(!reaches(&lab.pods[visitor].name, redis), "enforced");

    // The agent goes away; meanwhile the policy and a node are deleted and a
    // pod of this node is gone (its endpoint left in the pinned map).
    lab.kill_agent();
    let gone_pod = Ipv4Addr::new(10, 76, 0, 50);
    {
        let mut dp = Datapath::open(&lab.bpf_root).expect("the pinned datapath");
        dp.upsert_endpoint(
            gone_pod,
            &Endpoint {
                ifindex: 999_999,
                identity: 4242,
                mac: [2, 0, 0, 0, 0, 1],
                host_mac: [2, 0, 0, 0, 0, 2],
            },
        )
        .expect("endpoint");
        assert!(dp.policy_count() > 0 && !dp.enforced().is_empty());
    }
    lab.start_agent().expect("agent restarts");
    let dp = Datapath::open(&lab.bpf_root).expect("the pinned datapath");
    assert!(
        !dp.endpoint_ips().contains(&gone_pod),
        "a stale endpoint is removed before the agent reports ready"
    );
    assert!(dp.endpoint_ips().contains(&db_ip), "live endpoints stay");

    // The control plane's state now: no policy, no such node.
    put_policy(&lab, &json!({"policies": [], "pods": pods}));
    assert_eq!(dp.policy_count(), 0, "stale allow entries");
    assert!(dp.enforced().is_empty(), "stale default-deny");
    assert!(
        !dp.ipcache_keys().contains(&(gone_node, 32)),
        "stale ipcache entry of the deleted node"
    );
    assert!(
        reaches(&lab.pods[visitor].name, redis),
        "the deleted policy no longer denies"
    );
}

/// Program ids of the tc filters (ingress, egress) on every host veth of the lab node.
fn filter_ids(lab: &Lab) -> Vec<(String, String, u32)> {
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.node, "-o", "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut ids = Vec::new();
    for name in links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("sx"))
    {
        for dir in ["ingress", "egress"] {
            let out = std::process::Command::new("tc")
                .args(["-n", &lab.node, "filter", "show", "dev", &name, dir])
                .output()
                .expect("tc");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let id = text
                .split_whitespace()
                .skip_while(|w| *w != "id")
                .nth(1)
                .and_then(|w| w.parse::<u32>().ok())
                .unwrap_or_else(|| panic!("no bpf filter on {name} {dir}: {text}"));
            ids.push((name.clone(), dir.to_string(), id));
        }
    }
    ids
}

/// TCP segments retransmitted in netns `ns` so far.
fn retransmits(ns: &str) -> u64 {
    in_netns(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").expect("snmp");
        let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
        let (names, values) = (tcp[0].split_whitespace(), tcp[1].split_whitespace());
        names
            .zip(values)
            .find(|(n, _)| *n == "RetransSegs")
            .and_then(|(_, v)| v.parse().ok())
            .expect("RetransSegs")
    })
    .expect("netns")
}

#[test]
fn an_agent_of_another_build_replaces_the_programs_in_place_without_dropping_a_flow() {
    let Some(mut lab) = lab("upg", 2) else {
        return;
    };
    let ip1 = lab.pods[1].ip.expect("ip");
    server(&lab.pods[1].name, ip1, 7000, "b");
    let client = lab.pods[0].name.clone();
    let mut flow = open(&client, SocketAddrV4::new(ip1, 7000)).expect("flow");
    assert_eq!(flow.ask("a").expect("answer"), "b a");
    let version = sextant_agent::datapath::program_version();
    assert_eq!(
        sextant_agent::datapath::pinned_version(&lab.bpf_root),
        Some(version.clone())
    );
    let before = filter_ids(&lab);
    assert_eq!(before.len(), 4, "two pods, two filters each: {before:?}");

    // The pins now say another build loaded them (as after an upgrade).
    std::fs::rename(
        lab.bpf_root.join(format!("version-{version}")),
        lab.bpf_root.join("version-0123456789abcdef"),
    )
    .expect("rename the version record");
    let retrans = retransmits(&client);
    // The flow keeps talking while the agent restarts and swaps programs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut answered = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let m = format!("m{answered}");
                match flow.ask(&m) {
                    Ok(a) if a == format!("b {m}") => answered += 1,
                    other => return Err(format!("after {answered}: {other:?}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(answered)
        })
    };
    lab.kill_agent();
    lab.start_agent().expect("the new agent starts");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answered = talker
        .join()
        .expect("talker")
        .expect("the established flow kept answering");
    assert!(answered > 10, "{answered}");
    assert_eq!(
        retransmits(&client),
        retrans,
        "no segment was retransmitted"
    );

    let after = filter_ids(&lab);
    assert_eq!(after.len(), before.len());
    for ((name, dir, old), (_, _, new)) in before.iter().zip(&after) {
        assert_ne!(old, new, "{name} {dir} still runs the old program");
    }
    assert_eq!(
        sextant_agent::datapath::pinned_version(&lab.bpf_root),
        Some(version),
        "the new version is recorded"
    );
    assert!(
        reaches(&client, SocketAddrV4::new(ip1, 7000)),
        "new flows work"
    );
}
