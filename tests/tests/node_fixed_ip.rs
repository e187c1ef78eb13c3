//! Fixed IPs on the real node (issue 18): a 3-replica StatefulSet
//! annotated `sextant.io/fixed-ip: "true"` gets a FixedIP per ordinal, each
//! pod runs on its address, and a deleted `web-1` comes back on the same
//! one. The webhook and the extender run (the extender holds a fixed-IP pod
//! until its FixedIP exists; kube-scheduler calls it only for pods that ask
//! for `sextant.io/ip`, which the webhook adds).

use anyhow::{Context, ensure};
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use sextant_crds::FixedIP;
use sextant_e2e::cluster::{
    Cluster, Options, eventually,
    node::workloads::{SLOW, netcheck_pod, node_network, running_ip, sextant_on_node},
    supervisor::free_port,
};
use sextant_testkit::Tier;

// Found an operator defect (issue 18): a fixed IP moved to the node reached
// its NodeNetwork pool only at the next full resync (5 minutes by default),
// so the pod's CNI ADD answered 503 "fixed IP … not on this node after 30s"
// on every kubelet retry. The FixedIP controller now asks the node's IPAM to
// resync the instance right after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fixed_ip_statefulset_on_the_real_node_keeps_each_pods_address_across_deletion() {
    let test = sextant_testkit::current_test("node_fixed_ip");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return;
    }
    let extender_port = free_port().expect("a free port for the extender");
    let Some(c) = Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            real_node: true,
            extender_port: Some(extender_port),
            ..Options::default()
        },
    ) else {
        return;
    };
    if let Err(e) = walk(c, extender_port).await {
        let nn = match c.info.node.as_ref() {
            Some(n) => c
                .kubectl(
                    &["get", "nodenetwork", &n.name, "-o", "jsonpath={.status}"],
                    None,
                )
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default(),
            None => String::new(),
        };
        let logs = ["sextant-agent", "sextant-operator-node"]
            .map(|p| {
                let l = c.info.dir.join(format!("logs/{p}.log"));
                format!(
                    "--- {}:\n{}",
                    l.display(),
                    sextant_e2e::cluster::log_tail(&l, 15)
                )
            })
            .join("\n");
        panic!("{e:#}\nNodeNetwork status: {nn}\n{logs}");
    }
}

async fn walk(c: &Cluster, extender_port: u16) -> anyhow::Result<()> {
    let node = c.info.node.clone().context("no real node")?;
    let _sextant = sextant_on_node(c, &node, extender_port, "").await?;
    let admin = c.admin().await?;
    let ns = c.namespace("fixed").await?;
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    // Fixed IPs: a StatefulSet annotated sextant.io/fixed-ip gets a FixedIP
    // per ordinal, each pod runs on its address, and a deleted web-1 comes
    // back on the same one. The addresses are reserved in the node's subnet:
    // left to choose, the operator takes the subnet with the most free
    // addresses (another zone's), where this one node can never hold them
    // and the extender keeps the pods Pending.
    let subnet = node_network(&admin, &node.name)
        .await?
        .status
        .unwrap_or_default()
        .enis
        .first()
        .map(|e| e.subnet_id.clone())
        .context("the node's NodeNetwork lists no ENI")?;
    let sts: StatefulSet = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web", "annotations": {
            "sextant.io/fixed-ip": "true",
            "sextant.io/fixed-ip-subnets": subnet,
        }},
        "spec": {
            "replicas": 3,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"sextant.io/fixed-ip": "true"}},
                "spec": netcheck_pod("web", &node)?.spec,
            },
        },
    }))?;
    Api::<StatefulSet>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &sts)
        .await?;
    let fips: Api<FixedIP> = Api::namespaced(admin.clone(), &ns);
    let mut fixed = Vec::new();
    for i in 0..3 {
        let pod = format!("web-{i}");
        let ip = running_ip(c, &pods, &ns, &pod).await?;
        let fip = eventually(SLOW, &format!("FixedIP {pod}"), || {
            let fips = fips.clone();
            let pod = pod.clone();
            async move { Ok(fips.get_opt(&pod).await?) }
        })
        .await?;
        ensure!(
            fip.spec.ip == ip,
            "{pod} runs on {ip}, its FixedIP says {}",
            fip.spec.ip
        );
        fixed.push(ip);
    }
    println!("StatefulSet web: fixed IPs {fixed:?}");
    let uid = pods.get("web-1").await?.metadata.uid;
    pods.delete("web-1", &DeleteParams::default()).await?;
    let again = eventually(SLOW, "a new web-1 running", || {
        let pods = pods.clone();
        let uid = uid.clone();
        async move {
            let p = pods.get_opt("web-1").await?;
            Ok(p.filter(|p| p.metadata.uid != uid)
                .and_then(|p| p.status)
                .filter(|s| s.phase.as_deref() == Some("Running"))
                .and_then(|s| s.pod_ip))
        }
    })
    .await?;
    ensure!(
        again == fixed[1],
        "the new web-1 runs on {again}, its fixed IP is {}",
        fixed[1]
    );
    println!("web-1 deleted and back on {again}");

    Ok(())
}
