//! `sextant-operator` against a real kube-apiserver, under the chart's
//! ServiceAccount and RBAC: two replicas elect a leader on a real Lease and
//! hand over when the leader dies; kwok nodes with a providerID get
//! NodeNetworks; the leader fills them to `preAllocate`, on the embedded
//! simulated cloud (`--provider sim`) and on `moto_server` (`--provider
//! aws`, the ENIs checked in moto afterwards).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{coordination::v1::Lease, core::v1::Node};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use sextant_crds::NodeNetwork;
use sextant_e2e::{
    chart::NAMESPACE,
    cluster::{
        Cluster, Options, Process, eventually,
        install::{self, Running},
        supervisor::free_port,
    },
};

/// The tests here share one chart install and its Lease RBAC: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

/// Runs one operator replica named `pod` with the chart's environment plus
/// `env`, its admin server on a free loopback port.
async fn operator(
    c: &Cluster,
    rendered: &sextant_e2e::chart::Rendered,
    pod: &str,
    env: Vec<(&'static str, String)>,
) -> Running {
    install::run_operator(c, rendered, pod, env)
        .await
        .expect("operator started")
        .0
}

async fn lease_holder(c: &Cluster, name: &str) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(c.admin().await?, NAMESPACE);
    Ok(leases
        .get_opt(name)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

/// Free addresses in a NodeNetwork's pool (neither used by the agent nor
/// fixed nor in the release handshake).
fn free_in_pool(nn: &NodeNetwork) -> usize {
    let Some(status) = &nn.status else { return 0 };
    let used: std::collections::BTreeSet<&String> = status
        .usage
        .as_ref()
        .map(|u| u.used.keys().collect())
        .unwrap_or_default();
    status
        .pool
        .keys()
        .filter(|ip| {
            !used.contains(ip)
                && !status.fixed_ips.contains_key(*ip)
                && !status.release.contains_key(*ip)
        })
        .count()
}

async fn wait_pools(
    c: &Cluster,
    nodes: &[String],
    want: usize,
) -> anyhow::Result<BTreeMap<String, NodeNetwork>> {
    let api: Api<NodeNetwork> = Api::all(c.admin().await?);
    eventually(
        Duration::from_secs(120),
        "NodeNetworks filled to preAllocate",
        || {
            let api = api.clone();
            async move {
                let mut out = BTreeMap::new();
                for n in nodes {
                    let Some(nn) = api.get_opt(n).await? else {
                        return Ok(None);
                    };
                    if free_in_pool(&nn) < want {
                        return Ok(None);
                    }
                    out.insert(n.clone(), nn);
                }
                Ok(Some(out))
            }
        },
    )
    .await
}

fn values_sim(vpc: &str) -> String {
    format!(
        "provider: sim\nregion: us-east-1\nclusterName: e2e\nvpcId: {vpc}\nipam:\n  preAllocate: 4\noperator:\n  leaseDuration: 6s\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_elect_one_leader_and_hand_over_when_it_dies() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let rendered = install::install(c, Some(values_sim("vpc-sim"))).expect("install");
    let mut replicas = [
        operator(c, &rendered, "sextant-operator-a", vec![]).await,
        operator(c, &rendered, "sextant-operator-b", vec![]).await,
    ];
    let names = ["sextant-operator-a", "sextant-operator-b"];
    let first = eventually(
        Duration::from_secs(60),
        "a leader holds the Lease",
        || async { lease_holder(c, "sextant-operator").await },
    )
    .await
    .expect("leader");
    let leader = names
        .iter()
        .position(|n| *n == first)
        .unwrap_or_else(|| panic!("holder {first} is neither replica"));
    let standby = 1 - leader;
    // Kill the leader (no graceful release): the other replica must take
    // over once the lease (6 s here) expires.
    replicas[leader].process.stop(Duration::ZERO);
    let next = eventually(
        Duration::from_secs(30),
        "the standby takes the Lease",
        || async {
            Ok(lease_holder(c, "sextant-operator")
                .await?
                .filter(|h| h == names[standby]))
        },
    )
    .await
    .expect("handover");
    assert_eq!(next, names[standby]);
    replicas[standby]
        .assert_no_forbidden()
        .expect("operator RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn kwok_nodes_get_node_networks_filled_to_pre_allocate_on_the_simulated_cloud() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let rendered = install::install(c, Some(values_sim("vpc-sim"))).expect("install");
    let op = operator(c, &rendered, "sextant-operator-sim", vec![]).await;
    let nodes_api: Api<Node> = Api::all(c.admin().await.expect("admin"));
    let mut names = Vec::new();
    for i in 0..3 {
        let name = format!("sim-node-{i}");
        let zone = if i % 2 == 0 {
            "us-east-1a"
        } else {
            "us-east-1b"
        };
        let node = install::kwok_node(&name, zone, &format!("i-0e2e{i:013}"), "m5.large");
        nodes_api
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
        names.push(name);
    }
    let pools = wait_pools(c, &names, 4).await.expect("pools");
    for (name, nn) in &pools {
        assert_eq!(
            nn.spec.zone.as_deref().map(|z| z.starts_with("us-east-1")),
            Some(true),
            "{name}"
        );
        let status = nn.status.as_ref().expect("status");
        assert!(!status.enis.is_empty(), "{name}: no ENIs in status");
    }
    // No address is in two pools.
    let mut seen = BTreeMap::new();
    for (name, nn) in &pools {
        for ip in nn.status.as_ref().expect("status").pool.keys() {
            if let Some(other) = seen.insert(ip.clone(), name.clone()) {
                panic!("{ip} is in the pools of {other} and {name}");
            }
        }
    }
    op.assert_no_forbidden().expect("operator RBAC");
    for n in &names {
        let _ = nodes_api.delete(n, &DeleteParams::default()).await;
    }
}

/// `moto_server` on a loopback port, with a VPC, a subnet per zone (tagged
/// for pods), a security group and one instance per zone made through
/// boto3 (moto's own dependency, in the venv).
struct Moto {
    _process: Process,
    url: String,
    python: std::path::PathBuf,
}

impl Moto {
    fn start(c: &Cluster) -> Moto {
        let python = sextant_e2e::chart::venv_python().expect("venv");
        let bin = python.with_file_name("moto_server");
        assert!(
            bin.is_file(),
            "moto_server not in the venv ({}): run make setup",
            bin.display()
        );
        let port = free_port().expect("port");
        let process = c
            .spawn(
                "moto",
                &bin,
                &[
                    "-H".into(),
                    "127.0.0.1".into(),
                    "-p".into(),
                    port.to_string(),
                ],
                &[],
            )
            .expect("moto");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server did not start: {}",
                process.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto {
            _process: process,
            url,
            python,
        }
    }

    /// Runs a boto3 snippet against moto; its stdout.
    fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\nec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url='{}', aws_access_key_id='testing', aws_secret_access_key='testing')\n{code}",
            self.url
        );
        let out = std::process::Command::new(&self.python)
            .args(["-c", &script])
            .output()
            .expect("python");
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kwok_nodes_backed_by_moto_instances_get_enis_from_moto() {
    let _serial = SERIAL.lock().await;
    let Some(c) = cluster() else { return };
    let moto = Moto::start(c);
    let setup = moto.boto(
        "vpc = ec2.create_vpc(CidrBlock='10.0.0.0/16')['Vpc']['VpcId']\n\
         out = {'vpc': vpc, 'instances': {}}\n\
         for i, zone in enumerate(['us-east-1a', 'us-east-1b']):\n\
         \x20   sn = ec2.create_subnet(VpcId=vpc, CidrBlock=f'10.0.{i}.0/24', AvailabilityZone=zone)['Subnet']['SubnetId']\n\
         \x20   ec2.create_tags(Resources=[sn], Tags=[{'Key': 'sextant.io/pods', 'Value': 'true'}])\n\
         \x20   inst = ec2.run_instances(ImageId='ami-12c6146b', MinCount=1, MaxCount=1, InstanceType='m5.large', SubnetId=sn)['Instances'][0]['InstanceId']\n\
         \x20   out['instances'][zone] = inst\n\
         sg = ec2.create_security_group(GroupName='pods', Description='pods', VpcId=vpc)['GroupId']\n\
         ec2.create_tags(Resources=[sg], Tags=[{'Key': 'sextant.io/pods', 'Value': 'true'}])\n\
         print(json.dumps(out))",
    );
    let setup: serde_json::Value = serde_json::from_str(&setup).expect("setup json");
    let vpc = setup["vpc"].as_str().expect("vpc").to_owned();
    let values = format!(
        "provider: aws\nregion: us-east-1\nclusterName: e2e-aws\nvpcId: {vpc}\ncloud:\n  endpoint: {url}\nipam:\n  preAllocate: 4\n  subnetTags:\n    sextant.io/pods: \"true\"\n  securityGroupTags:\n    sextant.io/pods: \"true\"\noperator:\n  leaseName: sextant-operator-aws\n",
        url = moto.url
    );
    let rendered = install::install(c, Some(values)).expect("install");
    let op = operator(
        c,
        &rendered,
        "sextant-operator-aws",
        vec![
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ],
    )
    .await;
    let nodes_api: Api<Node> = Api::all(c.admin().await.expect("admin"));
    let mut names = Vec::new();
    for (zone, inst) in setup["instances"].as_object().expect("instances") {
        let inst = inst.as_str().expect("id");
        let name = format!("aws-node-{zone}");
        let node = install::kwok_node(&name, zone, inst, "m5.large");
        nodes_api
            .create(&PostParams::default(), &node)
            .await
            .expect("node");
        names.push(name);
    }
    let pools = wait_pools(c, &names, 4)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\noperator log:\n{}", op.process.log_tail(40)));
    // Every pooled address is a secondary private IP of an ENI moto holds,
    // on that node's instance.
    let moto_ips = moto.boto(
        "res = {}\n\
         for eni in ec2.describe_network_interfaces()['NetworkInterfaces']:\n\
         \x20   inst = (eni.get('Attachment') or {}).get('InstanceId', '')\n\
         \x20   for a in eni['PrivateIpAddresses']:\n\
         \x20       res[a['PrivateIpAddress']] = inst\n\
         print(json.dumps(res))",
    );
    let moto_ips: BTreeMap<String, String> = serde_json::from_str(&moto_ips).expect("ips");
    for (name, nn) in &pools {
        let inst = nn.spec.instance_id.clone().expect("instance");
        for ip in nn.status.as_ref().expect("status").pool.keys() {
            assert_eq!(
                moto_ips.get(ip),
                Some(&inst),
                "{name}: {ip} is not on {inst} in moto"
            );
        }
    }
    op.assert_no_forbidden().expect("operator RBAC");
    for n in &names {
        let _ = nodes_api.delete(n, &DeleteParams::default()).await;
    }
}
