//! The chaos soak of issue 14 against the real control plane: a fixed-IP
//! StatefulSet rolled again and again while its nodes' agents are
//! `kill -9`ed and a node is lost, audited after every round for wrong
//! address ownership (`sextant_e2e::soak::audit`: all counts must be 0).
//!
//! ```text
//!  sextant-operator (chart identity, --provider sim: EC2 latencies and token buckets)
//!        │ NodeNetworks, ENIs, FixedIPs (reserve, move, park)
//!  kube-scheduler ──▶ sextant-scheduler-ext (fixed-IP pods wait for their FixedIP)
//!  kube-apiserver ◀──── kwok nodes soak-0..3, each: netns + real sextant-agent
//!        │              (--no-datapath, NODE_NAME, NodeNetwork from the API)
//!        └─ pods of StatefulSet web ──▶ soak::kubelet (CNI ADD/DEL per pod, pod netns)
//!  after each round: audit(NodeNetworks, every agent's /v1/ipam and health, pods, ADD history)
//! ```
//!
//! Size: 4 nodes, 30 replicas (the issue's figure), 4 rounds: about two
//! minutes here (125 s on 2 shared cores). `SOAK_REPLICAS` and
//! `SOAK_ROUNDS` change them.
//!
//! Rounds: 1 `kill -9` one agent mid-roll and restart it; 2 lose a node
//! mid-roll (its agent dies, the Node is deleted, its pods are evicted) and
//! register a replacement; 3 `kill -9` two agents at once and restart them;
//! 4 `kill -9` the operator leader mid-roll and start a new replica, which
//! takes the Lease over once it expires and carries on with the same cloud
//! (`--sim-state-file`).
//!
//! The operator runs with 20 % of its cloud calls answered "throttled"
//! (`--sim-throttle-ratio`) and writes the simulated VPC to a file
//! (`--sim-state-file`) that the auditor reads as the cloud's own view.
//! The new leader reads the same file when it starts: the cloud outlives
//! the operator as a real one does.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::json;
use sextant_crds::{FixedIP, NodeNetwork};
use sextant_e2e::{
    cluster::{Cluster, Options, eventually, install, supervisor::free_port},
    soak::{
        audit::{self, AgentView, Observation, Row},
        kubelet::Kubelet,
        node::SoakNode,
    },
};
use sextant_testkit::Tier;

const ZONE: &str = "us-east-1a";
/// Full resync (and ENI GC) interval given to the operator.
const RESYNC: Duration = Duration::from_secs(10);
/// How long a round may take to settle.
const SETTLE: Duration = Duration::from_secs(240);

fn env_num(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn values() -> String {
    "provider: sim\nregion: us-east-1\nclusterName: soak\nvpcId: vpc-sim\n\
     ipam:\n  preAllocate: 4\n\
     agent:\n  ipamNodeUpdateRate: 2\n  ipCooldownSeconds: 5\n  noDatapath: true\n"
        .to_owned()
}

fn statefulset(replicas: u32) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "annotations": {"sextant.io/fixed-ip": "true"}},
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {
                    "labels": {"app": "web"},
                    "annotations": {"sextant.io/fixed-ip": "true", "soak/round": "0"},
                },
                "spec": {
                    "nodeSelector": {"type": "kwok"},
                    "terminationGracePeriodSeconds": 0,
                    // The request the webhook adds: the scheduler sends only pods
                    // asking for `sextant.io/ip` to the extender.
                    "containers": [{
                        "name": "web", "image": "registry.k8s.io/pause:3.10",
                        "resources": {
                            "requests": {"sextant.io/ip": "1"},
                            "limits": {"sextant.io/ip": "1"},
                        },
                    }],
                },
            },
        },
    }))
    .expect("StatefulSet")
}

/// The soak's running parts.
struct Soak {
    c: &'static Cluster,
    admin: Client,
    rendered: sextant_e2e::chart::Rendered,
    ns: String,
    nodes: BTreeMap<String, SoakNode>,
    next_node: u8,
    kubelet: Kubelet,
    agent_env: Vec<(&'static str, String)>,
}

impl Soak {
    async fn add_node(&mut self) -> anyhow::Result<()> {
        let i = self.next_node;
        self.next_node += 1;
        let name = format!("soak-{i}");
        let instance = format!(
            "i-0500a{:012}",
            u64::from(i) + u64::from(std::process::id()) * 100
        );
        let node = SoakNode::create(
            self.c,
            &self.rendered,
            i,
            &name,
            ZONE,
            &instance,
            &self.agent_env,
        )
        .await?;
        self.kubelet.add_node(&name, node.socket.clone());
        self.nodes.insert(name, node);
        Ok(())
    }

    async fn pods(&self) -> anyhow::Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.admin.clone(), &self.ns);
        Ok(api.list(&ListParams::default()).await?.items)
    }

    /// The node holding most of the StatefulSet's pods.
    async fn busiest(&self) -> anyhow::Result<String> {
        let mut count: BTreeMap<String, usize> =
            self.nodes.keys().map(|n| (n.clone(), 0)).collect();
        for p in self.pods().await? {
            if let Some(n) = p.spec.and_then(|s| s.node_name)
                && let Some(c) = count.get_mut(&n)
            {
                *c += 1;
            }
        }
        Ok(count
            .into_iter()
            .max_by_key(|(_, c)| *c)
            .map(|(n, _)| n)
            .unwrap_or_default())
    }

    async fn kill_and_restart(&mut self, names: &[String]) -> anyhow::Result<()> {
        for n in names {
            self.nodes.get_mut(n).expect("node").kill_agent();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        for n in names {
            self.nodes
                .get_mut(n)
                .expect("node")
                .start_agent(self.c)
                .await?;
        }
        Ok(())
    }

    /// Node `name` is lost: agent, Node and netns gone; its pods evicted
    /// (force-deleted, as the node lifecycle controller's eviction would);
    /// a replacement node registers.
    async fn lose_node(&mut self, name: &str) -> anyhow::Result<()> {
        let node = self.nodes.remove(name).expect("node");
        self.kubelet.remove_node(name);
        node.lose(&self.admin).await?;
        let api: Api<Pod> = Api::namespaced(self.admin.clone(), &self.ns);
        for p in self.pods().await? {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name) {
                let _ = api
                    .delete(
                        &p.metadata.name.unwrap_or_default(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    )
                    .await;
            }
        }
        self.add_node().await
    }

    async fn roll(&self, round: u32) -> anyhow::Result<()> {
        let sts: Api<StatefulSet> = Api::namespaced(self.admin.clone(), &self.ns);
        sts.patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "soak/round": round.to_string()}}}}})),
        )
        .await?;
        Ok(())
    }

    /// The rollout done, every pod added and nothing left to delete.
    async fn settle(&mut self, replicas: u32) -> anyhow::Result<()> {
        let sts: Api<StatefulSet> = Api::namespaced(self.admin.clone(), &self.ns);
        let kubelet = &self.kubelet;
        eventually(SETTLE, "the round settles", || {
            let sts = sts.clone();
            async move {
                let s = sts.get("web").await?;
                let st = s.status.unwrap_or_default();
                let rolled = st.updated_replicas == Some(replicas as i32)
                    && st.ready_replicas == Some(replicas as i32)
                    && st.current_revision == st.update_revision;
                if !rolled {
                    anyhow::bail!("rollout: {st:?}");
                }
                match kubelet.settled().await? {
                    Ok(()) => Ok(Some(())),
                    Err(w) => anyhow::bail!(
                        "kubelet waits for: {w}; recent errors: {:?}",
                        kubelet.with_ledger(|l| l.last_errors.clone())
                    ),
                }
            }
        })
        .await?;
        for n in self.nodes.values_mut() {
            anyhow::ensure!(
                n.agent_up(),
                "agent of {} died:\n{}",
                n.name,
                n.agent_log_tail(30)
            );
        }
        Ok(())
    }

    async fn observe(&self) -> anyhow::Result<Observation> {
        let nns: Api<NodeNetwork> = Api::all(self.admin.clone());
        let mut agents = BTreeMap::new();
        for (name, n) in &self.nodes {
            agents.insert(
                name.clone(),
                AgentView {
                    ipam: n.allocations().await?,
                    health: n.health().await?,
                },
            );
        }
        let mut pods = BTreeMap::new();
        for p in self.pods().await? {
            if p.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let (Some(uid), Some(name), Some(node)) = (
                p.metadata.uid,
                p.metadata.name,
                p.spec.and_then(|s| s.node_name),
            ) {
                pods.insert(uid, (name, node));
            }
        }
        Ok(Observation {
            node_networks: nns.list(&ListParams::default()).await?.items,
            agents,
            pods,
            history: self.kubelet.with_ledger(|l| l.history.clone()),
            cloud: None,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_ip_statefulset_rolled_through_agent_crashes_and_a_lost_node_keeps_every_address_owned_once()
 {
    let test = sextant_testkit::current_test("cluster_soak");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    // The default scheduler calls Sextant's extender, as the chart sets it
    // up: a fixed-IP pod is not placed before its FixedIP exists (else its
    // first ADD finds no FixedIP and takes an ordinary address).
    let extender_port = free_port().expect("port");
    let Some(c) = Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            extender_port: Some(extender_port),
            ..Options::default()
        },
    ) else {
        return;
    };
    let started = std::time::Instant::now();
    let replicas = env_num("SOAK_REPLICAS", 30);
    let rounds = env_num("SOAK_ROUNDS", 4);
    let rendered = install::install(c, Some(values())).expect("chart installed");
    let cloud_file = install::scratch(c, "soak-cloud")
        .expect("scratch dir")
        .join("cloud.json");
    let operator_env = vec![
        ("SEXTANT_SIM_ZONES", ZONE.to_owned()),
        (
            "SEXTANT_FULL_RESYNC_INTERVAL",
            format!("{}s", RESYNC.as_secs()),
        ),
        ("SEXTANT_GC_GRACE", format!("{}s", RESYNC.as_secs())),
        ("SEXTANT_SIM_THROTTLE_RATIO", "0.2".to_owned()),
        ("SEXTANT_SIM_STATE_FILE", cloud_file.display().to_string()),
    ];
    let mut operator = install::run_operator(
        c,
        &rendered,
        "sextant-operator-soak-0",
        operator_env.clone(),
    )
    .await
    .expect("operator started")
    .0;
    let mut operators_killed = 0;
    let extender = install::run_scheduler_ext(
        c,
        &rendered,
        "sextant-scheduler-ext-soak",
        &format!("127.0.0.1:{extender_port}"),
    )
    .await
    .expect("scheduler extender started");
    let admin = c.admin().await.expect("admin");
    let ns = c.namespace("soak").await.expect("namespace");
    let mut soak = Soak {
        c,
        admin: admin.clone(),
        rendered,
        kubelet: Kubelet::start(admin.clone(), &ns),
        ns: ns.clone(),
        nodes: BTreeMap::new(),
        next_node: 0,
        agent_env: vec![
            ("SEXTANT_USAGE_REPORT_INTERVAL", "2s".to_owned()),
            ("SEXTANT_FIXED_IP_WAIT", "30s".to_owned()),
        ],
    };
    for _ in 0..4 {
        soak.add_node().await.expect("node with its agent");
    }
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns);
    sts.create(&PostParams::default(), &statefulset(replicas))
        .await
        .expect("StatefulSet");

    let mut rows: Vec<Row> = Vec::new();
    let mut findings_all = Vec::new();
    for round in 0..=rounds {
        if round > 0 {
            soak.roll(round).await.expect("roll");
            tokio::time::sleep(Duration::from_secs(4)).await;
            match round % 4 {
                0 => {
                    // The leader dies without giving up its Lease; a new
                    // replica takes over once it expires.
                    let pid = operator.process.pid().to_string();
                    let killed = std::process::Command::new("kill")
                        .args(["-9", &pid])
                        .status()
                        .expect("kill runs");
                    assert!(killed.success(), "kill -9 {pid}");
                    operators_killed += 1;
                    operator = install::run_operator(
                        c,
                        &soak.rendered,
                        &format!("sextant-operator-soak-{operators_killed}"),
                        operator_env.clone(),
                    )
                    .await
                    .expect("a new operator replica started")
                    .0;
                    // It works on the cloud the dead leader left, not a new one.
                    let log = operator.process.log.clone();
                    eventually(Duration::from_secs(60), "the cloud restored", || {
                        let log = log.clone();
                        async move {
                            let text = std::fs::read_to_string(&log).unwrap_or_default();
                            Ok(text.contains("simulated cloud restored").then_some(()))
                        }
                    })
                    .await
                    .expect("the new leader restored the simulated cloud");
                }
                1 => {
                    let n = soak.busiest().await.expect("pods");
                    soak.kill_and_restart(&[n]).await.expect("agent restarted");
                }
                2 => {
                    let n = soak.busiest().await.expect("pods");
                    soak.lose_node(&n).await.expect("node lost and replaced");
                }
                _ => {
                    let two: Vec<String> = soak.nodes.keys().take(2).cloned().collect();
                    soak.kill_and_restart(&two).await.expect("agents restarted");
                }
            }
        }
        if let Err(e) = soak.settle(replicas).await {
            panic!(
                "round {round} did not settle: {e:#}\noperator log:\n{}",
                operator.process.log_tail(40)
            );
        }
        // One resync (and GC) interval, and two usage reports, before reading.
        tokio::time::sleep(RESYNC + Duration::from_secs(4)).await;
        let mut obs = soak.observe().await.expect("observation");
        obs.cloud = Some(
            std::fs::read(&cloud_file)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
                .unwrap_or_else(|e| panic!("the cloud's state {}: {e:#}", cloud_file.display())),
        );
        let (row, findings) = audit::audit(round, &obs);
        println!("{}", audit::table(std::slice::from_ref(&row)).trim_end());
        for f in &findings {
            println!("  round {round}: {f}");
        }
        findings_all.extend(findings.into_iter().map(|f| format!("round {round}: {f}")));
        rows.push(row);
    }

    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);
    let fixed = fips.list(&ListParams::default()).await.expect("FixedIPs");
    let (adds, failures) = soak.kubelet.with_ledger(|l| {
        (
            l.history.values().map(Vec::len).sum::<usize>(),
            l.add_failures,
        )
    });
    println!(
        "\nchaos soak: {} nodes, StatefulSet of {replicas} fixed-IP replicas ({} FixedIPs), {rounds} rounds, \
         {adds} successful ADDs, {failures} failed ADDs retried, {:.0} s\n\n{}",
        soak.nodes.len(),
        fixed.items.len(),
        started.elapsed().as_secs_f64(),
        audit::table(&rows)
    );
    operator.assert_no_forbidden().expect("operator RBAC");
    extender.assert_no_forbidden().expect("extender RBAC");
    assert!(
        rows.iter().all(Row::clean),
        "the audit found wrong ownership:\n{}",
        findings_all.join("\n")
    );
    println!("operator leaders killed: {operators_killed}");
}
