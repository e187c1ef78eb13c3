//! Sextant on a real node: the v1.34 kubelet with Debian's containerd and
//! runc, `sextant-cni` its only network plugin (issue 18, phase 1).
//!
//! ```text
//!  test (admin) ── pods (imagePullPolicy: Never) ──▶ kube-apiserver ──▶ kube-scheduler
//!                                                        │
//!  operator --provider sim ── NodeNetwork pool ──▶       ▼
//!  (ENI addresses of the simulated instance)       kubelet ──CRI──▶ containerd ──▶ runc
//!                                                    ▲                  │ CNI ADD/DEL
//!  sextant-device-plugin ── kubelet.sock ────────────┘                  ▼
//!          │ GET /v1/healthz                                     sextant-cni
//!          └────────────────────────▶ sextant-agent (datapath) ◀────┘ agent socket
//! ```
//!
//! One test walks the whole path in order (each step needs the one before,
//! and one node serves the binary): the node turns Ready with Sextant as its
//! CNI, its allocatable `sextant.io/ip` is what the agent reports, two pods
//! get addresses of the NodeNetwork's pool and talk TCP from inside their
//! network namespaces (`kubectl exec … /netcheck probe`, through the API
//! server to the kubelet), a ClusterIP Service whose EndpointSlice the real
//! kube-controller-manager writes is reached through its VIP, deleting a pod
//! frees its address, and the seed's `protected-db` policy (the
//! SextantNetworkPolicy of `docs/examples/sextant-db-policy.yaml`) lets only
//! `app=employee` reach the database on TCP 6379.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use sextant_crds::NodeNetwork;
use sextant_e2e::{
    chart::repo_root,
    cluster::{
        Cluster, Options, eventually, install,
        node::{
            self,
            workloads::{
                SLOW, ip_quantity, netcheck_pod, netcheck_pod_with, node_network, probe, probe_to,
                ready, running_ip, start_agent, start_agent_on, start_device_plugin,
            },
        },
    },
};
use sextant_testkit::Tier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_on_the_real_node_get_pool_addresses_talk_tcp_reach_a_service_obey_protected_db_and_free_them()
 {
    let test = sextant_testkit::current_test("node_kubelet");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    let Some(c) = Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            real_node: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    if let Err(e) = walk(c).await {
        let node_logs = c
            .info
            .node
            .iter()
            .flat_map(|n| n.logs.iter().cloned())
            .chain(
                [
                    "sextant-agent",
                    "sextant-device-plugin",
                    "sextant-operator-node",
                ]
                .map(|p| c.info.dir.join(format!("logs/{p}.log"))),
            )
            .map(|l| {
                format!(
                    "--- {}:\n{}",
                    l.display(),
                    sextant_e2e::cluster::log_tail(&l, 25)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{e:#}\n{node_logs}");
    }
}

async fn walk(c: &Cluster) -> anyhow::Result<()> {
    let node = c
        .info
        .node
        .clone()
        .context("the cluster was started without its real node")?;
    let admin = c.admin().await?;
    let nodes: Api<Node> = Api::all(admin.clone());
    let registered = nodes.get(&node.name).await?;
    ensure!(
        !ready(&registered),
        "node {} is Ready before any CNI is installed",
        node.name
    );

    // Sextant: the chart on the simulated cloud, the operator reconciling
    // this node's NodeNetwork (its pool: ENI addresses of the instance the
    // simulator launches for the node's providerID).
    let rendered = node::install_without_workloads(
        c,
        Some("provider: sim\nregion: us-east-1\nclusterName: node\nvpcId: vpc-sim\noperator:\n  replicas: 1\n".into()),
    )?;
    let (operator, _) =
        install::run_operator(c, &rendered, "sextant-operator-node", vec![]).await?;
    let pool = eventually(SLOW, "the node's NodeNetwork with a pool", || {
        let admin = admin.clone();
        let name = node.name.clone();
        async move {
            let nn = Api::<NodeNetwork>::all(admin).get_opt(&name).await?;
            Ok(nn
                .and_then(|n| n.status)
                .filter(|s| !s.pool.is_empty())
                .map(|s| s.pool))
        }
    })
    .await?;
    println!(
        "NodeNetwork {}: pool of {} addresses",
        node.name,
        pool.len()
    );

    let conflist = node::install_cni(&node, &rendered)?;
    println!("CNI installed: {}", conflist.display());
    let agent = start_agent(c, &rendered, &node).await?;
    let device_plugin = start_device_plugin(c, &rendered, &node).await?;

    eventually(SLOW, &format!("node {} Ready", node.name), || {
        let nodes = nodes.clone();
        let name = node.name.clone();
        async move { Ok(ready(&nodes.get(&name).await?).then_some(())) }
    })
    .await?;
    println!("node {} Ready with sextant-cni", node.name);

    // The device plugin's count is the agent's, through the real kubelet.
    let (capacity, allocatable) = eventually(
        SLOW,
        "sextant.io/ip on the node as the agent reports it",
        || {
            let nodes = nodes.clone();
            let name = node.name.clone();
            let agent = &agent;
            async move {
                let h = agent.healthz().await?;
                let want = h["ipam"]["capacity"]
                    .as_i64()
                    .context("healthz without ipam.capacity")?;
                let unavailable = h["ipam"]["unavailable"].as_i64().unwrap_or(0);
                let n = nodes.get(&name).await?;
                let (cap, alloc) = (ip_quantity(&n, false), ip_quantity(&n, true));
                ensure!(
                    want > 0 && cap == Some(want) && alloc == Some(want - unavailable),
                    "node capacity {cap:?}, allocatable {alloc:?}; agent ipam {}",
                    h["ipam"]
                );
                Ok(Some((want, want - unavailable)))
            }
        },
    )
    .await?;
    println!(
        "node capacity sextant.io/ip = {capacity}, allocatable = {allocatable} (agent: the same)"
    );

    // Two pods through the API server; addresses from the pool; TCP both ways.
    let ns = c.namespace("node").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for name in ["a", "b"] {
        pods.create(&PostParams::default(), &netcheck_pod(name, &node)?)
            .await
            .with_context(|| format!("creating pod {name}"))?;
    }
    let ip_a = running_ip(c, &pods, &ns, "a").await?;
    let ip_b = running_ip(c, &pods, &ns, "b").await?;
    let pool = node_network(&admin, &node.name)
        .await?
        .status
        .unwrap_or_default()
        .pool;
    for (pod, ip) in [("a", &ip_a), ("b", &ip_b)] {
        ensure!(
            pool.contains_key(ip),
            "pod {pod} got {ip}, not an address of the NodeNetwork's pool {:?}",
            pool.keys().collect::<Vec<_>>()
        );
    }
    println!("pod a: {ip_a}, pod b: {ip_b} (both from the pool)");
    let ab = probe(c, &ns, "a", &ip_b)?;
    ensure!(
        ab.contains("hello from b "),
        "a reached {ip_b}:8080 but not pod b: {ab}"
    );
    let ba = probe(c, &ns, "b", &ip_a)?;
    ensure!(
        ba.contains("hello from a "),
        "b reached {ip_a}:8080 but not pod a: {ba}"
    );
    print!("a -> b: {ab}b -> a: {ba}");

    // A ClusterIP Service whose EndpointSlice the real controller-manager
    // writes from b's readiness; a reaches b through the service VIP.
    let svc: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "b"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let vip = Api::<Service>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("Service web without a ClusterIP")?;
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
    eventually(
        SLOW,
        "the controller-manager's EndpointSlice for web naming b",
        || {
            let slices = slices.clone();
            let ip_b = ip_b.clone();
            async move {
                let list = slices
                    .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                    .await?;
                Ok(list
                    .items
                    .iter()
                    .flat_map(|s| s.endpoints.iter().flatten())
                    .any(|e| e.addresses.contains(&ip_b))
                    .then_some(()))
            }
        },
    )
    .await?;
    let via_vip = eventually(SLOW, &format!("a reaching web at {vip}:80"), || {
        let (ns, vip) = (ns.clone(), vip.clone());
        async move {
            let out = c.kubectl(
                &[
                    "exec",
                    "-n",
                    &ns,
                    "a",
                    "--",
                    "/netcheck",
                    "probe",
                    "-timeout",
                    "3s",
                    &format!("{vip}:80"),
                ],
                None,
            )?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            ensure!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(Some(text))
        }
    })
    .await?;
    ensure!(
        via_vip.contains("hello from b "),
        "{vip}:80 answered, not as b: {via_vip}"
    );
    print!("a -> web {vip}:80: {via_vip}");

    // The agent reports both in use; deleting b frees its address (CNI DEL).
    let report = |want_used: Vec<String>, want_cooling: Option<String>| {
        let admin = admin.clone();
        let name = node.name.clone();
        async move {
            let usage = node_network(&admin, &name)
                .await?
                .status
                .and_then(|s| s.usage)
                .unwrap_or_default();
            let used = want_used.iter().all(|ip| usage.used.contains_key(ip));
            let cooling = match &want_cooling {
                Some(ip) => usage.cooling.contains(ip) && !usage.used.contains_key(ip),
                None => true,
            };
            Ok((used && cooling).then_some(()))
        }
    };
    eventually(
        SLOW,
        "both pods' addresses in the agent's usage report",
        || report(vec![ip_a.clone(), ip_b.clone()], None),
    )
    .await?;
    pods.delete("b", &DeleteParams::default()).await?;
    eventually(SLOW, "pod b gone", || {
        let pods = pods.clone();
        async move { Ok(pods.get_opt("b").await?.is_none().then_some(())) }
    })
    .await?;
    eventually(
        SLOW,
        &format!("{ip_b} freed (cooling, not used) and {ip_a} still used"),
        || report(vec![ip_a.clone()], Some(ip_b.clone())),
    )
    .await?;
    let h = agent.healthz().await?;
    ensure!(
        h["ipam"]["allocated"] == 1,
        "the agent still counts {} allocated after b's delete: {h}",
        h["ipam"]["allocated"]
    );
    println!("pod b deleted: {ip_b} cooling, agent allocated = 1");

    // The seed's protected-db policy, as the SextantNetworkPolicy of
    // docs/examples, through the API server: only app=employee reaches
    // app=protected-db, on TCP 6379.
    for (name, app) in [
        ("db", "protected-db"),
        ("employee", "employee"),
        ("visitor", "visitor"),
    ] {
        pods.create(
            &PostParams::default(),
            &netcheck_pod_with(name, &node, app, 6379)?,
        )
        .await
        .with_context(|| format!("creating pod {name}"))?;
    }
    let ip_db = running_ip(c, &pods, &ns, "db").await?;
    for name in ["employee", "visitor"] {
        running_ip(c, &pods, &ns, name).await?;
    }
    let db = format!("{ip_db}:6379");
    let before = probe_to(c, &ns, "visitor", &db, "5s")
        .context("without a policy, visitor must reach db (else the policy check shows nothing)")?;
    ensure!(
        before.contains("hello from db "),
        "visitor reached {db}, not db: {before}"
    );
    let example =
        std::fs::read_to_string(repo_root().join("docs/examples/sextant-db-policy.yaml"))?;
    let policy = example.replace("namespace: default", &format!("namespace: {ns}"));
    ensure!(
        policy != example,
        "docs/examples/sextant-db-policy.yaml names no namespace: default"
    );
    c.kubectl_ok(&["apply", "-f", "-"], Some(&policy))?;
    eventually(
        SLOW,
        &format!("visitor refused at {db} once protected-db applies"),
        || {
            let (ns, db) = (ns.clone(), db.clone());
            async move {
                Ok(probe_to(c, &ns, "visitor", &db, "2s")
                    .is_err()
                    .then_some(()))
            }
        },
    )
    .await?;
    let refused = probe_to(c, &ns, "visitor", &db, "2s")
        .err()
        .map(|e| format!("{e:#}"))
        .context("visitor reached db again under the policy")?;
    let allowed = probe_to(c, &ns, "employee", &db, "5s")
        .context("employee must reach db under protected-db")?;
    ensure!(
        allowed.contains("hello from db "),
        "employee reached {db}, not db: {allowed}"
    );
    println!(
        "protected-db: employee -> db: {}",
        allowed.lines().next().unwrap_or_default()
    );
    println!(
        "protected-db: visitor -> db refused: {}",
        refused.lines().next().unwrap_or_default()
    );

    // An established flow between two pods survives the agent's SIGKILL and
    // restart: the datapath stays pinned, the new agent adopts the pins and
    // restores its pods from the checkpoint.
    let allocated = agent.healthz().await?["ipam"]["allocated"].clone();
    let held = tokio::process::Command::new(&c.info.kubectl)
        .arg(format!(
            "--kubeconfig={}",
            c.info.admin_kubeconfig.display()
        ))
        .args([
            "exec",
            "-n",
            &ns,
            "employee",
            "--",
            "/netcheck",
            "hold",
            "-for",
            "15s",
        ])
        .args(["-every", "100ms", "-timeout", "3s", &format!("{ip_a}:8080")])
        .kill_on_drop(true)
        .output();
    let held = tokio::spawn(held);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pins = agent.kill9()?;
    println!("agent killed with SIGKILL while employee holds a flow to a");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let agent = start_agent_on(c, &rendered, &node, pins).await?;
    let restored = agent.healthz().await?;
    ensure!(
        restored["ipam"]["allocated"] == allocated,
        "the restarted agent counts {} allocated, {allocated} before its kill: {restored}",
        restored["ipam"]["allocated"]
    );
    let out = held.await??;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.contains("none missed"),
        "the flow employee -> a did not survive the agent's kill -9 and restart: {said}"
    );
    print!("after the agent's kill -9 and restart ({allocated} allocated kept): {said}");

    pods.delete("a", &DeleteParams::default()).await?;
    for r in [&operator, &agent.running] {
        r.assert_no_forbidden()?;
    }
    drop(device_plugin);
    Ok(())
}
