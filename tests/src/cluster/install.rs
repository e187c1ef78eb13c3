//! Sextant on the test cluster: the chart's CRDs and every rendered object
//! applied by server-side apply, and each component run as a host process
//! under the identity the chart gives it (a TokenRequest token for its
//! ServiceAccount, bound by the chart's own RBAC), with the flags and
//! environment of its rendered container.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Container, PodSpec};

use super::{Cluster, Process, bins::workspace_bin, supervisor::free_port};
use crate::chart::{self, NAMESPACE, Object, Rendered};

/// The chart's CRD files, applied before anything else.
pub fn crd_manifests() -> anyhow::Result<String> {
    let dir = chart::chart_dir().join("crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = String::new();
    for f in files {
        out.push_str("---\n");
        out.push_str(&std::fs::read_to_string(&f)?);
        out.push('\n');
    }
    Ok(out)
}

/// Every rendered manifest but NOTES.txt, as one YAML stream.
pub fn manifests(rendered: &Rendered) -> String {
    let mut out = String::new();
    for (file, text) in &rendered.text {
        if file.ends_with("NOTES.txt") || text.trim().is_empty() {
            continue;
        }
        out.push_str("---\n");
        out.push_str(text);
        out.push('\n');
    }
    out
}

/// Server-side apply of a YAML stream as admin; `dry_run` asks the API
/// server to run admission and validation without persisting (`dryRun=All`).
pub fn apply(cluster: &Cluster, yaml: &str, dry_run: bool) -> anyhow::Result<String> {
    let mut args = vec![
        "apply",
        "--server-side",
        "--force-conflicts",
        "--field-manager=sextant-e2e",
        "-f",
        "-",
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    cluster.kubectl_ok(&args, Some(yaml))
}

/// The release namespace, the CRDs (waited for until Established), then the
/// chart rendered with `values` (YAML; `None` is the chart's defaults),
/// applied for real. Applying again is harmless (server-side apply).
pub fn install(cluster: &Cluster, values: Option<String>) -> anyhow::Result<Rendered> {
    let ns = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n");
    apply(cluster, &ns, false)?;
    apply_crds(cluster)?;
    let rendered = render(values)?;
    apply(cluster, &manifests(&rendered), false)?;
    Ok(rendered)
}

/// The chart's CRDs, applied and waited for until Established.
pub fn apply_crds(cluster: &Cluster) -> anyhow::Result<()> {
    apply(cluster, &crd_manifests()?, false)?;
    cluster.kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "crd",
            "--all",
            "--timeout=60s",
        ],
        None,
    )?;
    Ok(())
}

/// A kwok node (annotation `kwok.x-k8s.io/node: fake`, label `type: kwok`)
/// as a cloud's node controller registers it: providerID
/// `aws:///<zone>/<instance>`, the zone and instance-type labels.
pub fn kwok_node(
    name: &str,
    zone: &str,
    instance: &str,
    instance_type: &str,
) -> k8s_openapi::api::core::v1::Node {
    let mut node = k8s_openapi::api::core::v1::Node::default();
    node.metadata.name = Some(name.to_owned());
    node.metadata.annotations = Some([("kwok.x-k8s.io/node".to_owned(), "fake".to_owned())].into());
    node.metadata.labels = Some(
        [
            ("type", "kwok"),
            ("kubernetes.io/hostname", name),
            ("node.kubernetes.io/instance-type", instance_type),
            ("topology.kubernetes.io/zone", zone),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    node.spec = Some(k8s_openapi::api::core::v1::NodeSpec {
        provider_id: Some(format!("aws:///{zone}/{instance}")),
        ..Default::default()
    });
    node
}

/// The chart rendered with `values` by the real Helm engine.
pub fn render(values: Option<String>) -> anyhow::Result<Rendered> {
    chart::render_values(&[("custom", values)])?
        .pop()
        .context("no render")?
}

/// The pod template of workload `name` (Deployment or DaemonSet).
pub fn pod_spec(rendered: &Rendered, name: &str) -> anyhow::Result<PodSpec> {
    for (_, o) in &rendered.objects {
        let (meta, spec) = match o {
            Object::Deployment(d) => (
                &d.metadata,
                d.spec.as_ref().and_then(|s| s.template.spec.clone()),
            ),
            Object::DaemonSet(d) => (
                &d.metadata,
                d.spec.as_ref().and_then(|s| s.template.spec.clone()),
            ),
            _ => continue,
        };
        if meta.name.as_deref() == Some(name) {
            return spec.with_context(|| format!("{name} has no pod spec"));
        }
    }
    bail!("the chart rendered no workload {name}")
}

/// What a pod's downward API would give a container.
#[derive(Clone, Debug)]
pub struct PodFacts {
    /// metadata.name.
    pub pod_name: String,
    /// spec.nodeName.
    pub node_name: String,
}

/// The container's environment as the kubelet would set it: plain values,
/// and the downward-API fields Sextant's components read. A `secretKeyRef`
/// or any other source is an error: the test must override it.
pub fn container_env(
    container: &Container,
    pod: &PodFacts,
    overrides: &[(&str, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut env = Vec::new();
    for var in container.env.iter().flatten() {
        if let Some((_, v)) = overrides.iter().find(|(k, _)| *k == var.name) {
            env.push((var.name.clone(), v.clone()));
            continue;
        }
        let value = if let Some(v) = &var.value {
            v.clone()
        } else if let Some(field) = var.value_from.as_ref().and_then(|f| f.field_ref.as_ref()) {
            match field.field_path.as_str() {
                "metadata.name" => pod.pod_name.clone(),
                "metadata.namespace" => NAMESPACE.to_owned(),
                "spec.nodeName" => pod.node_name.clone(),
                "status.hostIP" | "status.podIP" => "127.0.0.1".to_owned(),
                other => bail!("env {} from field {other}: not supported here", var.name),
            }
        } else {
            bail!(
                "env {} of container {} has a source the harness can't provide; override it",
                var.name,
                container.name
            );
        };
        env.push((var.name.clone(), value));
    }
    for (k, v) in overrides {
        if !env.iter().any(|(name, _)| name == k) {
            env.push(((*k).to_owned(), v.clone()));
        }
    }
    Ok(env)
}

/// One Sextant component to run as a host process.
#[derive(Clone, Debug)]
pub struct Component<'a> {
    /// Rendered workload (`sextant-operator`, `sextant-agent`, …).
    pub workload: &'a str,
    /// Container in it.
    pub container: &'a str,
    /// Workspace binary.
    pub bin: &'a str,
    /// ServiceAccount whose token it runs with; `None`: no API access
    /// (the chart mounts no token).
    pub service_account: Option<&'a str>,
    /// Downward-API facts.
    pub pod: PodFacts,
    /// Environment set or replaced (listen addresses on free ports, …).
    pub overrides: Vec<(&'a str, String)>,
    /// Arguments replacing the rendered ones when `Some`.
    pub args: Option<Vec<String>>,
    /// Arguments appended.
    pub extra_args: Vec<String>,
}

impl<'a> Component<'a> {
    /// Workload `workload` (also the binary's name), its container
    /// `container`, under ServiceAccount `service_account`, as pod
    /// `pod_name`, with `overrides` on the rendered environment.
    pub fn new(
        workload: &'a str,
        container: &'a str,
        service_account: Option<&'a str>,
        pod_name: &str,
        overrides: Vec<(&'a str, String)>,
    ) -> Component<'a> {
        Component {
            workload,
            container,
            bin: workload,
            service_account,
            pod: PodFacts {
                pod_name: pod_name.to_owned(),
                node_name: "control-plane".into(),
            },
            overrides,
            args: None,
            extra_args: vec![],
        }
    }
}

/// A component process and what it was started with.
pub struct Running {
    /// The process (stopped on drop).
    pub process: Process,
    /// Its kubeconfig, if it has API access.
    pub kubeconfig: Option<PathBuf>,
}

impl Running {
    /// Fails if its log shows the API server refusing it (HTTP 403 or a
    /// `forbidden` answer): the chart's RBAC is not enough for what it does.
    pub fn assert_no_forbidden(&self) -> anyhow::Result<()> {
        let log = std::fs::read_to_string(&self.process.log).unwrap_or_default();
        let hits: Vec<&str> = log
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("forbidden") || l.contains(" 403") || l.contains("status: 403")
            })
            .take(5)
            .collect();
        ensure!(
            hits.is_empty(),
            "{} was refused by the API server (its chart RBAC is not enough):\n{}",
            self.process.name,
            hits.join("\n")
        );
        Ok(())
    }
}

/// Starts `component` with its rendered container's args and environment,
/// `KUBECONFIG` for its ServiceAccount, logs to `<cluster>/logs/<name>.log`.
pub async fn run(
    cluster: &Cluster,
    rendered: &Rendered,
    name: &str,
    component: Component<'_>,
) -> anyhow::Result<Running> {
    let spec = pod_spec(rendered, component.workload)?;
    let container = spec
        .containers
        .iter()
        .find(|c| c.name == component.container)
        .with_context(|| {
            format!(
                "{} has no container {}",
                component.workload, component.container
            )
        })?;
    let mut env = container_env(container, &component.pod, &component.overrides)?;
    let kubeconfig = match component.service_account {
        Some(sa) => Some(cluster.service_account_kubeconfig(NAMESPACE, sa).await?),
        None => None,
    };
    if component.overrides.iter().any(|(k, _)| *k == "KUBECONFIG") {
        // The test points the component elsewhere (a proxy in front of the
        // API server, another identity); `container_env` already set it.
    } else if let Some(kc) = &kubeconfig {
        env.push(("KUBECONFIG".into(), kc.display().to_string()));
    } else {
        // No API access: make sure nothing falls back to a local kubeconfig.
        env.push(("KUBECONFIG".into(), "/nonexistent".into()));
    }
    env.push((
        "RUST_LOG".into(),
        std::env::var("SEXTANT_E2E_LOG").unwrap_or_else(|_| "info".into()),
    ));
    let mut args = component
        .args
        .clone()
        .unwrap_or_else(|| container.args.clone().unwrap_or_default());
    args.extend(component.extra_args.iter().cloned());
    let bin = workspace_bin(component.bin)?;
    let process = cluster.spawn(name, &bin, &args, &env)?;
    Ok(Running {
        process,
        kubeconfig,
    })
}

/// The operator (chart workload `sextant-operator`) as pod `pod`, under its
/// chart ServiceAccount, `env` over the rendered environment, its admin
/// server on a free loopback port; returned with that address once it
/// answers `/healthz`.
pub async fn run_operator(
    cluster: &Cluster,
    rendered: &Rendered,
    pod: &str,
    env: Vec<(&str, String)>,
) -> anyhow::Result<(Running, String)> {
    let addr = loopback_addr()?;
    let mut overrides = vec![("SEXTANT_LISTEN_ADDR", addr.clone())];
    overrides.extend(env);
    let mut running = run(
        cluster,
        rendered,
        pod,
        Component::new(
            "sextant-operator",
            "operator",
            Some("sextant-operator"),
            pod,
            overrides,
        ),
    )
    .await?;
    wait_http_ok(&mut running.process, &addr, "/healthz").await?;
    Ok((running, addr))
}

/// The scheduler extender (chart workload `sextant-scheduler-ext`) as pod
/// `pod`, under its chart ServiceAccount, listening on `addr` (where the
/// scheduler calls it): over HTTPS with the cluster's extender pair and
/// kube-scheduler's certificate required when the scheduler's extender URL
/// is `https://`, else plain HTTP (`--insecure-http`); its admin port on a
/// free loopback port. Returned once `/readyz` there says both watches
/// listed.
pub async fn run_scheduler_ext(
    cluster: &Cluster,
    rendered: &Rendered,
    pod: &str,
    addr: &str,
) -> anyhow::Result<Running> {
    Ok(run_scheduler_ext_with_admin(cluster, rendered, pod, addr)
        .await?
        .0)
}

/// [`run_scheduler_ext`], also returning its plain-HTTP admin address
/// (`/metrics`, `/readyz`).
pub async fn run_scheduler_ext_with_admin(
    cluster: &Cluster,
    rendered: &Rendered,
    pod: &str,
    addr: &str,
) -> anyhow::Result<(Running, String)> {
    let admin = loopback_addr()?;
    let mut overrides = vec![
        ("SEXTANT_SCHEDULER_EXT_LISTEN", addr.to_owned()),
        ("SEXTANT_SCHEDULER_EXT_ADMIN_LISTEN", admin.clone()),
    ];
    match &cluster.info.scheduler.extender_tls {
        Some(tls) => overrides.extend([
            (
                "SEXTANT_SCHEDULER_EXT_TLS_CERT",
                tls.cert.display().to_string(),
            ),
            (
                "SEXTANT_SCHEDULER_EXT_TLS_KEY",
                tls.key.display().to_string(),
            ),
            (
                "SEXTANT_SCHEDULER_EXT_TLS_CLIENT_CA",
                tls.ca.display().to_string(),
            ),
        ]),
        None => overrides.push(("SEXTANT_SCHEDULER_EXT_INSECURE_HTTP", "true".into())),
    }
    let mut running = run(
        cluster,
        rendered,
        pod,
        Component::new(
            "sextant-scheduler-ext",
            "scheduler-ext",
            Some("sextant-scheduler-ext"),
            pod,
            overrides,
        ),
    )
    .await?;
    wait_http_ok(&mut running.process, &admin, "/readyz").await?;
    Ok((running, admin))
}

/// `127.0.0.1:<free port>`.
pub fn loopback_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

/// Waits until `http://addr/path` answers 200 (a component's admin port),
/// failing early with its log tail if the process exited.
pub async fn wait_http_ok(process: &mut Process, addr: &str, path: &str) -> anyhow::Result<()> {
    let url = format!("http://{addr}{path}");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = process.exited() {
            bail!(
                "{} exited ({status}); last log lines:\n{}",
                process.name,
                process.log_tail(30)
            );
        }
        if let Ok(out) = std::process::Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2", &url])
            .status()
            && out.success()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "{} did not answer {url} within 60 s; last log lines:\n{}",
                process.name,
                process.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The workspace binary, for tests that run one without a chart workload.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    workspace_bin(name)
}

/// A path inside the cluster directory for a component's files.
pub fn scratch(cluster: &Cluster, name: &str) -> anyhow::Result<PathBuf> {
    let p: &Path = &cluster.info.dir;
    let dir = p.join("scratch").join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Writes the chart-rendered webhook serving pair (Secret
/// `sextant-webhook-tls`) into `dir`; returns the (cert, key) paths.
pub fn webhook_serving_pair(rendered: &Rendered, dir: &Path) -> anyhow::Result<(String, String)> {
    let secret = rendered
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::Secret(s) if s.metadata.name.as_deref() == Some("sextant-webhook-tls") => {
                Some(s.as_ref())
            }
            _ => None,
        })
        .context("the chart rendered no sextant-webhook-tls Secret")?;
    let data = secret.data.clone().unwrap_or_default();
    let mut paths = Vec::new();
    for key in ["tls.crt", "tls.key"] {
        let bytes = data
            .get(key)
            .with_context(|| format!("sextant-webhook-tls has no {key}"))?;
        let path = dir.join(key);
        std::fs::write(&path, &bytes.0)?;
        paths.push(path.display().to_string());
    }
    Ok((paths[0].clone(), paths[1].clone()))
}
