//! `sextant-agent` against a real kube-apiserver, under the chart's agent
//! ServiceAccount and ClusterRole: its real watches program what its agent
//! API shows (services, policy), its usage reports and FixedIP lookups work
//! on the real API server, and the Events it posts on its Node are allowed
//! by the chart's RBAC (and refused, visibly, without the events rule).
//!
//! ```text
//!  test (admin) ──creates──▶ kwok Node, NodeNetwork + pool, Services, slices,
//!      │                     policies, pods, FixedIPs
//!      │                                   │ watch (agent token, chart RBAC)
//!      │  curl --unix-socket               ▼
//!      └──────────────────────────▶ sextant-agent ──(proxy: cut = control plane away)──▶ kube-apiserver
//! ```

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::{
    core::v1::{Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
    events::v1::Event,
    networking::v1::NetworkPolicy,
    rbac::v1::{ClusterRole, ClusterRoleBinding},
};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use sextant_crds::{FixedIP, NodeNetwork, SextantIdentity, SextantNetworkPolicy};
use sextant_e2e::{
    chart::{NAMESPACE, Object, Rendered},
    cluster::{
        BoundTo, Cluster, Options, eventually,
        install::{self, PodFacts, Running},
    },
};
use sextant_testkit::Tier;

/// Every test holds this shared while it runs; the one that needs a quiet
/// control plane (no object of this binary changing) holds it exclusively.
static QUIET: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// The shared cluster with the chart installed, when this test may run: the
/// agent needs the `cluster` tier and, for its datapath and the pods' network
/// namespaces, the `kernel` tier.
fn cluster() -> Option<&'static Cluster> {
    let test = sextant_testkit::current_test("cluster_agent");
    if !sextant_testkit::require(Tier::Kernel, sextant_testkit::root_unavailable(), &test) {
        return None;
    }
    let c = Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())?;
    let _ = installed(c);
    Some(c)
}

/// The chart installed once for the whole binary (CRDs, RBAC, ServiceAccounts).
fn installed(c: &Cluster) -> &'static Rendered {
    static INSTALLED: OnceLock<Rendered> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tokio::task::block_in_place(|| install::install(c, None).expect("chart installed"))
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A name unique in this test binary's cluster and on this host.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

// ---------------------------------------------------------------- kube objects

/// A kwok node (kwok keeps it Ready) and its NodeNetwork, both as admin.
async fn node_with_network(admin: &Client, name: &str) -> anyhow::Result<()> {
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake"},
            "labels": {"type": "kwok", "kubernetes.io/hostname": name},
        },
    }))?;
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let nn: NodeNetwork = serde_json::from_value(json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
        "metadata": {"name": name},
        // An ENI node whose pool the tests write as the operator would
        // (a static node's agent would serve its whole pod CIDR besides).
        "spec": {"provider": "aws", "instanceId": format!("i-{name}")},
    }))?;
    Api::<NodeNetwork>::all(admin.clone())
        .create(&PostParams::default(), &nn)
        .await
        .with_context(|| format!("creating NodeNetwork {name}"))?;
    Ok(())
}

// ---------------------------------------------------------------- the agent

/// A bpffs directory for one agent's pins, removed when dropped.
struct BpfRoot(PathBuf);

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to run one agent.
struct AgentSpec<'a> {
    /// Its kwok node (NODE_NAME).
    node: &'a str,
    /// The ServiceAccount whose token it runs with.
    service_account: &'a str,
    /// Load the eBPF datapath (pins under a bpffs directory of its own);
    /// `false` runs `--no-datapath`.
    datapath: bool,
    /// `--policy-fail-open-after` in seconds (0: never).
    fail_open_after: u64,
    /// `--usage-report-interval` in seconds.
    update_rate: u64,
    /// Reach the API server through this proxy instead of directly.
    proxy: Option<&'a Proxy>,
}

impl Default for AgentSpec<'_> {
    fn default() -> Self {
        AgentSpec {
            node: "",
            service_account: "sextant-agent",
            datapath: false,
            fail_open_after: 0,
            update_rate: 2,
            proxy: None,
        }
    }
}

/// A running agent; stopped (and its pins removed) when dropped.
struct Agent {
    running: Running,
    socket: PathBuf,
    _bpf: Option<BpfRoot>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Stop it before its pins go.
        self.running.process.stop(Duration::from_secs(3));
    }
}

/// Starts `sextant-agent` with the rendered DaemonSet container's
/// environment and a token of `spec.service_account`, its socket, state and
/// pins of its own, and waits until its API says `ready`.
///
/// The harness's `install::run` writes the kubeconfig it starts a component
/// with; an agent that must reach the API server through a [`Proxy`] needs
/// another server URL, so this builds the same environment itself.
async fn start_agent(c: &Cluster, spec: AgentSpec<'_>) -> anyhow::Result<Agent> {
    // One token request at a time: the harness writes it to one file per
    // ServiceAccount, which each agent copies to a file of its own.
    static TOKENS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let name = format!("agent-{}", spec.node);
    let dir = install::scratch(c, &name)?;
    let kubeconfig = dir.join("kubeconfig");
    {
        let _one = TOKENS.lock().await;
        // Bound to its Node, as a DaemonSet pod's token is: the chart's
        // admission policy lets only such a token write its NodeNetwork.
        let (shared, _) = c
            .bound_service_account_kubeconfig(
                NAMESPACE,
                spec.service_account,
                BoundTo::Node(spec.node),
            )
            .await?;
        let mut text = std::fs::read_to_string(&shared)?;
        if let Some(proxy) = spec.proxy {
            text = text.replace(&c.info.api_url, &format!("https://{}", proxy.addr));
        }
        std::fs::write(&kubeconfig, text)?;
    }
    let bpf = spec.datapath.then(|| {
        BpfRoot(PathBuf::from(format!(
            "/sys/fs/bpf/sextant-e2e-{}",
            unique("agent")
        )))
    });
    let socket = dir.join("agent.sock");
    let mut overrides: Vec<(&str, String)> = vec![
        ("SEXTANT_AGENT_SOCKET", socket.display().to_string()),
        ("SEXTANT_STATE_DIR", dir.join("state").display().to_string()),
        // Several agents share this host's network namespace: any free port.
        ("SEXTANT_METRICS_ADDR", "127.0.0.1:0".to_owned()),
        (
            "SEXTANT_BPF_ROOT",
            bpf.as_ref()
                .map_or_else(|| dir.join("bpf"), |b| b.0.clone())
                .display()
                .to_string(),
        ),
        (
            "SEXTANT_USAGE_REPORT_INTERVAL",
            format!("{}s", spec.update_rate),
        ),
        (
            "SEXTANT_POLICY_FAIL_OPEN_AFTER",
            format!("{}s", spec.fail_open_after),
        ),
        ("SEXTANT_FIXED_IP_WAIT", "60s".to_owned()),
        // Freed addresses stay in the report's `cooling` while a test looks.
        ("SEXTANT_IP_COOLDOWN", "600s".to_owned()),
    ];
    if !spec.datapath {
        overrides.push(("SEXTANT_NO_DATAPATH", "true".to_owned()));
    }
    let rendered = installed(c);
    let pod = install::pod_spec(rendered, "sextant-agent")?;
    let container = pod
        .containers
        .iter()
        .find(|k| k.name == "agent")
        .context("the agent DaemonSet has no container agent")?;
    let mut env = install::container_env(
        container,
        &PodFacts {
            pod_name: name.clone(),
            node_name: spec.node.to_owned(),
        },
        &overrides,
    )?;
    env.push(("KUBECONFIG".into(), kubeconfig.display().to_string()));
    env.push((
        "RUST_LOG".into(),
        std::env::var("SEXTANT_E2E_LOG").unwrap_or_else(|_| "info".into()),
    ));
    let args = container.args.clone().unwrap_or_default();
    let process = c.spawn(&name, &install::bin("sextant-agent")?, &args, &env)?;
    let mut agent = Agent {
        running: Running {
            process,
            kubeconfig: Some(kubeconfig),
        },
        socket,
        _bpf: bpf,
    };
    agent.wait_ready().await?;
    Ok(agent)
}

impl Agent {
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.running.process.exited() {
                bail!(
                    "the agent exited ({status}):\n{}",
                    self.running.process.log_tail(40)
                );
            }
            if let Ok((200, h)) = self.call("GET", "/v1/healthz", None).await
                && h["state"] == "ready"
            {
                return Ok(());
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "the agent was not ready within 60 s:\n{}",
                self.running.process.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// One request to its agent API: `(HTTP status, JSON body)`.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut cmd = tokio::process::Command::new("curl");
        cmd.arg("-s")
            .arg("--max-time")
            .arg("90")
            .arg("--unix-socket")
            .arg(&self.socket)
            .args(["-X", method, "-w", "\n%{http_code}"]);
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "-d", &b.to_string()]);
        }
        let out = cmd.arg(format!("http://agent{path}")).output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').context("curl printed no status")?;
        let code: u16 = code.trim().parse().context("curl status")?;
        let value = if body.trim().is_empty() {
            Value::Null
        } else if let Ok(v) = serde_json::from_str(body) {
            v
        } else {
            Value::String(body.to_owned())
        };
        Ok((code, value))
    }

    /// `GET` that must answer 200.
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let (code, v) = self.call("GET", path, None).await?;
        ensure!(code == 200, "GET {path}: {code} {v}");
        Ok(v)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.running.process.log).unwrap_or_default()
    }
}

// ---------------------------------------------------------------- the proxy

/// A TCP proxy in front of the API server: `cut` drops every connection
/// through it and refuses new ones (the control plane is away, for this one
/// client), `restore` lets them through again.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> anyhow::Result<Proxy> {
        let upstream: SocketAddr = upstream
            .trim_start_matches("https://")
            .parse()
            .context("API server address")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let task = tokio::spawn({
            let (cut, conns) = (cut.clone(), conns.clone());
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        drop(down);
                        continue;
                    }
                    let conn = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    let mut live = conns.lock().unwrap_or_else(|p| p.into_inner());
                    live.retain(|h| !h.is_finished());
                    live.push(conn.abort_handle());
                }
            }
        });
        Ok(Proxy {
            addr,
            cut,
            conns,
            task,
        })
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

// ---------------------------------------------------------------- helpers

/// A network namespace for one pod's CNI ADD, deleted when dropped (the
/// veth pair and its host route go with it).
struct NetNs(String);

impl NetNs {
    fn new() -> anyhow::Result<NetNs> {
        let name = unique("sx-e2e");
        let out = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .context("running ip netns add (iproute2)")?;
        ensure!(
            out.status.success(),
            "ip netns add {name} failed (CNI ADD needs root and network namespaces): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(NetNs(name))
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .output();
    }
}

/// The body of a CNI request for pod `namespace/pod`.
fn cni(container: &str, netns: &NetNs, namespace: &str, pod: &str) -> Value {
    json!({
        "containerId": container, "ifname": "eth0", "netns": netns.path(),
        "podNamespace": namespace, "podName": pod,
    })
}

/// Writes pool addresses (and fixed IPs) into NodeNetwork `node`'s status
/// the way the operator does: a JSON merge patch of its own fields.
async fn operator_writes(
    admin: &Client,
    node: &str,
    pool: &[&str],
    fixed: &[(&str, &str)],
) -> anyhow::Result<()> {
    let pool: serde_json::Map<String, Value> = pool
        .iter()
        .map(|ip| ((*ip).to_owned(), json!({"eni": ""})))
        .collect();
    let mut status = json!({"pool": pool});
    if !fixed.is_empty() {
        let fixed: serde_json::Map<String, Value> = fixed
            .iter()
            .map(|(ip, pod)| ((*ip).to_owned(), json!(pod)))
            .collect();
        status["fixedIps"] = Value::Object(fixed);
    }
    Api::<NodeNetwork>::all(admin.clone())
        .patch_status(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .with_context(|| format!("patching NodeNetwork {node} status"))?;
    Ok(())
}

/// The value of an unlabelled series in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// `(type, reason, note)` of the Events the agent posted on Node `node`
/// (namespace `default`, where Events about cluster-scoped objects go; the
/// node controller and kwok post theirs there too).
async fn agent_events(admin: &Client, node: &str) -> anyhow::Result<Vec<(String, String, String)>> {
    let events: Api<Event> = Api::namespaced(admin.clone(), "default");
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| {
            e.reporting_controller.as_deref() == Some("sextant-agent")
                && e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Node") && r.name.as_deref() == Some(node)
                })
        })
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect())
}

/// A policy the snapshot carries, so that the agent has something to open.
async fn some_policy(admin: &Client, namespace: &str) -> anyhow::Result<()> {
    let p: SextantNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
        "metadata": {"name": "db", "namespace": namespace},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "db"}},
            "ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "web"}}],
                "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}],
            }],
        },
    }))?;
    Api::<SextantNetworkPolicy>::namespaced(admin.clone(), namespace)
        .create(&PostParams::default(), &p)
        .await?;
    Ok(())
}

/// Waits until the agent's policy report names `policy` as enforced.
async fn wait_enforced(agent: &Agent, policy: &str) -> anyhow::Result<Value> {
    eventually(
        Duration::from_secs(60),
        &format!("{policy} enforced"),
        || async {
            let report = agent.get("/v1/policy").await?;
            let enforced = report["enforced"].as_array().cloned().unwrap_or_default();
            Ok(enforced.iter().any(|p| p == policy).then_some(report))
        },
    )
    .await
}

/// The agent's fail-open gauge.
async fn fail_open_gauge(agent: &Agent) -> anyhow::Result<Option<f64>> {
    let (_, text) = agent.call("GET", "/metrics", None).await?;
    Ok(metric(
        text.as_str().unwrap_or_default(),
        "sextant_agent_policy_fail_open",
    ))
}

/// Cuts the agent off the API server until fail-open engages, lets it back
/// until enforcement is restored; both Events are then due on its Node.
async fn fail_open_and_back(agent: &Agent, proxy: &Proxy) -> anyhow::Result<()> {
    proxy.cut();
    eventually(
        Duration::from_secs(60),
        "fail-open engaged while the API server is unreachable",
        || async { Ok((fail_open_gauge(agent).await? == Some(1.0)).then_some(())) },
    )
    .await?;
    proxy.restore();
    eventually(
        Duration::from_secs(60),
        "enforcement restored once the API server answers again",
        || async { Ok((fail_open_gauge(agent).await? == Some(0.0)).then_some(())) },
    )
    .await
}

/// The chart's agent ClusterRole without its `events` rule, bound to a new
/// ServiceAccount in the release namespace; returns the ServiceAccount.
async fn agent_role_without_events(c: &Cluster, admin: &Client) -> anyhow::Result<String> {
    let name = unique("sextant-agent-no-events");
    let mut role = installed(c)
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::ClusterRole(r) if r.metadata.name.as_deref() == Some("sextant-agent") => {
                Some(r.as_ref().clone())
            }
            _ => None,
        })
        .context("the chart renders no sextant-agent ClusterRole")?;
    let rules = role.rules.take().unwrap_or_default();
    let before = rules.len();
    role.rules = Some(
        rules
            .into_iter()
            .filter(|r| !r.resources.iter().flatten().any(|x| x == "events"))
            .collect(),
    );
    ensure!(
        role.rules.as_ref().map_or(0, Vec::len) + 1 == before,
        "the agent ClusterRole has no single events rule to cut"
    );
    role.metadata = kube::api::ObjectMeta {
        name: Some(name.clone()),
        ..Default::default()
    };
    Api::<ClusterRole>::all(admin.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let sa: ServiceAccount = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE},
    }))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &sa)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}],
    }))?;
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(name)
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread")]
async fn services_and_endpoint_slices_program_the_agents_service_map() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("svc");
    node_with_network(&admin, &node).await.expect("node");
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            datapath: true,
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    let ns = c.namespace("svc").await.expect("namespace");
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": ns},
        "spec": {"ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353},
        ]},
    }))
    .expect("service");
    let svc = Api::<Service>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await
        .expect("service created");
    let vip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("the API server assigned a ClusterIP");
    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
    let slice = |ready_6: bool| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": ns, "labels": {
                "kubernetes.io/service-name": "web",
                "endpointslice.kubernetes.io/managed-by": "sextant-e2e",
            }},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.1.6"], "conditions": {"ready": ready_6}},
                {"addresses": ["10.244.1.7"], "conditions": {"ready": true}},
            ],
            "ports": [
                {"name": "http", "port": 8080, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"},
            ],
        }))
        .expect("slice")
    };
    slices
        .create(&PostParams::default(), &slice(false))
        .await
        .expect("slice created");

    // The map as the datapath holds it: VIP:port -> ready backends only.
    let frontend = |port: u16, proto: &str, backends: &[&str], bport: u16| {
        json!({
            "frontend": {"vip": vip, "port": port, "proto": proto},
            "backends": backends.iter().map(|ip| json!({"ip": ip, "port": bport})).collect::<Vec<_>>(),
        })
    };
    let ours = |list: &Value| -> BTreeSet<String> {
        list["services"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["frontend"]["vip"] == vip.as_str())
            .map(Value::to_string)
            .collect()
    };
    let want: BTreeSet<String> = [
        frontend(80, "TCP", &["10.244.1.5", "10.244.1.7"], 8080),
        frontend(53, "UDP", &["10.244.1.5", "10.244.1.7"], 5353),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    eventually(
        Duration::from_secs(60),
        "both ports of the Service with their ready backends",
        || async { Ok((ours(&agent.get("/v1/services").await?) == want).then_some(())) },
    )
    .await
    .expect("service map");

    // A backend turning ready joins; the Service going away removes both ports.
    slices
        .replace("web-1", &PostParams::default(), &{
            let mut s = slice(true);
            s.metadata.resource_version = slices
                .get("web-1")
                .await
                .expect("slice")
                .metadata
                .resource_version;
            s
        })
        .await
        .expect("slice updated");
    let want: BTreeSet<String> = [
        frontend(80, "TCP", &["10.244.1.5", "10.244.1.6", "10.244.1.7"], 8080),
        frontend(53, "UDP", &["10.244.1.5", "10.244.1.6", "10.244.1.7"], 5353),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    eventually(
        Duration::from_secs(60),
        "the newly ready backend",
        || async { Ok((ours(&agent.get("/v1/services").await?) == want).then_some(())) },
    )
    .await
    .expect("updated service map");
    Api::<Service>::namespaced(admin.clone(), &ns)
        .delete("web", &DeleteParams::default())
        .await
        .expect("service deleted");
    eventually(
        Duration::from_secs(60),
        "the deleted Service's frontends removed",
        || async {
            Ok(ours(&agent.get("/v1/services").await?)
                .is_empty()
                .then_some(()))
        },
    )
    .await
    .expect("frontends removed");
    agent.running.assert_no_forbidden().expect("agent RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn network_policies_reach_the_agents_policy_engine_and_it_publishes_identities() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("pol");
    node_with_network(&admin, &node).await.expect("node");
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            datapath: true,
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    let ns = c.namespace("pol").await.expect("namespace");
    some_policy(&admin, &ns).await.expect("policy");
    let np: NetworkPolicy = serde_json::from_value(json!({
        "metadata": {"name": "deny-ingress", "namespace": ns},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }))
    .expect("netpol");
    let nps: Api<NetworkPolicy> = Api::namespaced(admin.clone(), &ns);
    nps.create(&PostParams::default(), &np)
        .await
        .expect("NetworkPolicy created");
    // Kept by the CRD schema (unknown fields are preserved), refused by the agent.
    let fqdn: SextantNetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "SextantNetworkPolicy",
        "metadata": {"name": "fqdn", "namespace": ns},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "web"}},
            "egress": [{"toFQDNs": [{"matchName": "example.com"}]}],
        },
    }))
    .expect("policy");
    Api::<SextantNetworkPolicy>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &fqdn)
        .await
        .expect("fqdn policy created");
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    for (name, app) in [("db-0", "db"), ("web-0", "web")] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("pod created");
    }

    let snp = format!("SextantNetworkPolicy/{ns}/db");
    let netpol = format!("NetworkPolicy/{ns}/deny-ingress");
    let report = eventually(
        Duration::from_secs(60),
        "both policy kinds enforced, the FQDN policy refused",
        || async {
            let r = agent.get("/v1/policy").await?;
            let enforced = r["enforced"].as_array().cloned().unwrap_or_default();
            let refused = r["rejected"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|x| x["policy"] == format!("SextantNetworkPolicy/{ns}/fqdn"));
            Ok((enforced.iter().any(|p| *p == snp)
                && enforced.iter().any(|p| *p == netpol)
                && refused)
                .then_some(r))
        },
    )
    .await
    .expect("policy report");
    let rejected = report["rejected"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["policy"] == format!("SextantNetworkPolicy/{ns}/fqdn"))
        .cloned()
        .expect("rejected");
    assert_eq!(rejected["reason"], "Unsupported", "{rejected}");
    assert!(
        rejected["message"]
            .as_str()
            .unwrap_or_default()
            .contains("toFQDNs"),
        "{rejected}"
    );

    // The pods' label sets got identity numbers, created by the agent.
    let identities: Api<SextantIdentity> = Api::all(admin.clone());
    for app in ["db", "web"] {
        eventually(
            Duration::from_secs(60),
            &format!("a SextantIdentity for app={app} in {ns}"),
            || async {
                let found = identities
                    .list(&ListParams::default())
                    .await?
                    .items
                    .into_iter()
                    .any(|i| {
                        i.spec.labels.get("app").map(String::as_str) == Some(app)
                            && i.spec.labels.get("io.kubernetes.pod.namespace") == Some(&ns)
                    });
                Ok(found.then_some(()))
            },
        )
        .await
        .expect("identity published");
    }

    // A deleted policy leaves the engine.
    nps.delete("deny-ingress", &DeleteParams::default())
        .await
        .expect("NetworkPolicy deleted");
    eventually(
        Duration::from_secs(60),
        "the deleted NetworkPolicy no longer enforced",
        || async {
            let r = agent.get("/v1/policy").await?;
            let enforced = r["enforced"].as_array().cloned().unwrap_or_default();
            Ok(
                (!enforced.iter().any(|p| *p == netpol) && enforced.iter().any(|p| *p == snp))
                    .then_some(()),
            )
        },
    )
    .await
    .expect("policy removed");
    agent.running.assert_no_forbidden().expect("agent RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_reports_reach_node_network_status_under_the_agents_rbac() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("usage");
    node_with_network(&admin, &node).await.expect("node");
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    let pool = ["198.18.3.10", "198.18.3.11", "198.18.3.12"];
    operator_writes(&admin, &node, &pool, &[])
        .await
        .expect("pool");
    eventually(
        Duration::from_secs(60),
        "the agent took the pool from its NodeNetwork",
        || async { Ok((agent.get("/v1/healthz").await?["ipam"]["pool"] == 3).then_some(())) },
    )
    .await
    .expect("pool");

    let netns = NetNs::new().expect("netns");
    let container = unique("usage-c");
    let (code, reply) = agent
        .call(
            "POST",
            "/v1/cni/add",
            Some(&cni(&container, &netns, "apps", "app-0")),
        )
        .await
        .expect("ADD");
    assert_eq!(code, 200, "{reply}");
    let ip = reply["ip"].as_str().expect("ip").to_owned();
    assert!(pool.contains(&ip.as_str()), "{ip} is not from the pool");

    let nns: Api<NodeNetwork> = Api::all(admin.clone());
    let usage = eventually(
        Duration::from_secs(60),
        "the pod's IP reported as used in NodeNetwork status",
        || async {
            let usage = nns.get(&node).await?.status.and_then(|s| s.usage);
            Ok(usage.filter(|u| u.used.get(&ip).map(String::as_str) == Some("apps/app-0")))
        },
    )
    .await
    .expect("usage");
    assert!(usage.reported_at.is_some(), "{usage:?}");
    assert_eq!(usage.used.len(), 1, "{usage:?}");

    let (code, reply) = agent
        .call(
            "POST",
            "/v1/cni/del",
            Some(&cni(&container, &netns, "apps", "app-0")),
        )
        .await
        .expect("DEL");
    assert_eq!(code, 200, "{reply}");
    eventually(
        Duration::from_secs(60),
        "the freed IP reported as cooling, no longer used",
        || async {
            let usage = nns.get(&node).await?.status.and_then(|s| s.usage);
            match usage {
                Some(u) if u.used.is_empty() && u.cooling.contains(&ip) => Ok(Some(u)),
                other => bail!("status.usage is {other:?}"),
            }
        },
    )
    .await
    .expect("cooling");
    agent.running.assert_no_forbidden().expect("agent RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn add_of_a_pod_with_a_fixed_ip_gets_that_ip_once_the_node_holds_it() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("fixed");
    node_with_network(&admin, &node).await.expect("node");
    let agent = Arc::new(
        start_agent(
            c,
            AgentSpec {
                node: &node,
                ..Default::default()
            },
        )
        .await
        .expect("agent"),
    );
    let ns = c.namespace("fixed").await.expect("namespace");
    let fixed = "198.18.4.50";
    let fip: FixedIP = serde_json::from_value(json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIP",
        "metadata": {"name": "web-0", "namespace": ns},
        "spec": {"ip": fixed, "statefulSet": "web", "ordinal": 0},
    }))
    .expect("fixed ip");
    Api::<FixedIP>::namespaced(admin.clone(), &ns)
        .create(&PostParams::default(), &fip)
        .await
        .expect("FixedIP created");
    operator_writes(&admin, &node, &["198.18.4.10", "198.18.4.11"], &[])
        .await
        .expect("pool");
    eventually(
        Duration::from_secs(60),
        "the agent took the pool from its NodeNetwork",
        || async { Ok((agent.get("/v1/healthz").await?["ipam"]["pool"] == 2).then_some(())) },
    )
    .await
    .expect("pool");

    // web-0 has a FixedIP that is not on this node yet: its ADD waits.
    let web_ns = NetNs::new().expect("netns");
    let web_c = unique("web-c");
    let web_add = tokio::spawn({
        let (agent, body) = (agent.clone(), cni(&web_c, &web_ns, &ns, "web-0"));
        async move { agent.call("POST", "/v1/cni/add", Some(&body)).await }
    });
    // An ordinary pod meanwhile gets a pool address, never the fixed one.
    let other_ns = NetNs::new().expect("netns");
    let other_c = unique("other-c");
    let (code, other) = agent
        .call(
            "POST",
            "/v1/cni/add",
            Some(&cni(&other_c, &other_ns, &ns, "cache-0")),
        )
        .await
        .expect("ADD");
    assert_eq!(code, 200, "{other}");
    assert_ne!(other["ip"], fixed);
    assert!(
        !web_add.is_finished(),
        "web-0's ADD must wait for its own address: {:?}",
        web_add.await
    );

    // The FixedIP controller's part: the address joins this node's pool and fixedIps.
    operator_writes(
        &admin,
        &node,
        &["198.18.4.10", "198.18.4.11", fixed],
        &[(fixed, &format!("{ns}/web-0"))],
    )
    .await
    .expect("fixed ip on the node");
    let (code, web) = tokio::time::timeout(Duration::from_secs(60), web_add)
        .await
        .expect("web-0's ADD answers once its address is here")
        .expect("task")
        .expect("ADD");
    assert_eq!(code, 200, "{web}");
    assert_eq!(web["ip"], fixed, "{web}");

    let nns: Api<NodeNetwork> = Api::all(admin.clone());
    eventually(
        Duration::from_secs(60),
        "the fixed IP reported as used by web-0",
        || async {
            let usage = nns.get(&node).await?.status.and_then(|s| s.usage);
            let want = format!("{ns}/web-0");
            Ok(usage
                .filter(|u| u.used.get(fixed) == Some(&want))
                .map(|_| ()))
        },
    )
    .await
    .expect("usage");
    for (container, netns, pod) in [(&web_c, &web_ns, "web-0"), (&other_c, &other_ns, "cache-0")] {
        let (code, reply) = agent
            .call(
                "POST",
                "/v1/cni/del",
                Some(&cni(container, netns, &ns, pod)),
            )
            .await
            .expect("DEL");
        assert_eq!(code, 200, "{reply}");
    }
    agent.running.assert_no_forbidden().expect("agent RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_open_and_restored_events_reach_the_node_under_the_chart_rbac() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("events");
    node_with_network(&admin, &node).await.expect("node");
    let proxy = Proxy::start(&c.info.api_url).await.expect("proxy");
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            datapath: true,
            fail_open_after: 3,
            update_rate: 1,
            proxy: Some(&proxy),
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    let ns = c.namespace("events").await.expect("namespace");
    some_policy(&admin, &ns).await.expect("policy");
    wait_enforced(&agent, &format!("SextantNetworkPolicy/{ns}/db"))
        .await
        .expect("policy synced");

    fail_open_and_back(&agent, &proxy)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.running.process.log_tail(30)));
    let events = eventually(
        Duration::from_secs(60),
        "PolicyFailOpen and PolicyRestored Events on the Node",
        || async {
            let evs = agent_events(&admin, &node).await?;
            let has = |t: &str, r: &str| evs.iter().any(|(ty, re, _)| ty == t && re == r);
            Ok(
                (has("Warning", "PolicyFailOpen") && has("Normal", "PolicyRestored"))
                    .then_some(evs),
            )
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.running.process.log_tail(30)));
    let (_, _, note) = events
        .iter()
        .find(|(_, r, _)| r == "PolicyFailOpen")
        .expect("fail-open event");
    assert!(note.contains("enforcement lifted"), "{note}");
    agent.running.assert_no_forbidden().expect("agent RBAC");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_events_rule_the_refused_event_shows_as_forbidden() {
    let _shared = QUIET.read().await;
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let sa = agent_role_without_events(c, &admin).await.expect("role");
    let node = unique("no-events");
    node_with_network(&admin, &node).await.expect("node");
    let proxy = Proxy::start(&c.info.api_url).await.expect("proxy");
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            service_account: &sa,
            datapath: true,
            fail_open_after: 3,
            update_rate: 1,
            proxy: Some(&proxy),
        },
    )
    .await
    .expect("agent");
    let ns = c.namespace("no-events").await.expect("namespace");
    some_policy(&admin, &ns).await.expect("policy");
    wait_enforced(&agent, &format!("SextantNetworkPolicy/{ns}/db"))
        .await
        .expect("policy synced");
    agent
        .running
        .assert_no_forbidden()
        .expect("everything but events is allowed");

    fail_open_and_back(&agent, &proxy)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.running.process.log_tail(30)));
    let refused = eventually(
        Duration::from_secs(60),
        "the refused Event in the agent's log",
        || async { Ok(agent.running.assert_no_forbidden().err()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.running.process.log_tail(30)));
    let refused = format!("{refused:#}");
    assert!(refused.contains("events"), "{refused}");
    assert!(
        agent_events(&admin, &node)
            .await
            .expect("events")
            .is_empty(),
        "no Event can exist without the rule"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_quiet_control_plane_does_not_open_policy() {
    let Some(c) = cluster() else { return };
    let admin = c.admin().await.expect("admin");
    let node = unique("quiet");
    node_with_network(&admin, &node).await.expect("node");
    let ns = c.namespace("quiet").await.expect("namespace");
    some_policy(&admin, &ns).await.expect("policy");
    // Usage reports far apart, fail-open after 2 s: only the fail-open
    // mode's own probe can tell quiet from away.
    let agent = start_agent(
        c,
        AgentSpec {
            node: &node,
            datapath: true,
            fail_open_after: 2,
            update_rate: 600,
            ..Default::default()
        },
    )
    .await
    .expect("agent");
    wait_enforced(&agent, &format!("SextantNetworkPolicy/{ns}/db"))
        .await
        .expect("policy synced");
    // Nothing this binary does changes an object while the agent waits.
    let _alone = QUIET.write().await;
    tokio::time::sleep(Duration::from_secs(12)).await;
    let (_, text) = agent.call("GET", "/metrics", None).await.expect("metrics");
    let text = text.as_str().unwrap_or_default();
    assert_eq!(
        metric(text, "sextant_agent_policy_fail_open_engagements_total"),
        Some(0.0),
        "fail-open engaged with the API server answering:\n{}",
        agent.running.process.log_tail(20)
    );
    assert!(
        agent_events(&admin, &node)
            .await
            .expect("events")
            .is_empty()
    );
    assert!(!agent.log().contains("policy opened"), "{}", agent.log());
    agent.running.assert_no_forbidden().expect("agent RBAC");
}
