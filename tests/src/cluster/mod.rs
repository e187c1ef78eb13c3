//! A real Kubernetes control plane for tests: upstream etcd, kube-apiserver
//! (`--authorization-mode=Node,RBAC`, NodeRestriction, service-account
//! tokens), kube-controller-manager, kube-scheduler and kwok, built from Go
//! modules by `scripts/k8s-bins.sh` and run on loopback ports.
//!
//! ```text
//!  test binary ──spawn, stdin pipe──▶ sextant-cluster up (supervisor)
//!      │                                 ├─ etcd            ─┐
//!      │  cluster.json, kubeconfigs,     ├─ kube-apiserver   │ <dir>/logs/*.log
//!      │◀── logs in <dir> ───────────────├─ kube-controller-manager
//!      │                                 ├─ kube-scheduler (+ Sextant's extender)
//!      │                                 └─ kwok (fake nodes)
//!      └─ kube::Client (admin cert, or a ServiceAccount token via TokenRequest)
//! ```
//!
//! The supervisor is a separate process so that the control plane goes away
//! with the test process however it ends: when the test binary exits, even
//! by a panic outside a test or a SIGKILL, its end of the stdin pipe closes
//! and the supervisor stops every component. One cluster serves one test
//! binary ([`Cluster::shared`]); each test takes its own namespace.
//!
//! Failing to start is an error with the failing component's log tail; the
//! tests turn it into a failure, never a skip (unless `SEXTANT_SKIP`
//! names the `cluster` tier).

pub mod bins;
pub mod dev;
pub mod install;
pub mod kubeconfig;
pub mod node;
pub mod pki;
pub mod supervisor;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Output, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::{
    authentication::v1::SelfSubjectReview,
    core::v1::{Namespace, Node, Pod, ServiceAccount},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use serde::{Deserialize, Serialize};

pub use supervisor::{Process, log_tail};

/// The user-info extra in which the API server names the node a
/// ServiceAccount token is bound to (directly, or through its pod).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// What a ServiceAccount token is bound to (TokenRequest `boundObjectRef`).
#[derive(Clone, Copy, Debug)]
pub enum BoundTo<'a> {
    /// A Node, by name: the token is valid while that Node exists.
    Node(&'a str),
    /// A Pod in the ServiceAccount's namespace, by name, on a node: the
    /// token of a DaemonSet pod, as the kubelet projects it.
    Pod(&'a str),
}

/// The default scheduler as the supervisor configured it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SchedulerInfo {
    /// Its profile's schedulerName.
    pub name: String,
    /// Its kubeconfig (user `system:kube-scheduler`).
    pub kubeconfig: PathBuf,
    /// The extender URL in its configuration, if any.
    pub extender_url: Option<String>,
    /// The files of an HTTPS extender, if its URL is `https://`.
    #[serde(default)]
    pub extender_tls: Option<ExtenderTls>,
}

/// The scheduler extender's TLS files in the test cluster (all PEM, the
/// cluster CA signs both pairs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExtenderTls {
    /// The extender's serving certificate (127.0.0.1, localhost).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// The CA: kube-scheduler's `tlsConfig.caFile`, and the extender's
    /// `--tls-client-ca`.
    pub ca: PathBuf,
    /// kube-scheduler's client certificate (`tlsConfig.certFile`), its own
    /// `system:kube-scheduler` identity.
    pub client_cert: PathBuf,
    /// Its key (`tlsConfig.keyFile`).
    pub client_key: PathBuf,
}

/// What a running cluster offers, as `<dir>/cluster.json` has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The cluster directory.
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub api_url: String,
    /// The CA file every client trusts.
    pub ca_cert: PathBuf,
    /// The CA, PEM (a caBundle for webhooks signed by it is not needed:
    /// webhooks bring their own).
    pub ca_pem: String,
    /// A `system:masters` kubeconfig.
    pub admin_kubeconfig: PathBuf,
    /// The kubectl of the same version.
    pub kubectl: PathBuf,
    /// The directory of the Kubernetes binaries.
    pub kube_bin: PathBuf,
    /// The default scheduler.
    pub scheduler: SchedulerInfo,
    /// Component name to pid.
    pub pids: BTreeMap<String, u32>,
    /// Component name to log file.
    pub logs: BTreeMap<String, PathBuf>,
    /// The real node (kubelet and containerd), if asked for.
    #[serde(default)]
    pub node: Option<node::NodeInfo>,
}

/// Options of [`Cluster::start`].
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Configure the default scheduler with Sextant's extender at this
    /// loopback port over HTTPS with client certificates (the test starts
    /// the extender there, `install::run_scheduler_ext` with the cluster's
    /// pairs).
    pub extender_port: Option<u16>,
    /// The extender stanza's `ignorable`.
    pub extender_ignorable: bool,
    /// Keep the API server's audit log (`<dir>/logs/audit.log`): who made
    /// which request, for request-rate figures by user.
    pub audit: bool,
    /// Start a real node beside the control plane: containerd and the
    /// kubelet ([`node`]), registered but not Ready until a test installs a
    /// CNI ([`node::install_cni`]).
    pub real_node: bool,
}

/// A running cluster, stopped when dropped or when this process exits.
pub struct Cluster {
    /// Endpoints, files, pids.
    pub info: ClusterInfo,
    supervisor: Mutex<Option<(Child, ChildStdin)>>,
}

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static NAMESPACES: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts a cluster through the supervisor binary `sextant_cluster`
    /// (`env!("CARGO_BIN_EXE_sextant-cluster")` in this crate's tests).
    pub fn start(sextant_cluster: &Path, options: &Options) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!(
            "sextant-cluster-{}-{}",
            std::process::id(),
            NAMESPACES.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cmd = Command::new(sextant_cluster);
        cmd.arg("up")
            .arg(format!("--dir={}", dir.display()))
            .arg("--lifeline-stdin")
            .arg("--remove-dir");
        if let Some(port) = options.extender_port {
            cmd.arg(format!("--extender-url=https://127.0.0.1:{port}"));
        }
        if options.extender_ignorable {
            cmd.arg("--extender-ignorable");
        }
        if options.audit {
            cmd.arg("--audit");
        }
        if options.real_node {
            cmd.arg("--real-node");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", sextant_cluster.display()))?;
        let stdin = child.stdin.take().context("supervisor stdin")?;
        let stdout = child.stdout.take().context("supervisor stdout")?;
        // The supervisor prints `READY <cluster.json>` or `FAILED <why>`.
        let mut lines = BufReader::new(stdout).lines();
        let info_path = loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("READY ") => {
                    break PathBuf::from(line.trim_start_matches("READY ").trim());
                }
                Some(Ok(line)) if line.starts_with("FAILED ") => {
                    let _ = child.wait();
                    bail!(
                        "the test cluster did not start: {}",
                        &line[7..].replace("\\n", "\n")
                    );
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("reading the supervisor's output: {e}"),
                None => {
                    let status = child.wait()?;
                    bail!(
                        "the test cluster supervisor exited ({status}) before the cluster was ready"
                    );
                }
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let info: ClusterInfo = serde_json::from_slice(&std::fs::read(&info_path)?)
            .with_context(|| format!("reading {}", info_path.display()))?;
        Ok(Cluster {
            info,
            supervisor: Mutex::new(Some((child, stdin))),
        })
    }

    /// A handle on a cluster some other process supervises (`make cluster`,
    /// or the supervisor itself); dropping it stops nothing.
    pub fn attach(info: ClusterInfo) -> Cluster {
        Cluster {
            info,
            supervisor: Mutex::new(None),
        }
    }

    /// The cluster of this test binary, started on first use. A start
    /// failure fails every test that asks, with the same reason.
    pub fn shared(sextant_cluster: &str, options: Options) -> &'static Cluster {
        let started = SHARED.get_or_init(|| {
            Cluster::start(Path::new(sextant_cluster), &options).map_err(|e| format!("{e:#}"))
        });
        match started {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        }
    }

    /// The shared cluster for the running test, or `None` after printing and
    /// recording a skip when `SEXTANT_SKIP` names the `cluster` tier. A
    /// cluster that cannot start fails the test with the reason.
    pub fn for_test(sextant_cluster: &str, options: Options) -> Option<&'static Cluster> {
        let test = sextant_testkit::current_test("cluster");
        if !sextant_testkit::require(sextant_testkit::Tier::Cluster, None, &test) {
            return None;
        }
        Some(Cluster::shared(sextant_cluster, options))
    }

    /// A client as cluster admin.
    pub async fn admin(&self) -> anyhow::Result<Client> {
        client_from(&self.info.admin_kubeconfig).await
    }

    /// A client from any kubeconfig of this cluster.
    pub async fn client(&self, kubeconfig: &Path) -> anyhow::Result<Client> {
        client_from(kubeconfig).await
    }

    /// A kubeconfig for ServiceAccount `namespace/name` (which must exist),
    /// with a token from the TokenRequest API, valid for a day, bound to
    /// nothing (its user info names no node or pod).
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
    ) -> anyhow::Result<PathBuf> {
        self.token_kubeconfig(namespace, name, serde_json::json!({}))
            .await
    }

    /// A kubeconfig for ServiceAccount `namespace/name` whose token is bound
    /// to `bound` (TokenRequest `boundObjectRef` with the object's uid), as
    /// a pod's projected token is: the API server puts the node's name in
    /// the token's user info (`authentication.kubernetes.io/node-name`,
    /// [`NODE_NAME_EXTRA`]), which is what admission policies on node
    /// agents compare with. Checked by a SelfSubjectReview with the token:
    /// an API server that leaves the node name out is an error here, not a
    /// puzzling denial later. Returns the kubeconfig and the node name.
    pub async fn bound_service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        bound: BoundTo<'_>,
    ) -> anyhow::Result<(PathBuf, String)> {
        let admin = self.admin().await?;
        let (reference, node) = match bound {
            BoundTo::Node(node) => {
                let n = Api::<Node>::all(admin)
                    .get(node)
                    .await
                    .with_context(|| format!("Node {node} to bind a token to"))?;
                let uid = n.metadata.uid.context("Node without a uid")?;
                (
                    serde_json::json!({"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}),
                    node.to_owned(),
                )
            }
            BoundTo::Pod(pod) => {
                let p = Api::<Pod>::namespaced(admin, namespace)
                    .get(pod)
                    .await
                    .with_context(|| format!("Pod {namespace}/{pod} to bind a token to"))?;
                let uid = p.metadata.uid.context("Pod without a uid")?;
                let node = p
                    .spec
                    .and_then(|s| s.node_name)
                    .with_context(|| format!("Pod {namespace}/{pod} is on no node"))?;
                (
                    serde_json::json!({"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}),
                    node,
                )
            }
        };
        let path = self
            .token_kubeconfig(
                namespace,
                name,
                serde_json::json!({ "boundObjectRef": reference }),
            )
            .await?;
        let review: SelfSubjectReview = Api::<SelfSubjectReview>::all(self.client(&path).await?)
            .create(&PostParams::default(), &SelfSubjectReview::default())
            .await
            .context("SelfSubjectReview with the bound token")?;
        let extra = review
            .status
            .and_then(|s| s.user_info)
            .and_then(|u| u.extra)
            .unwrap_or_default();
        let named = extra.get(NODE_NAME_EXTRA).cloned().unwrap_or_default();
        ensure!(
            named == [node.clone()],
            "a token of {namespace}/{name} bound to node {node} carries {NODE_NAME_EXTRA} = {named:?} \
             (user info extra: {extra:?}); the API server must have ServiceAccountTokenNodeBinding \
             and ServiceAccountTokenPodNodeInfo (GA in 1.33 and 1.32)"
        );
        Ok((path, node))
    }

    /// TokenRequest for `namespace/name` with `spec` (plus a day's
    /// expiry), written to a kubeconfig file of its own.
    async fn token_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        mut spec: serde_json::Value,
    ) -> anyhow::Result<PathBuf> {
        let admin = self.admin().await?;
        let sas: Api<ServiceAccount> = Api::namespaced(admin, namespace);
        spec["expirationSeconds"] = serde_json::json!(24 * 3600);
        let request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": spec,
        });
        let answered: serde_json::Value = sas
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for ServiceAccount {namespace}/{name}"))?;
        let token = answered["status"]["token"]
            .as_str()
            .context("TokenRequest answered without a token")?
            .to_owned();
        // One file per token: components started in parallel under the same
        // ServiceAccount never share (or race on) a kubeconfig.
        let path = self.info.dir.join(format!(
            "sa-{namespace}-{name}-{}.kubeconfig",
            NAMESPACES.fetch_add(1, Ordering::Relaxed)
        ));
        kubeconfig::write_token(
            &path,
            &self.info.api_url,
            &self.info.ca_cert,
            &format!("system:serviceaccount:{namespace}:{name}"),
            &token,
        )?;
        Ok(path)
    }

    /// A fresh namespace `<prefix>-<n>` for one test, ready for pods (its
    /// `default` ServiceAccount exists).
    pub async fn namespace(&self, prefix: &str) -> anyhow::Result<String> {
        let name = format!("{prefix}-{}", NAMESPACES.fetch_add(1, Ordering::Relaxed));
        let api: Api<Namespace> = Api::all(self.admin().await?);
        api.create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("creating namespace {name}"))?;
        // The ServiceAccount admission plugin refuses pods until the
        // controller manager has made the namespace's `default` account.
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin().await?, &name);
        eventually(
            Duration::from_secs(60),
            "the default ServiceAccount",
            || {
                let sas = sas.clone();
                async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
            },
        )
        .await?;
        Ok(name)
    }

    /// Runs kubectl as admin with `args`; `stdin` is piped in if given.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
        self.kubectl_as(&self.info.admin_kubeconfig, args, stdin)
    }

    /// Runs kubectl with `kubeconfig`.
    pub fn kubectl_as(
        &self,
        kubeconfig: &Path,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<Output> {
        let mut child = Command::new(&self.info.kubectl)
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kubectl")?;
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .context("kubectl stdin")?
                .write_all(text.as_bytes())?;
        }
        Ok(child.wait_with_output()?)
    }

    /// `kubectl` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
        let out = self.kubectl(args, stdin)?;
        ensure!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a process beside the cluster (a Sextant component), its log
    /// under `<dir>/logs/`; stopped when the handle drops.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Process> {
        Process::start(&self.info.dir, name, program, args, env)
    }

    /// The last `lines` lines of a control-plane component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        match self.info.logs.get(component) {
            Some(path) => log_tail(path, lines),
            None => format!("(no component {component})"),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.supervisor.lock()
            && let Some((mut child, stdin)) = guard.take()
        {
            drop(stdin);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after
/// `timeout` with `what` and the last error `check` gave.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_owned(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() > deadline {
            bail!("{what}: not within {timeout:?}; last: {last}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
