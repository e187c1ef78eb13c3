//! The seeds' scheduling problem on the real node, shown both ways: "Pod
//! could stuck in ContainerCreating while other nodes are available",
//! because kube-scheduler does not know a node is out of IPs.
//!
//! ```text
//!  with Sextant's webhook + extender:  pod ─▶ webhook (sextant.io/ip: 1) ─▶ kube-scheduler
//!      node allocatable sextant.io/ip used up ─▶ Pending, "Insufficient sextant.io/ip"
//!  without them:                       pod ─▶ kube-scheduler ─▶ kubelet ─▶ containerd
//!      ─▶ sextant-cni ADD ─▶ agent: pool exhausted ─▶ ContainerCreating, FailedCreatePodSandBox
//! ```
//!
//! The node's pool is capped at two addresses (`ipam.maxAllocate: 2`), so
//! two pods use it up; the events each pod shows are printed.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, ListParams, PostParams},
};
use sextant_e2e::cluster::{
    Cluster, Options, eventually, install,
    node::{
        self,
        workloads::{
            SLOW, events_of, ip_quantity, netcheck_pod, ready, running_ip, start_agent,
            start_device_plugin, start_webhook,
        },
    },
    supervisor::free_port,
};
use sextant_testkit::Tier;

/// The node's pool and IP capacity.
const CAP: i64 = 2;

/// Whether the pod asks for one `sextant.io/ip` (the webhook's patch).
fn asks_for_an_ip(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| {
        s.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .is_some_and(|r| r.get("sextant.io/ip").is_some_and(|q| q.0 == "1"))
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_past_the_nodes_ip_capacity_stays_pending_with_sextant_and_sits_in_container_creating_without()
 {
    let test = sextant_testkit::current_test("node_scheduling");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    let extender_port = free_port().expect("a free port for the extender");
    let Some(c) = Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            real_node: true,
            extender_port: Some(extender_port),
            // The second half runs without the extender.
            extender_ignorable: true,
            ..Options::default()
        },
    ) else {
        return;
    };
    if let Err(e) = walk(c, extender_port).await {
        let logs = c
            .info
            .node
            .iter()
            .flat_map(|n| n.logs.iter().cloned())
            .chain(
                [
                    "sextant-agent",
                    "sextant-device-plugin",
                    "sextant-webhook",
                    "kube-scheduler",
                ]
                .map(|p| c.info.dir.join(format!("logs/{p}.log"))),
            )
            .map(|l| {
                format!(
                    "--- {}:\n{}",
                    l.display(),
                    sextant_e2e::cluster::log_tail(&l, 20)
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        panic!("{e:#}\n{logs}");
    }
}

async fn walk(c: &Cluster, extender_port: u16) -> anyhow::Result<()> {
    let node = c.info.node.clone().context("no real node")?;
    let webhook_port = free_port()?;
    let values = format!(
        "provider: sim\nregion: us-east-1\nclusterName: node\nvpcId: vpc-sim\n\
         operator:\n  replicas: 1\n\
         ipam:\n  preAllocate: {CAP}\n  maxAllocate: {CAP}\n\
         webhook:\n  url: https://127.0.0.1:{webhook_port}/mutate\n"
    );
    let rendered = node::install_without_workloads(c, Some(values))?;
    let admin = c.admin().await?;
    let (_operator, _) =
        install::run_operator(c, &rendered, "sextant-operator-node", vec![]).await?;
    node::install_cni(&node, &rendered)?;
    let agent = start_agent(c, &rendered, &node).await?;
    let _device_plugin = start_device_plugin(c, &rendered, &node).await?;
    let _webhook = start_webhook(c, &rendered, webhook_port).await?;
    let extender = install::run_scheduler_ext(
        c,
        &rendered,
        "sextant-scheduler-ext-node",
        &format!("127.0.0.1:{extender_port}"),
    )
    .await?;

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(admin.clone());
    eventually(
        SLOW,
        "the node Ready with sextant.io/ip allocatable = the capped pool",
        || {
            let nodes = nodes.clone();
            let name = node.name.clone();
            let agent = &agent;
            async move {
                let n = nodes.get(&name).await?;
                let h = agent.healthz().await?;
                ensure!(
                    ready(&n) && ip_quantity(&n, true) == Some(CAP) && h["ipam"]["free"] == CAP,
                    "Ready {}, allocatable {:?}, agent ipam {}",
                    ready(&n),
                    ip_quantity(&n, true),
                    h["ipam"]
                );
                Ok(Some(()))
            }
        },
    )
    .await?;

    // With Sextant: the webhook makes each pod ask for an IP; two fill the node.
    let ns = c.namespace("sched").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for i in 0..CAP {
        let p = pods
            .create(
                &PostParams::default(),
                &netcheck_pod(&format!("fill-{i}"), &node)?,
            )
            .await?;
        ensure!(
            asks_for_an_ip(&p),
            "the webhook did not add sextant.io/ip to fill-{i}"
        );
    }
    for i in 0..CAP {
        running_ip(c, &pods, &ns, &format!("fill-{i}")).await?;
    }
    let extra = pods
        .create(&PostParams::default(), &netcheck_pod("extra", &node)?)
        .await?;
    ensure!(
        asks_for_an_ip(&extra),
        "the webhook did not add sextant.io/ip to extra"
    );
    let why = eventually(SLOW, "extra unschedulable", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("extra").await?;
            Ok(p.status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False")
                .and_then(|c| c.message))
        }
    })
    .await?;
    // Still unplaced a while later: not a passing state.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let p = pods.get("extra").await?;
    let phase = p.status.as_ref().and_then(|s| s.phase.clone());
    let on = p.spec.as_ref().and_then(|s| s.node_name.clone());
    println!(
        "--- with Sextant's webhook and extender: pod extra ({phase:?}, node {on:?})\n{}",
        events_of(c, &ns, "extra")
    );
    ensure!(
        on.is_none() && phase.as_deref() == Some("Pending"),
        "extra was placed on {on:?} ({phase:?}) although the node's IPs are used up"
    );
    ensure!(
        why.contains("Insufficient sextant.io/ip"),
        "extra is unschedulable for another reason: {why}"
    );
    pods.delete("extra", &DeleteParams::default()).await?;

    // Without them: no IP request, nothing keeps the pod off the full node.
    let hooks: Api<MutatingWebhookConfiguration> = Api::all(admin.clone());
    for h in hooks.list(&ListParams::default()).await? {
        let name = h.metadata.name.unwrap_or_default();
        if name.starts_with("sextant") {
            hooks.delete(&name, &DeleteParams::default()).await?;
        }
    }
    drop(extender);
    eventually(SLOW, "a pod created without the webhook's patch", || {
        let pods = pods.clone();
        let node = &node;
        async move {
            let _ = pods.delete("plain", &DeleteParams::default()).await;
            // The API server may call a webhook configuration it has not
            // yet seen deleted: create until the pod comes back unpatched.
            let _ = eventually(Duration::from_secs(30), "plain gone", || {
                let pods = pods.clone();
                async move { Ok(pods.get_opt("plain").await?.is_none().then_some(())) }
            })
            .await;
            let p = pods
                .create(&PostParams::default(), &netcheck_pod("plain", node)?)
                .await?;
            Ok((!asks_for_an_ip(&p)).then_some(()))
        }
    })
    .await?;
    eventually(
        SLOW,
        "plain on the node with its sandbox failing in CNI ADD",
        || {
            let pods = pods.clone();
            let ns = ns.clone();
            async move {
                let p = pods.get("plain").await?;
                let placed = p.spec.as_ref().and_then(|s| s.node_name.clone()).is_some();
                let events = events_of(c, &ns, "plain");
                Ok((placed && events.contains("FailedCreatePodSandBox")).then_some(()))
            }
        },
    )
    .await?;
    let p = pods.get("plain").await?;
    let status = p.status.clone().unwrap_or_default();
    let waiting = status.container_statuses.iter().flatten().find_map(|s| {
        s.state
            .as_ref()
            .and_then(|st| st.waiting.as_ref())
            .and_then(|w| w.reason.clone())
    });
    let events = events_of(c, &ns, "plain");
    let shown = c.kubectl_ok(&["get", "pod", "plain", "-n", &ns, "--no-headers"], None)?;
    println!("{}", shown.trim());
    println!(
        "--- without them: pod plain ({:?}, node {:?}, container waiting: {waiting:?})\n{events}",
        status.phase,
        p.spec.as_ref().and_then(|s| s.node_name.clone())
    );
    ensure!(
        status.phase.as_deref() == Some("Pending") && status.pod_ip.is_none(),
        "plain should sit without a sandbox, it is {:?} with IP {:?}",
        status.phase,
        status.pod_ip
    );
    ensure!(
        waiting.as_deref().is_none_or(|r| r == "ContainerCreating")
            && shown.split_whitespace().nth(2) == Some("ContainerCreating"),
        "kubectl should show plain in ContainerCreating: {shown} (container waiting: {waiting:?})"
    );
    ensure!(
        events.to_lowercase().contains("sextant")
            || events.contains("exhausted")
            || events.contains("no free"),
        "plain's sandbox failed for another reason than Sextant's CNI:\n{events}"
    );
    Ok(())
}
