//! The scheduler extender under the real kube-scheduler: the test cluster's
//! scheduler is configured with the chart's `extenders` stanza (HTTPS with
//! `tlsConfig`: the cluster CA, kube-scheduler's own client certificate,
//! which the extender requires; `ignorable: false`, so the outage phase
//! shows what that setting costs) pointed at a `sextant-scheduler-ext` host process
//! running with the chart's ServiceAccount and RBAC. kwok nodes advertise
//! `sextant.io/ip` in `status.allocatable`; their `NodeNetwork`s (created as
//! admin, status through the status subresource, as the operator and agent
//! would write them) and `FixedIP`s are what the extender indexes.
//!
//! ```text
//!  test ──Node (kwok), NodeNetwork + status, FixedIP + status, StatefulSet──▶ kube-apiserver
//!  kube-scheduler ──POST /filter, /prioritize (its own JSON)──▶ sextant-scheduler-ext ◀─watch─┘
//!  test ◀── pod.spec.nodeName, FailedScheduling events ──────── kube-apiserver
//! ```
//!
//! One test, in phases: the cluster (one per test binary) has one extender,
//! and the last phase stops it.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context, bail, ensure};
use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{Container, Event, Node, Pod, PodSpec, PodTemplateSpec, ResourceRequirements},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::LabelSelector},
};
use kube::{
    Api, Client,
    api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sextant_crds::{FixedIP, FixedIPSpec, IpamSpec, NodeNetwork, NodeNetworkSpec, Provider};
use sextant_e2e::cluster::{
    Cluster, Options, Process, eventually,
    install::{self, Running},
    supervisor::{free_port, scheduler_config_with},
};

const RESOURCE: &str = "sextant.io/ip";
/// Label putting a node in one phase's group (pods select it).
const GROUP: &str = "sextant-e2e/group";
const ZONE_A: &str = "us-east-1a";
const ZONE_B: &str = "us-east-1b";
const SUBNET_A: &str = "subnet-0a";
/// The profile of the second kube-scheduler, configured `ignorable: true`.
const IGNORABLE: &str = "sextant-ignorable";

/// The extender's port, fixed for the binary: the scheduler's configuration
/// names it when the cluster starts.
fn extender_port() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| free_port().expect("a free port for the extender"))
}

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(
        env!("CARGO_BIN_EXE_sextant-cluster"),
        Options {
            extender_port: Some(extender_port()),
            extender_ignorable: false,
            ..Options::default()
        },
    )
}

fn q(s: &str) -> Quantity {
    Quantity(s.to_owned())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// `sextant-scheduler-ext` with its rendered container's environment and
/// the chart's ServiceAccount, listening where the scheduler calls.
async fn start_extender(
    c: &Cluster,
    rendered: &sextant_e2e::chart::Rendered,
    name: &str,
) -> anyhow::Result<Running> {
    let addr = format!("127.0.0.1:{}", extender_port());
    install::run_scheduler_ext(c, rendered, name, &addr).await
}

/// A kwok node in `zone` advertising `ips` of `sextant.io/ip`.
async fn create_node(
    client: &Client,
    name: &str,
    group: &str,
    zone: &str,
    ips: u32,
) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let instance = format!("i-0{:x}", name.bytes().map(u32::from).sum::<u32>() * 7919);
    let mut node = install::kwok_node(name, zone, &instance, "m5.large");
    node.metadata
        .labels
        .get_or_insert_default()
        .extend(labels(&[("kubernetes.io/os", "linux"), (GROUP, group)]));
    nodes
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating node {name}"))?;
    let resources = json!({
        "cpu": "16", "memory": "64Gi", "pods": "110", RESOURCE: ips.to_string(),
    });
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"capacity": resources, "allocatable": resources}})),
        )
        .await
        .with_context(|| format!("patching node {name}'s status"))?;
    Ok(())
}

/// Waits until kwok has made `name` Ready, without the not-ready taint, and
/// the node still advertises `ips` of `sextant.io/ip` (kwok keeps what the
/// status subresource was given).
async fn node_ready(client: &Client, name: &str, ips: u32) -> anyhow::Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    eventually(
        Duration::from_secs(90),
        &format!("node {name} Ready and schedulable"),
        || {
            let nodes = nodes.clone();
            async move {
                let n = nodes.get(name).await?;
                let status = n.status.clone().unwrap_or_default();
                let ready = status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                let tainted = n
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .is_some_and(|t| !t.is_empty());
                let advertised = status
                    .allocatable
                    .as_ref()
                    .and_then(|a| a.get(RESOURCE))
                    .cloned();
                if ready {
                    ensure!(
                        advertised == Some(q(&ips.to_string())),
                        "kwok replaced the node's allocatable {RESOURCE}: {advertised:?}"
                    );
                }
                Ok((ready && !tainted).then_some(()))
            }
        },
    )
    .await
}

/// One pod ENI of a NodeNetwork status.
fn eni(id: &str, subnet: &str, device: u32, addresses: &[&str]) -> Value {
    json!({"id": id, "subnetId": subnet, "deviceIndex": device, "addresses": addresses})
}

/// A NodeNetwork for node `name` with `status` (set through the status
/// subresource, as the operator and the agent write it).
async fn create_node_network(
    client: &Client,
    name: &str,
    zone: &str,
    status: Value,
) -> anyhow::Result<()> {
    let api: Api<NodeNetwork> = Api::all(client.clone());
    let nn = NodeNetwork::new(
        name,
        NodeNetworkSpec {
            provider: Provider::Aws,
            instance_id: Some(format!("i-{name}")),
            instance_type: Some("m5.large".into()),
            zone: Some(zone.into()),
            vpc_id: Some("vpc-e2e".into()),
            ipam: IpamSpec::default(),
            pod_cidrs: vec![],
        },
    );
    api.create(&PostParams::default(), &nn)
        .await
        .with_context(|| format!("creating NodeNetwork {name}"))?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .with_context(|| format!("patching NodeNetwork {name}'s status"))?;
    Ok(())
}

/// `status` of a node with `used` of `capacity` pod IPs in use (the agent's
/// usage report), ENIs as given.
fn nn_status(
    enis: Vec<Value>,
    used: &[&str],
    capacity: u32,
    max_enis: u32,
    ipv4_per_eni: u32,
) -> Value {
    let used_map: BTreeMap<&str, String> = used
        .iter()
        .enumerate()
        .map(|(i, ip)| (*ip, format!("e2e/pod-{i}")))
        .collect();
    json!({
        "enis": enis,
        "usage": {"used": used_map},
        "summary": {
            "enis": 2, "poolSize": used.len(), "used": used.len(),
            "capacity": capacity, "maxEnis": max_enis, "ipv4PerEni": ipv4_per_eni,
        },
    })
}

/// A container asking for one pod IP, as the webhook makes it.
fn ip_container() -> Container {
    let one = BTreeMap::from([(RESOURCE.to_owned(), q("1"))]);
    Container {
        name: "app".into(),
        image: Some("registry.k8s.io/pause:3.10".into()),
        resources: Some(ResourceRequirements {
            requests: Some(one.clone()),
            limits: Some(one),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A pod on `selector`'s nodes, asking for a pod IP unless `plain_resources`.
fn pod(name: &str, selector: &[(&str, &str)], asks_for_ip: bool) -> Pod {
    let mut container = ip_container();
    if !asks_for_ip {
        container.resources = None;
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            node_selector: Some(labels(selector)),
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn create_pod(client: &Client, ns: &str, p: &Pod) -> anyhow::Result<()> {
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), p)
        .await
        .with_context(|| format!("creating pod {ns}/{:?}", p.metadata.name))?;
    Ok(())
}

/// The node kube-scheduler bound `ns/name` to.
async fn scheduled(client: &Client, ns: &str, name: &str) -> anyhow::Result<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(90),
        &format!("pod {ns}/{name} scheduled"),
        || {
            let pods = pods.clone();
            async move {
                Ok(pods
                    .get_opt(name)
                    .await?
                    .and_then(|p| p.spec.and_then(|s| s.node_name)))
            }
        },
    )
    .await
}

/// Messages of the `FailedScheduling` events of pod `ns/name`.
async fn failed_scheduling(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
        .filter_map(|e| e.message)
        .collect())
}

/// Waits for a `FailedScheduling` event of `ns/name` containing `needle`,
/// and checks the pod is still unbound.
async fn stays_pending_with(
    client: &Client,
    ns: &str,
    name: &str,
    needle: &str,
) -> anyhow::Result<String> {
    let message = eventually(
        Duration::from_secs(60),
        &format!("a FailedScheduling event of {ns}/{name} saying {needle:?}"),
        || async move {
            let messages = failed_scheduling(client, ns, name).await?;
            Ok(messages.into_iter().find(|m| m.contains(needle)))
        },
    )
    .await?;
    let p = Api::<Pod>::namespaced(client.clone(), ns).get(name).await?;
    if let Some(node) = p.spec.and_then(|s| s.node_name) {
        bail!("{ns}/{name} was bound to {node} despite: {message}");
    }
    Ok(message)
}

/// Asks the extender directly (the scheduler's JSON shape) which of
/// `nodes` pass for `pod`: to wait until its index has seen a change
/// before asking kube-scheduler to act on it.
fn extender_passes(pod: &Pod, nodes: &[&str]) -> anyhow::Result<Vec<String>> {
    let out = post_filter(pod, nodes, true)?;
    ensure!(out.status.success(), "POST /filter failed");
    let answer: Value = serde_json::from_slice(&out.stdout)?;
    Ok(answer["NodeNames"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect())
}

/// `POST /filter` over HTTPS as kube-scheduler makes it (the cluster CA,
/// its client certificate when `identify`).
fn post_filter(pod: &Pod, nodes: &[&str], identify: bool) -> anyhow::Result<std::process::Output> {
    let tls = cluster()
        .and_then(|c| c.info.scheduler.extender_tls.clone())
        .context("the cluster's extender TLS files")?;
    let body = json!({"Pod": pod, "Nodes": null, "NodeNames": nodes});
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sf", "--max-time", "5", "--cacert"])
        .arg(&tls.ca)
        .args(["-H", "Content-Type: application/json", "--data-binary"])
        .arg(body.to_string());
    if identify {
        cmd.arg("--cert").arg(&tls.client_cert);
        cmd.arg("--key").arg(&tls.client_key);
    }
    cmd.arg(format!("https://127.0.0.1:{}/filter", extender_port()))
        .output()
        .context("running curl")
}

/// Plain pods stay off a node whose pod IPs are used up, though kube-scheduler's
/// own fit (allocatable `sextant.io/ip`) would take them.
async fn capacity_phase(client: &Client, ns: &str) -> anyhow::Result<()> {
    let group = [(GROUP, "capacity")];
    // cap-full: 4 of 4 pod IPs used; cap-free: 1 of 4.
    let full_ips = ["10.0.1.100", "10.0.1.101", "10.0.1.102", "10.0.1.103"];
    create_node_network(
        client,
        "cap-full",
        ZONE_A,
        nn_status(
            vec![eni("eni-cf1", SUBNET_A, 1, &full_ips)],
            &full_ips,
            4,
            2,
            5,
        ),
    )
    .await?;
    create_node_network(
        client,
        "cap-free",
        ZONE_A,
        nn_status(
            vec![eni("eni-cr1", SUBNET_A, 1, &["10.0.1.110", "10.0.1.111"])],
            &["10.0.1.110"],
            4,
            2,
            5,
        ),
    )
    .await?;
    for n in ["cap-full", "cap-free"] {
        node_ready(client, n, 20).await?;
    }

    for i in 0..3 {
        let name = format!("plain-{i}");
        create_pod(client, ns, &pod(&name, &group, true)).await?;
        let node = scheduled(client, ns, &name).await?;
        assert_eq!(
            node, "cap-free",
            "{name} placed on a node with no pod IP left"
        );
    }
    // Only the full node to choose: Pending, with the extender's reason.
    let only_full = [("kubernetes.io/hostname", "cap-full")];
    create_pod(client, ns, &pod("pinned-to-full", &only_full, true)).await?;
    let message = stays_pending_with(
        client,
        ns,
        "pinned-to-full",
        "sextant: no pod IP left (4 used + 0 pending >= capacity 4)",
    )
    .await?;
    eprintln!("full node: {message}");
    // A pod without the resource is not the extender's business
    // (managedResources): it goes to the full node.
    create_pod(client, ns, &pod("no-ip-resource", &only_full, false)).await?;
    assert_eq!(scheduled(client, ns, "no-ip-resource").await?, "cap-full");

    // IPs freed on the node (the agent's usage report) are invisible to
    // kube-scheduler: it retries the refused pod on its next cluster event
    // or after podMaxInUnschedulablePodsDuration (5 min). A pod deleted on
    // the node is such an event: the pod is placed well before the 5 min.
    let nns: Api<NodeNetwork> = Api::all(client.clone());
    let set_used = |used: &[&str]| {
        let map: serde_json::Map<String, Value> = full_ips
            .iter()
            .map(|ip| {
                let v = if used.contains(ip) {
                    json!("e2e/pod")
                } else {
                    Value::Null
                };
                ((*ip).to_owned(), v)
            })
            .collect();
        json!({"status": {"usage": {"used": map}}})
    };
    nns.patch_status(
        "cap-full",
        &PatchParams::default(),
        &Patch::Merge(set_used(&full_ips[..1])),
    )
    .await?;
    let probe = pod("pinned-to-full", &only_full, true);
    eventually(
        Duration::from_secs(30),
        "the extender sees the freed IPs",
        || async { Ok((extender_passes(&probe, &["cap-full"])? == ["cap-full"]).then_some(())) },
    )
    .await?;
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("no-ip-resource", &Default::default())
        .await?;
    let requeued = std::time::Instant::now();
    assert_eq!(scheduled(client, ns, "pinned-to-full").await?, "cap-full");
    eprintln!(
        "freed IPs: pinned-to-full placed {:?} after a pod deletion on its node",
        requeued.elapsed()
    );
    // Full again for the outage phase.
    nns.patch_status(
        "cap-full",
        &PatchParams::default(),
        &Patch::Merge(set_used(&full_ips)),
    )
    .await?;
    Ok(())
}

/// A FixedIP for pod `name` of StatefulSet `web`.
async fn create_fixed_ip(
    client: &Client,
    ns: &str,
    name: &str,
    ip: &str,
    zone: &str,
    subnet: &str,
    status: Value,
) -> anyhow::Result<()> {
    let api: Api<FixedIP> = Api::namespaced(client.clone(), ns);
    let ordinal = name
        .rsplit('-')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let mut f = FixedIP::new(
        name,
        FixedIPSpec {
            ip: ip.into(),
            stateful_set: "web".into(),
            ordinal,
            zone: Some(zone.into()),
            subnet_id: Some(subnet.into()),
            reclaim_policy: Default::default(),
            ttl_seconds: None,
        },
    );
    f.metadata.namespace = Some(ns.into());
    api.create(&PostParams::default(), &f)
        .await
        .with_context(|| format!("creating FixedIP {ns}/{name}"))?;
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// A StatefulSet pod with a FixedIP goes to the node holding its address,
/// else only where the address can follow (its zone, an ENI of its subnet
/// with room); a FixedIP in a zone without nodes keeps its pod Pending.
async fn fixed_ip_phase(client: &Client, ns: &str) -> anyhow::Result<()> {
    const ADDR: &str = "10.0.1.50";
    // fx-holder: holds ADDR on eni-h1 and is otherwise full (2 of 2 used,
    // no ENI room, no free slot): only the holder exemption lets a pod in.
    create_node_network(client, "fx-holder", ZONE_A, {
        let mut s = nn_status(
            vec![
                eni("eni-h0", SUBNET_A, 0, &["10.0.1.10"]),
                eni("eni-h1", SUBNET_A, 1, &["10.0.1.11", "10.0.1.12", ADDR]),
            ],
            &["10.0.1.11", "10.0.1.12"],
            2,
            2,
            3,
        );
        s["fixedIps"] = json!({ ADDR: format!("{ns}/web-0") });
        s
    })
    .await?;
    // fx-room: zone A, an ENI in the address's subnet with room.
    create_node_network(
        client,
        "fx-room",
        ZONE_A,
        nn_status(
            vec![
                eni("eni-r0", SUBNET_A, 0, &["10.0.1.30"]),
                eni("eni-r1", SUBNET_A, 1, &["10.0.1.31", "10.0.1.32"]),
            ],
            &["10.0.1.31"],
            18,
            3,
            10,
        ),
    )
    .await?;
    // fx-noroom: zone A, its pod ENI in another subnet, no free ENI slot.
    create_node_network(
        client,
        "fx-noroom",
        ZONE_A,
        nn_status(
            vec![
                eni("eni-n0", SUBNET_A, 0, &["10.0.1.40"]),
                eni("eni-n1", "subnet-0a2", 1, &["10.0.5.41", "10.0.5.42"]),
            ],
            &["10.0.5.41"],
            9,
            2,
            10,
        ),
    )
    .await?;
    // fx-b: zone B, the most free IPs (the extender's headroom score favours it).
    create_node_network(
        client,
        "fx-b",
        ZONE_B,
        nn_status(
            vec![eni("eni-b0", "subnet-0b", 0, &["10.0.2.10"])],
            &[],
            30,
            3,
            10,
        ),
    )
    .await?;
    for n in ["fx-holder", "fx-room", "fx-noroom", "fx-b"] {
        node_ready(client, n, 20).await?;
    }
    create_fixed_ip(
        client,
        ns,
        "web-0",
        ADDR,
        ZONE_A,
        SUBNET_A,
        json!({"phase": "Bound", "node": "fx-holder", "eni": "eni-h1"}),
    )
    .await?;
    // web-1's address lives in a zone no node is in.
    create_fixed_ip(
        client,
        ns,
        "web-1",
        "10.0.3.7",
        "us-east-1c",
        "subnet-0c",
        json!({"phase": "Reserved"}),
    )
    .await?;

    // What the StatefulSet controller creates: web-0, web-1, annotated as
    // docs/fixed-ip.md says (a pod without its FixedIP is refused, not
    // placed as a plain pod).
    let selector = labels(&[("app", "web")]);
    let sts = StatefulSet {
        metadata: ObjectMeta {
            name: Some("web".into()),
            annotations: Some(labels(&[("sextant.io/fixed-ip", "true")])),
            ..Default::default()
        },
        spec: Some(StatefulSetSpec {
            replicas: Some(2),
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            service_name: Some("web".into()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector),
                    annotations: Some(labels(&[("sextant.io/fixed-ip", "true")])),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![ip_container()],
                    node_selector: Some(labels(&[(GROUP, "fixed")])),
                    automount_service_account_token: Some(false),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<StatefulSet>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &sts)
        .await
        .context("creating StatefulSet web")?;

    // Holder preferred (fx-room could take it too; fx-b has more room).
    assert_eq!(scheduled(client, ns, "web-0").await?, "fx-holder");
    let message = stays_pending_with(
        client,
        ns,
        "web-1",
        "sextant: fixed IP 10.0.3.7 lives in zone us-east-1c",
    )
    .await?;
    eprintln!("fixed IP in an empty zone: {message}");

    // The address is parked (the holder lost it): web-0, recreated, may only
    // go where the address can be attached in its zone and subnet.
    let nns: Api<NodeNetwork> = Api::all(client.clone());
    nns.patch_status(
        "fx-holder",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {
            "fixedIps": null,
            "enis": [
                eni("eni-h0", SUBNET_A, 0, &["10.0.1.10"]),
                eni("eni-h1", SUBNET_A, 1, &["10.0.1.11", "10.0.1.12"]),
            ],
        }})),
    )
    .await?;
    Api::<FixedIP>::namespaced(client.clone(), ns)
        .patch_status(
            "web-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Reserved", "node": null, "eni": null}})),
        )
        .await?;
    let probe = Pod {
        metadata: ObjectMeta {
            name: Some("web-0".into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let candidates = ["fx-holder", "fx-room", "fx-noroom", "fx-b"];
    eventually(
        Duration::from_secs(30),
        "the extender sees the parked address",
        || async { Ok((extender_passes(&probe, &candidates)? == ["fx-room"]).then_some(())) },
    )
    .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let old_uid = pods.get("web-0").await?.metadata.uid;
    pods.delete("web-0", &Default::default()).await?;
    let node = eventually(
        Duration::from_secs(90),
        "web-0 recreated and scheduled",
        || {
            let pods = pods.clone();
            let old_uid = old_uid.clone();
            async move {
                Ok(pods.get_opt("web-0").await?.and_then(|p| {
                    (p.metadata.uid != old_uid)
                        .then_some(p.spec.and_then(|s| s.node_name))
                        .flatten()
                }))
            }
        },
    )
    .await?;
    assert_eq!(
        node, "fx-room",
        "web-0 must follow its address's zone and subnet"
    );
    Ok(())
}

/// The chart's default stanza, `ignorable: true`, on a second kube-scheduler
/// (profile `sextant-ignorable`) calling the same extender over HTTPS.
fn start_ignorable_scheduler(c: &Cluster) -> anyhow::Result<Process> {
    let tls = c
        .info
        .scheduler
        .extender_tls
        .as_ref()
        .context("the cluster's extender TLS files")?;
    let config = c.info.dir.join("ignorable-scheduler.yaml");
    std::fs::write(
        &config,
        scheduler_config_with(
            &c.info.scheduler.kubeconfig,
            IGNORABLE,
            c.info.scheduler.extender_url.as_deref(),
            true,
            Some(tls),
        ),
    )?;
    let kc = c.info.scheduler.kubeconfig.display().to_string();
    c.spawn(
        "ignorable-scheduler",
        &c.info.kube_bin.join("kube-scheduler"),
        &[
            format!("--config={}", config.display()),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", free_port()?),
            format!(
                "--cert-dir={}",
                c.info.dir.join("ignorable-scheduler-certs").display()
            ),
        ],
        &[],
    )
}

/// `pod(..)` for the `ignorable: true` scheduler.
fn ignorable_pod(name: &str, selector: &[(&str, &str)], fixed_ip: bool) -> Pod {
    let mut p = pod(name, selector, true);
    if let Some(spec) = p.spec.as_mut() {
        spec.scheduler_name = Some(IGNORABLE.into());
    }
    if fixed_ip {
        p.metadata.annotations = Some(
            [("sextant.io/fixed-ip".to_owned(), "true".to_owned())]
                .into_iter()
                .collect(),
        );
    }
    p
}

/// With `ignorable: true` kube-scheduler skips an extender that answers
/// `Error`; a pod the extender must hold is therefore refused on every node
/// instead: a pod annotated for a fixed IP whose FixedIP does not exist yet
/// stays Pending under the ignorable scheduler too, while a plain pod is
/// placed by the extender's rules.
async fn ignorable_phase(client: &Client, ns: &str) -> anyhow::Result<()> {
    let group = [(GROUP, "capacity")];
    create_pod(client, ns, &ignorable_pod("ign-fixed", &group, true)).await?;
    let message = stays_pending_with(client, ns, "ign-fixed", "does not exist yet").await?;
    eprintln!("ignorable scheduler, fixed-IP pod without FixedIP: {message}");
    ensure!(
        message.contains("Preemption is not helpful"),
        "held as unresolvable: {message}"
    );
    create_pod(client, ns, &ignorable_pod("ign-plain", &group, false)).await?;
    let node = scheduled(client, ns, "ign-plain").await?;
    assert_eq!(
        node, "cap-free",
        "the extender's verdict holds while it is up"
    );
    Ok(())
}

/// With the extender down and `ignorable: false`, kube-scheduler does not
/// place pods that ask for `sextant.io/ip` (every pod the webhook mutated):
/// they wait with the extender's error as FailedScheduling; pods without
/// the resource are scheduled; once it is back the waiting pods are placed.
async fn outage_phase(
    c: &Cluster,
    client: &Client,
    ns: &str,
    extender: &mut Running,
    rendered: &sextant_e2e::chart::Rendered,
) -> anyhow::Result<Running> {
    extender.process.stop(Duration::from_secs(5));
    let group = [(GROUP, "capacity")];
    create_pod(client, ns, &pod("during-outage", &group, true)).await?;
    let message = stays_pending_with(
        client,
        ns,
        "during-outage",
        &format!("127.0.0.1:{}/filter", extender_port()),
    )
    .await?;
    eprintln!("extender down: {message}");
    create_pod(client, ns, &pod("outage-no-ip", &group, false)).await?;
    scheduled(client, ns, "outage-no-ip").await?;
    // The chart's default, `ignorable: true`: the same pod is placed anyway.
    create_pod(
        client,
        ns,
        &ignorable_pod("outage-ignorable", &[(GROUP, "capacity")], false),
    )
    .await?;
    let node = scheduled(client, ns, "outage-ignorable").await?;
    eprintln!("extender down, ignorable: outage-ignorable placed on {node}");
    // Still waiting after the scheduler's retries in the meantime.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let p = Api::<Pod>::namespaced(client.clone(), ns)
        .get("during-outage")
        .await?;
    ensure!(
        p.spec.and_then(|s| s.node_name).is_none(),
        "during-outage was bound while the extender was down"
    );

    let restarted = start_extender(c, rendered, "sextant-scheduler-ext-2").await?;
    let back = std::time::Instant::now();
    let node = scheduled(client, ns, "during-outage").await?;
    eprintln!(
        "extender back: during-outage placed {:?} after /readyz",
        back.elapsed()
    );
    assert_eq!(
        node, "cap-free",
        "placed by the extender's rules once it is back"
    );
    Ok(restarted)
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_scheduler_with_the_extender_keeps_pods_off_full_nodes_and_fixed_ip_pods_with_their_address()
-> anyhow::Result<()> {
    let Some(c) = cluster() else {
        return Ok(());
    };
    let admin = c.admin().await?;
    // The chart's ServiceAccounts and RBAC; nothing that would mutate or
    // place pods besides the scheduler.
    let rendered = install::install(
        c,
        Some(
            "webhook:\n  enabled: false\noperator:\n  enabled: false\nagent:\n  enabled: false\ndevicePlugin:\n  enabled: false\n"
                .into(),
        ),
    )?;
    let mut extender = start_extender(c, &rendered, "sextant-scheduler-ext").await?;
    // Only kube-scheduler's certificate opens the extender.
    let probe = pod("tls-probe", &[(GROUP, "none")], true);
    ensure!(
        post_filter(&probe, &["cap-full"], true)?.status.success(),
        "kube-scheduler's client certificate was refused"
    );
    let anonymous = post_filter(&probe, &["cap-full"], false)?;
    ensure!(
        !anonymous.status.success(),
        "answered a client without a certificate: {}",
        String::from_utf8_lossy(&anonymous.stdout)
    );
    for (name, group, zone) in [
        ("cap-full", "capacity", ZONE_A),
        ("cap-free", "capacity", ZONE_A),
        ("fx-holder", "fixed", ZONE_A),
        ("fx-room", "fixed", ZONE_A),
        ("fx-noroom", "fixed", ZONE_A),
        ("fx-b", "fixed", ZONE_B),
    ] {
        create_node(&admin, name, group, zone, 20).await?;
    }
    let ns = c.namespace("sched").await?;

    capacity_phase(&admin, &ns).await?;
    fixed_ip_phase(&admin, &ns).await?;
    let _ignorable = start_ignorable_scheduler(c)?;
    ignorable_phase(&admin, &ns).await?;
    let restarted = outage_phase(c, &admin, &ns, &mut extender, &rendered).await?;

    // kwok kept the advertised resource through its heartbeats.
    for n in ["cap-full", "fx-holder"] {
        node_ready(&admin, n, 20).await?;
    }
    extender.assert_no_forbidden()?;
    restarted.assert_no_forbidden()?;
    Ok(())
}
