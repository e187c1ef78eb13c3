//! Starts and stops the control plane's processes: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok, each on free loopback
//! ports, with its own data and log files under the cluster directory.
//!
//! The `sextant-cluster` binary runs this; a test process talks to it only
//! through the cluster directory (`cluster.json`, kubeconfigs, logs) and a
//! pipe on its stdin, so the control plane goes away with the test process
//! however that ends (a panic, a kill), see [`super::Cluster`].

use std::{
    fs::File,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    ClusterInfo, ExtenderTls, SchedulerInfo, bins::Bins, kubeconfig, node::Node, pki::Pki,
};

/// The service VIP range of the test cluster (nothing routes to it).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// The cluster directory (created; everything lives inside).
    pub dir: PathBuf,
    /// Where the default scheduler's extender listens (`https://127.0.0.1:P`,
    /// or `http://` for a plain-HTTP extender), written into its
    /// KubeSchedulerConfiguration as the chart's `extenders` stanza has it.
    /// With `https://` the cluster CA signs the extender's serving pair and
    /// kube-scheduler presents its own client certificate. `None`: no
    /// extender.
    pub extender_url: Option<String>,
    /// Whether the extender may be down (`ignorable` in the stanza).
    pub extender_ignorable: bool,
    /// Write the API server's audit log (every request's user, verb and
    /// resource at level Metadata) to `<dir>/logs/audit.log`.
    pub audit: bool,
    /// Start a real node (containerd and the kubelet, [`super::node`]).
    pub real_node: bool,
}

/// One process with its log file; killed on drop.
pub struct Process {
    /// Component name (`etcd`, `kube-apiserver`, …).
    pub name: String,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
    child: Child,
}

impl Process {
    /// Starts `program` with `args`, output to `<dir>/logs/<name>.log`.
    pub fn start(
        dir: &Path,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Process> {
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        Ok(Process {
            name: name.to_owned(),
            log,
            child,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stops it: SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_some() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// The last `lines` lines of the file at `path` (or why it can't be read).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// A free TCP port on 127.0.0.1 below the kernel's ephemeral range
/// (32768 and up by default), so that no outgoing connection of another
/// component takes it between this check and the listener's bind. Ports
/// are probed from a per-process start (pid-derived) upwards, so parallel
/// test processes rarely probe the same ones.
pub fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let base = (std::process::id().wrapping_mul(7919)) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (base + n) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port in {LOW}..{}", LOW + SPAN)
}

/// The running control plane.
pub struct ControlPlane {
    /// What the tests read from `cluster.json`.
    pub info: ClusterInfo,
    /// In start order; dropped (stopped) in reverse.
    processes: Vec<Process>,
    /// The real node, torn down before the control plane.
    node: Option<Node>,
}

impl ControlPlane {
    /// Starts every component and waits until each is usable; on failure the
    /// error carries the failing component's log tail.
    pub fn start(spec: &Spec, bins: &Bins) -> anyhow::Result<ControlPlane> {
        let dir = &spec.dir;
        std::fs::create_dir_all(dir)?;
        let pki = Pki::create(&dir.join("pki"))?;
        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let api_url = format!("https://127.0.0.1:{api_port}");
        let mut processes = Vec::new();

        let etcd = Process::start(
            dir,
            "etcd",
            &bins.etcd(),
            &[
                "--name=default".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
                "--quota-backend-bytes=8589934592".into(),
                "--log-level=warn".into(),
            ],
            &[],
        )?;
        processes.push(etcd);
        let mut audit_flags = Vec::new();
        if spec.audit {
            let policy = dir.join("audit-policy.yaml");
            std::fs::write(
                &policy,
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
            )?;
            audit_flags.push(format!("--audit-policy-file={}", policy.display()));
            audit_flags.push(format!(
                "--audit-log-path={}",
                dir.join("logs/audit.log").display()
            ));
            audit_flags.push("--audit-log-format=json".into());
            audit_flags.push("--audit-log-mode=batch".into());
        }
        wait_for(&mut processes, Duration::from_secs(60), || {
            http_get_ok(etcd_port, "/health")
        })
        .context("etcd did not become healthy")?;

        let admin = pki.client_cert("admin", "sextant-admin", Some("system:masters"))?;
        let kcm = pki.client_cert(
            "kube-controller-manager",
            "system:kube-controller-manager",
            None,
        )?;
        let sched = pki.client_cert("kube-scheduler", "system:kube-scheduler", None)?;
        // What the API server shows kubelets (exec, logs, port-forward).
        let to_kubelet = pki.client_cert(
            "kube-apiserver-kubelet-client",
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?;
        let admin_kc = dir.join("admin.kubeconfig");
        kubeconfig::write_cert(&admin_kc, &api_url, &pki.ca_cert, "sextant-admin", &admin)?;
        let kcm_kc = dir.join("kube-controller-manager.kubeconfig");
        kubeconfig::write_cert(&kcm_kc, &api_url, &pki.ca_cert, "kcm", &kcm)?;
        let sched_kc = dir.join("kube-scheduler.kubeconfig");
        kubeconfig::write_cert(&sched_kc, &api_url, &pki.ca_cert, "scheduler", &sched)?;
        let extender_tls = match spec.extender_url.as_deref() {
            Some(url) if url.starts_with("https://") => {
                let pair = pki.serving_pair("scheduler-ext", &["127.0.0.1", "localhost"])?;
                Some(ExtenderTls {
                    cert: pair.cert,
                    key: pair.key,
                    ca: pki.ca_cert.clone(),
                    client_cert: sched.cert.clone(),
                    client_key: sched.key.clone(),
                })
            }
            _ => None,
        };

        let apiserver = Process::start(
            dir,
            "kube-apiserver",
            &bins.kube("kube-apiserver"),
            &[
                format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", pki.serving_cert.display()),
                format!("--tls-private-key-file={}", pki.serving_key.display()),
                format!("--client-ca-file={}", pki.ca_cert.display()),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", pki.sa_pub.display()),
                format!(
                    "--service-account-signing-key-file={}",
                    pki.sa_key.display()
                ),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                // Endpoints may not hold loopback addresses; nothing in the
                // tests reaches the API server through its Service.
                "--endpoint-reconciler-type=none".into(),
                "--allow-privileged=true".into(),
                format!("--kubelet-client-certificate={}", to_kubelet.cert.display()),
                format!("--kubelet-client-key={}", to_kubelet.key.display()),
                "--kubelet-preferred-address-types=InternalIP".into(),
                "--profiling=false".into(),
                format!("--cert-dir={}", dir.join("pki").display()),
                "--v=0".into(),
            ]
            .into_iter()
            .chain(audit_flags)
            .collect::<Vec<_>>(),
            &[],
        )?;
        processes.push(apiserver);
        let readyz = |processes: &mut Vec<Process>| {
            wait_for(processes, Duration::from_secs(180), || {
                kubectl_quiet(bins, &admin_kc, &["get", "--raw", "/readyz"])
            })
        };
        readyz(&mut processes).context("kube-apiserver did not become ready")?;

        let kcm_proc = Process::start(
            dir,
            "kube-controller-manager",
            &bins.kube("kube-controller-manager"),
            &[
                format!("--kubeconfig={}", kcm_kc.display()),
                format!("--authentication-kubeconfig={}", kcm_kc.display()),
                format!("--authorization-kubeconfig={}", kcm_kc.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", free_port()?),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=true".into(),
                format!("--service-account-private-key-file={}", pki.sa_key.display()),
                format!("--root-ca-file={}", pki.ca_cert.display()),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller,-persistentvolume-binder-controller,-persistentvolume-attach-detach-controller"
                    .into(),
                "--kube-api-qps=200".into(),
                "--kube-api-burst=400".into(),
                format!("--cert-dir={}", dir.join("kcm-certs").display()),
                "--v=0".into(),
            ],
            &[],
        )?;
        processes.push(kcm_proc);

        let scheduler_port = free_port()?;
        let sched_config = dir.join("kube-scheduler.yaml");
        std::fs::write(
            &sched_config,
            scheduler_config_with(
                &sched_kc,
                "default-scheduler",
                spec.extender_url.as_deref(),
                spec.extender_ignorable,
                extender_tls.as_ref(),
            ),
        )?;
        let scheduler = Process::start(
            dir,
            "kube-scheduler",
            &bins.kube("kube-scheduler"),
            &[
                format!("--config={}", sched_config.display()),
                format!("--authentication-kubeconfig={}", sched_kc.display()),
                format!("--authorization-kubeconfig={}", sched_kc.display()),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={scheduler_port}"),
                format!("--cert-dir={}", dir.join("scheduler-certs").display()),
                "--v=0".into(),
            ],
            &[],
        )?;
        processes.push(scheduler);

        let kwok = Process::start(
            dir,
            "kwok",
            &bins.kwok(),
            &[
                format!("--kubeconfig={}", admin_kc.display()),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.244.0.0/16".into(),
                "--node-ip=10.250.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
            &[],
        )?;
        processes.push(kwok);

        // The controller manager is working once it made the `default`
        // namespace's ServiceAccount (its serviceaccount controller).
        wait_for(&mut processes, Duration::from_secs(120), || {
            kubectl_quiet(
                bins,
                &admin_kc,
                &["get", "serviceaccount", "default", "-n", "default"],
            )
        })
        .context("kube-controller-manager did not create the default ServiceAccount")?;
        let node = if spec.real_node {
            Some(Node::start(dir, &pki, bins, &api_url).context("the real node did not start")?)
        } else {
            None
        };

        let info = ClusterInfo {
            dir: dir.clone(),
            api_url,
            ca_cert: pki.ca_cert.clone(),
            ca_pem: pki.ca_pem(),
            admin_kubeconfig: admin_kc,
            kubectl: bins.kube("kubectl"),
            kube_bin: bins.kubernetes.clone(),
            scheduler: SchedulerInfo {
                name: "default-scheduler".into(),
                kubeconfig: sched_kc,
                extender_url: spec.extender_url.clone(),
                extender_tls,
            },
            pids: processes
                .iter()
                .map(|p| (p.name.clone(), p.pid()))
                .collect(),
            logs: processes
                .iter()
                .map(|p| (p.name.clone(), p.log.clone()))
                .collect(),
            node: node.as_ref().map(|n| n.info.clone()),
        };
        Ok(ControlPlane {
            info,
            processes,
            node,
        })
    }

    /// The first component that has exited, with its log tail.
    pub fn check(&mut self) -> Option<String> {
        if let Some(why) = self.node.as_mut().and_then(Node::check) {
            return Some(why);
        }
        for p in &mut self.processes {
            if let Some(status) = p.exited() {
                return Some(format!(
                    "{} exited ({status}); last log lines:\n{}",
                    p.name,
                    p.log_tail(40)
                ));
            }
        }
        None
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.node.take();
        while let Some(mut p) = self.processes.pop() {
            p.stop(Duration::from_secs(3));
        }
    }
}

/// A KubeSchedulerConfiguration with one profile named `name`, and the
/// chart's `extenders` stanza pointed at a plain-HTTP `extender_url` if given.
pub fn scheduler_config(
    kubeconfig: &Path,
    name: &str,
    extender_url: Option<&str>,
    ignorable: bool,
) -> String {
    scheduler_config_with(kubeconfig, name, extender_url, ignorable, None)
}

/// [`scheduler_config`] with the stanza's `enableHTTPS` and `tlsConfig`
/// (CA, kube-scheduler's client pair) when `tls` is given, as the chart
/// renders it.
pub fn scheduler_config_with(
    kubeconfig: &Path,
    name: &str,
    extender_url: Option<&str>,
    ignorable: bool,
    tls: Option<&ExtenderTls>,
) -> String {
    let mut s = format!(
        "apiVersion: kubescheduler.config.k8s.io/v1\n\
         kind: KubeSchedulerConfiguration\n\
         clientConnection:\n  kubeconfig: {kc}\n  qps: 200\n  burst: 400\n\
         leaderElection:\n  leaderElect: false\n\
         profiles:\n  - schedulerName: {name}\n",
        kc = kubeconfig.display()
    );
    if let Some(url) = extender_url {
        let https = match tls {
            Some(t) => format!(
                "enableHTTPS: true\n    tlsConfig:\n      insecure: false\n      caFile: {}\n      certFile: {}\n      keyFile: {}\n",
                t.ca.display(),
                t.client_cert.display(),
                t.client_key.display()
            ),
            None => "enableHTTPS: false\n".to_owned(),
        };
        s.push_str(&format!(
            "extenders:\n  - urlPrefix: \"{url}\"\n    filterVerb: filter\n    prioritizeVerb: prioritize\n    weight: 1\n    nodeCacheCapable: true\n    {https}    httpTimeout: 5s\n    ignorable: {ignorable}\n    managedResources:\n      - name: sextant.io/ip\n        ignoredByScheduler: false\n"
        ));
    }
    s
}

/// Polls `ready` every 250 ms until it holds or `timeout` passes; fails
/// early, with the log tail, when a process has exited.
fn wait_for(
    processes: &mut [Process],
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        for p in processes.iter_mut() {
            if let Some(status) = p.exited() {
                bail!(
                    "{} exited ({status}) while starting; last log lines:\n{}",
                    p.name,
                    p.log_tail(40)
                );
            }
        }
        if ready() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let last = processes.last().map(|p| (p.name.clone(), p.log_tail(40)));
            let (name, tail) = last.unwrap_or_default();
            bail!("timed out after {timeout:?}; last log lines of {name}:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `GET http://127.0.0.1:port/path` answered 200.
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// `kubectl` with `kubeconfig` succeeded.
fn kubectl_quiet(bins: &Bins, kubeconfig: &Path, args: &[&str]) -> bool {
    Command::new(bins.kube("kubectl"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=5s")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
