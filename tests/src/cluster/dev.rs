//! `make cluster`: the test control plane with Sextant installed for a
//! person to look at: the chart applied with the simulated cloud, the
//! operator, the admission webhook and the scheduler extender running as
//! host processes under their chart identities, and a few kwok nodes that
//! get NodeNetworks.

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};

use super::{
    Cluster,
    install::{self, Component, Running, loopback_addr, wait_http_ok},
    supervisor::free_port,
};

/// Nodes `make cluster` creates.
pub const NODES: usize = 3;

/// What runs beside the control plane; dropping it stops the components.
pub struct Sextant {
    /// Operator, webhook, extender.
    pub components: Vec<Running>,
    /// Lines to print for the person.
    pub notes: Vec<String>,
}

/// Installs and starts Sextant on `cluster`, whose default scheduler calls
/// the extender at `extender_port`.
pub async fn install_sextant(cluster: &Cluster, extender_port: u16) -> anyhow::Result<Sextant> {
    let webhook_port = free_port()?;
    let values = format!(
        "provider: sim\nregion: us-east-1\nclusterName: dev\nvpcId: vpc-sim\n\
         operator:\n  replicas: 1\n\
         webhook:\n  url: https://127.0.0.1:{webhook_port}/mutate\n"
    );
    let rendered = install::install(cluster, Some(values))?;
    let mut components = Vec::new();
    let (op, _) = install::run_operator(cluster, &rendered, "sextant-operator-dev", vec![]).await?;
    components.push(op);

    let dir = install::scratch(cluster, "webhook")?;
    let (cert, key) = install::webhook_serving_pair(&rendered, &dir)?;
    let wh_metrics = loopback_addr()?;
    let mut wh = install::run(
        cluster,
        &rendered,
        "sextant-webhook",
        Component::new(
            "sextant-webhook",
            "webhook",
            None,
            "sextant-webhook-dev",
            vec![
                (
                    "SEXTANT_WEBHOOK_LISTEN",
                    format!("127.0.0.1:{webhook_port}"),
                ),
                ("SEXTANT_WEBHOOK_TLS_CERT", cert),
                ("SEXTANT_WEBHOOK_TLS_KEY", key),
                ("SEXTANT_WEBHOOK_METRICS_ADDR", wh_metrics.clone()),
            ],
        ),
    )
    .await?;
    wait_http_ok(&mut wh.process, &wh_metrics, "/healthz").await?;
    components.push(wh);

    let ext_addr = format!("127.0.0.1:{extender_port}");
    let ext =
        install::run_scheduler_ext(cluster, &rendered, "sextant-scheduler-ext-dev", &ext_addr)
            .await?;
    components.push(ext);

    let nodes: Api<Node> = Api::all(cluster.admin().await?);
    for i in 0..NODES {
        let zone = ["us-east-1a", "us-east-1b"][i % 2];
        let name = format!("kwok-node-{i}");
        let node = install::kwok_node(&name, zone, &format!("i-0dev{i:013}"), "m5.large");
        if let Err(e) = nodes.create(&PostParams::default(), &node).await {
            tracing_free_warn(&format!("creating node {name}: {e}"));
        }
        // What the device plugin advertises on a real node (kwok nodes have
        // no kubelet to register it): the IPs the node can hand out.
        let ips = serde_json::json!({"status": {
            "capacity": {"sextant.io/ip": "8"},
            "allocatable": {"sextant.io/ip": "8"},
        }});
        if let Err(e) = nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&ips))
            .await
        {
            tracing_free_warn(&format!("advertising sextant.io/ip on {name}: {e}"));
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let kc = cluster.info.admin_kubeconfig.display().to_string();
    let kubectl = cluster.info.kubectl.display().to_string();
    let notes = vec![
        format!("export KUBECONFIG={kc}"),
        format!("alias kubectl={kubectl}"),
        "kubectl get nodes                      # kwok nodes".into(),
        "kubectl get nodenetworks -o wide       # one per node, filled to preAllocate by the operator".into(),
        "kubectl get fixedips -A".into(),
        "kubectl get events -n sextant-system   # the operator's Events".into(),
        "kubectl run web --image=nginx && kubectl get pod web -o wide   # the webhook adds sextant.io/ip: 1; the scheduler and extender place it".into(),
        "kubectl get pod web -o jsonpath='{.spec.containers[0].resources}'".into(),
        format!("logs: {}", cluster.info.dir.join("logs").display()),
    ];
    Ok(Sextant { components, notes })
}

fn tracing_free_warn(msg: &str) {
    eprintln!("sextant-cluster: {msg}");
}
