//! A real node beside the test control plane: Debian's containerd and runc
//! and the kubelet of the same Kubernetes build, configured for this kind of
//! machine (cgroup v1 with the cgroupfs driver, no systemd, no
//! CAP_SYS_RESOURCE, no registry), with Sextant's CNI as its only network
//! plugin once a test installs it ([`install_cni`]).
//!
//! ```text
//!  supervisor ─┬─ containerd  <node>/containerd.sock (<node> = <dir>/node-<pid>),
//!              │              root/state under <node>/, CNI bin <node>/cni/bin,
//!              │              conf <node>/cni/net.d,
//!              │              sandbox image sextant.test/pause:v1 (imported)
//!              └─ kubelet     system:node:<name> (client cert), node IP on a
//!                             bridge of its own without ports (/24 in
//!                             198.18.128.0/17; this kernel has no dummy links),
//!                             cgroups under /sextant-node-<supervisor pid>
//!  test ──▶ install_cni (sextant-cni + the chart's conflist), sextant-agent,
//!           sextant-device-plugin (/var/lib/kubelet/device-plugins/kubelet.sock:
//!           the kubelet's constant, so one real node per machine at a time)
//! ```
//!
//! Everything the node makes on the host is named after the supervisor's
//! pid, so [`Node::drop`] removes exactly its own: it stops the kubelet,
//! kills every process in its cgroups and the shims of its containerd,
//! stops containerd, unmounts whatever is mounted under its directory (pod
//! network namespaces, the kubelet's volumes, overlay roots), removes its
//! cgroups and its link. A node whose supervisor died without that (SIGKILL)
//! is swept by the next one that starts.
//!
//! No image is pulled: `scripts/images.sh` builds the pause image and the
//! test image `sextant.test/netcheck:v1` (a static TCP server with a `probe`
//! mode, `tests/images/`) as archives, imported here with `ctr -n k8s.io
//! images import`; pods use `imagePullPolicy: Never`.
//!
//! The API server reaches the kubelet (exec, logs) with its own client
//! certificate (`--kubelet-client-certificate`, a `system:masters` identity);
//! the kubelet authenticates clients by the cluster CA only (no anonymous
//! access) and, having no RBAC binding of its own for SubjectAccessReviews,
//! authorizes every authenticated client (`AlwaysAllow`).

pub mod workloads;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use serde::{Deserialize, Serialize};

use super::{
    Cluster,
    bins::{Bins, workspace_bin},
    install, kubeconfig,
    pki::Pki,
    supervisor::{Process, free_port},
};
use crate::chart::{Object, Rendered, repo_root};

/// The zone the node's simulated instance is in.
pub const ZONE: &str = "us-east-1a";
/// Its instance type.
pub const INSTANCE_TYPE: &str = "m5.large";
/// Where the node's links get their /24s: the upper half of 198.18.0.0/16
/// (RFC 2544's benchmarking range: never routed off this machine; the other
/// tests' addresses are in 198.18.0.0/24 and 198.19.0.0/16).
const NODE_NET_PREFIX: &str = "198.18";
/// The third octets the node may take.
const NODE_NET_THIRD: std::ops::Range<u32> = 128..255;
/// Names of host objects the node owns end in the supervisor's pid.
const LINK_PREFIX: &str = "sxn";
const CGROUP_PREFIX: &str = "sextant-node-";
const NODE_DIR_PREFIX: &str = "node-";
/// The kubelet's device-plugin directory: a constant in the kubelet (not
/// under `--root-dir`), so every kubelet on a machine shares it and clears
/// it when it starts. Hence one real node per machine at a time
/// ([`HOST_LOCK`]).
pub const DEVICE_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Held by the running real node; a second one (another test binary) waits.
const HOST_LOCK: &str = "/run/sextant-real-node.lock";
/// How long a node waits for another test binary's node to go away.
const HOST_LOCK_WAIT: Duration = Duration::from_secs(900);

/// What a test needs to know about the node (part of `cluster.json`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The Node's name (`--hostname-override`).
    pub name: String,
    /// Its InternalIP, on `link`.
    pub ip: String,
    /// The link holding `ip`: a bridge without ports (this kernel has no
    /// `dummy` driver; a bridge needs none).
    pub link: String,
    /// `spec.providerID` (`aws:///<zone>/<instance>`): the simulated cloud
    /// launches that instance when the operator first asks about it.
    pub provider_id: String,
    /// The node's directory (everything of it lives inside).
    pub dir: PathBuf,
    /// containerd's CNI binary directory.
    pub cni_bin_dir: PathBuf,
    /// containerd's CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// The kubelet's device-plugin directory (`kubelet.sock` inside),
    /// [`DEVICE_PLUGIN_DIR`].
    pub device_plugin_dir: PathBuf,
    /// containerd's socket.
    pub containerd_socket: PathBuf,
    /// Where the node's Sextant agent puts its API socket: the conflist's
    /// `agentSocket` points there (the chart's `/var/run/sextant/api`
    /// hostPath, moved into the node's directory).
    pub agent_socket: PathBuf,
    /// The pause image, imported.
    pub pause_image: String,
    /// The test image, imported: `/netcheck serve` by default, `/netcheck
    /// probe HOST:PORT` to connect.
    pub netcheck_image: String,
    /// The kubelet's kubeconfig (`system:node:<name>`).
    pub kubelet_kubeconfig: PathBuf,
    /// The kubelet's and containerd's logs.
    pub logs: Vec<PathBuf>,
    /// The kubelet's cgroupRoot, without its leading `/`, in every hierarchy.
    #[serde(default)]
    pub cgroup: String,
}

/// The running node; torn down (processes, mounts, cgroups, link) on drop.
pub struct Node {
    /// What `cluster.json` carries.
    pub info: NodeInfo,
    containerd: Option<Process>,
    kubelet: Option<Process>,
    cgroup: String,
    _host: std::fs::File,
}

/// The image archives `scripts/images.sh` builds.
struct Images {
    pause: String,
    pause_tar: PathBuf,
    netcheck: String,
    netcheck_tar: PathBuf,
}

impl Images {
    /// Runs `scripts/images.sh` (builds when its cache is missing, seconds
    /// with Go's build cache) and reads what it printed.
    fn build() -> anyhow::Result<Images> {
        let script = repo_root().join("scripts/images.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(
            out.status.success(),
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |key: &str| -> anyhow::Result<String> {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::to_owned)
                .with_context(|| format!("{} did not print {key}", script.display()))
        };
        Ok(Images {
            pause: get("SEXTANT_PAUSE_IMAGE")?,
            pause_tar: get("SEXTANT_PAUSE_TAR")?.into(),
            netcheck: get("SEXTANT_NETCHECK_IMAGE")?,
            netcheck_tar: get("SEXTANT_NETCHECK_TAR")?.into(),
        })
    }
}

/// A host program the node needs, or an error naming the package.
fn host_bin(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{name} is not installed: the real node needs Debian's {package} (scripts/setup.sh installs it)"
    )
}

impl Node {
    /// Starts containerd and the kubelet for a node named after this
    /// process, registered with the API server at `api_url`; returns once
    /// the Node object exists (it turns Ready only once a CNI is installed).
    pub fn start(
        cluster_dir: &Path,
        pki: &Pki,
        bins: &Bins,
        api_url: &str,
    ) -> anyhow::Result<Node> {
        ensure!(
            Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists()
                || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "the real node needs cgroups: neither cgroup v1's memory hierarchy nor cgroup v2 is mounted at /sys/fs/cgroup"
        );
        let containerd_bin = host_bin("containerd", "containerd")?;
        let ctr = host_bin("ctr", "containerd")?;
        let runc = host_bin("runc", "runc")?;
        let loopback = Path::new("/usr/lib/cni/loopback");
        ensure!(
            loopback.is_file(),
            "{} is missing: containerd 1.6 sets up pod loopback with it (Debian's containernetworking-plugins)",
            loopback.display()
        );
        let host = host_lock()?;
        sweep_stale();

        let me = std::process::id();
        let name = format!("real-node-{me}");
        // Named after its owner, so a sweep knows whose it is even from
        // what a partial removal left.
        let dir = cluster_dir.join(format!("{NODE_DIR_PREFIX}{me}"));
        std::fs::create_dir_all(&dir)?;
        let images = Images::build()?;

        let link = format!("{LINK_PREFIX}{me}");
        let ip = add_link(&link)?;
        let cgroup = format!("{CGROUP_PREFIX}{me}");
        let mut node = Node {
            info: NodeInfo {
                name: name.clone(),
                ip: ip.clone(),
                link,
                provider_id: format!("aws:///{ZONE}/i-0node{me:012}"),
                dir: dir.clone(),
                cni_bin_dir: dir.join("cni/bin"),
                cni_conf_dir: dir.join("cni/net.d"),
                device_plugin_dir: DEVICE_PLUGIN_DIR.into(),
                containerd_socket: dir.join("containerd.sock"),
                agent_socket: dir.join("sextant/api/agent.sock"),
                pause_image: images.pause.clone(),
                netcheck_image: images.netcheck.clone(),
                kubelet_kubeconfig: dir.join("kubelet.kubeconfig"),
                logs: vec![
                    cluster_dir.join("logs/containerd.log"),
                    cluster_dir.join("logs/kubelet.log"),
                ],
                cgroup: cgroup.clone(),
            },
            containerd: None,
            kubelet: None,
            cgroup: cgroup.clone(),
            _host: host,
        };
        // From here on, dropping `node` undoes what was made.
        for d in [
            &node.info.cni_bin_dir,
            &node.info.cni_conf_dir,
            &node.info.device_plugin_dir,
        ] {
            std::fs::create_dir_all(d)?;
        }
        if let Some(parent) = node.info.agent_socket.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // containerd 1.6 runs the `loopback` plugin from its CNI bin dir for
        // every pod, whatever the conflist says.
        std::fs::copy(loopback, node.info.cni_bin_dir.join("loopback"))?;

        // containerd.
        let config = dir.join("containerd.toml");
        std::fs::write(&config, containerd_config(&node.info, &runc))?;
        let containerd = Process::start(
            cluster_dir,
            "containerd",
            &containerd_bin,
            &[format!("--config={}", config.display())],
            &[],
        )?;
        node.containerd = Some(containerd);
        let sock = node.info.containerd_socket.clone();
        node.wait(
            "containerd answering on its socket",
            Duration::from_secs(30),
            || ctr_ok(&ctr, &sock, &["version"]),
        )?;
        for (image, tar) in [
            (&images.pause, &images.pause_tar),
            (&images.netcheck, &images.netcheck_tar),
        ] {
            let out = Command::new(&ctr)
                .arg(format!("--address={}", sock.display()))
                .args(["-n", "k8s.io", "images", "import"])
                .arg(tar)
                .output()
                .context("running ctr images import")?;
            ensure!(
                out.status.success(),
                "ctr images import {} ({image}) failed: {}{}",
                tar.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ensure!(
                ctr_ok(
                    &ctr,
                    &sock,
                    &["images", "check", &format!("name=={}", docker_ref(image))]
                ),
                "{image} is not in containerd after importing {}",
                tar.display()
            );
        }

        // The kubelet.
        make_cgroup(&cgroup)?;
        let cert = pki.client_cert(
            "kubelet",
            &format!("system:node:{name}"),
            Some("system:nodes"),
        )?;
        kubeconfig::write_cert(
            &node.info.kubelet_kubeconfig,
            api_url,
            &pki.ca_cert,
            &format!("system:node:{name}"),
            &cert,
        )?;
        let resolv = dir.join("resolv.conf");
        // Pods resolve nothing outside this machine: their own loopback only.
        std::fs::write(
            &resolv,
            "# the test node's pods: no resolver outside this machine\nnameserver 127.0.0.1\noptions ndots:1\n",
        )?;
        let kubelet_config = dir.join("kubelet.yaml");
        std::fs::write(
            &kubelet_config,
            kubelet_config_yaml(&node.info, &pki.ca_cert, &resolv, &cgroup)?,
        )?;
        let kubelet = Process::start(
            cluster_dir,
            "kubelet",
            &bins.kube("kubelet"),
            &[
                format!("--config={}", kubelet_config.display()),
                format!("--kubeconfig={}", node.info.kubelet_kubeconfig.display()),
                format!("--root-dir={}", dir.join("kubelet").display()),
                format!("--cert-dir={}", dir.join("kubelet-pki").display()),
                format!("--hostname-override={name}"),
                format!("--node-ip={ip}"),
                format!(
                    "--node-labels=node.kubernetes.io/instance-type={INSTANCE_TYPE},topology.kubernetes.io/zone={ZONE}"
                ),
                format!("--pod-infra-container-image={}", images.pause),
                "--v=1".into(),
            ],
            &[],
        )?;
        node.kubelet = Some(kubelet);
        let kubectl = bins.kube("kubectl");
        let admin = cluster_dir.join("admin.kubeconfig");
        node.wait(
            "the kubelet registering its Node",
            Duration::from_secs(120),
            || {
                Command::new(&kubectl)
                    .arg(format!("--kubeconfig={}", admin.display()))
                    .args(["--request-timeout=5s", "get", "node", &name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            },
        )?;
        Ok(node)
    }

    /// The first of its processes that has exited, with its log tail.
    pub fn check(&mut self) -> Option<String> {
        for p in [&mut self.containerd, &mut self.kubelet]
            .into_iter()
            .flatten()
        {
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

    /// Polls `ready` every 250 ms; fails with the log tail of whichever
    /// process exited, or of the last one started when `timeout` passes.
    fn wait(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(why) = self.check() {
                bail!("{what}: {why}");
            }
            if ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let last = self.kubelet.as_ref().or(self.containerd.as_ref());
                bail!(
                    "{what}: not within {timeout:?}; last log lines of {}:\n{}",
                    last.map_or("", |p| p.name.as_str()),
                    last.map(|p| p.log_tail(40)).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut k) = self.kubelet.take() {
            k.stop(Duration::from_secs(10));
        }
        // The containers (pause and workloads) live in the kubelet's cgroups;
        // their shims beside containerd, named by its socket.
        kill_cgroup(&self.cgroup);
        kill_shims(&self.info.containerd_socket);
        if let Some(mut c) = self.containerd.take() {
            c.stop(Duration::from_secs(5));
        }
        unmount_under(&self.info.dir);
        remove_cgroup(&self.cgroup);
        let _ = Command::new("ip")
            .args(["link", "del", &self.info.link])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(self.info.device_plugin_dir.join("kubelet.sock"));
    }
}

/// The machine-wide lock of the real node, waited for up to
/// [`HOST_LOCK_WAIT`] (a lock whose holder died is free: the kernel drops
/// it with the process).
fn host_lock() -> anyhow::Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(HOST_LOCK)
        .with_context(|| format!("opening {HOST_LOCK}"))?;
    let deadline = Instant::now() + HOST_LOCK_WAIT;
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => {
                if !told {
                    eprintln!(
                        "sextant-cluster: another real node runs on this machine (the kubelet's device-plugin directory is machine-wide); waiting for {HOST_LOCK}"
                    );
                    told = true;
                }
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {HOST_LOCK}"));
            }
        }
        ensure!(
            Instant::now() < deadline,
            "another real node held {HOST_LOCK} for {HOST_LOCK_WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The reference as containerd's image store keys it (`docker.io/library/`
/// for bare names; ours have a domain already).
fn docker_ref(image: &str) -> String {
    if image.split('/').next().is_some_and(|d| d.contains('.')) {
        image.to_owned()
    } else {
        format!("docker.io/library/{image}")
    }
}

fn ctr_ok(ctr: &Path, sock: &Path, args: &[&str]) -> bool {
    Command::new(ctr)
        .arg(format!("--address={}", sock.display()))
        .args(["--timeout=5s", "-n", "k8s.io"])
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success() && (args[0] != "images" || !o.stdout.is_empty()))
}

/// containerd's configuration: everything under the node's directory, the
/// CRI plugin with cgroupfs runc, no OOM score below its own, the network
/// namespaces under its state directory, and its streaming server on a
/// loopback port of the kernel's choosing.
fn containerd_config(info: &NodeInfo, runc: &Path) -> String {
    let dir = info.dir.display();
    format!(
        r#"version = 2
root = "{dir}/containerd/root"
state = "{dir}/containerd/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{sock}"

[ttrpc]
  address = "{sock}.ttrpc"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This machine has no CAP_SYS_RESOURCE: never ask for a score below ours.
  restrict_oom_score_adj = true
  disable_apparmor = true
  disable_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{dir}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        sock = info.containerd_socket.display(),
        pause = info.pause_image,
        runc = runc.display(),
        bin = info.cni_bin_dir.display(),
        conf = info.cni_conf_dir.display(),
    )
}

/// The KubeletConfiguration: cgroupfs under the node's own cgroup root,
/// swap tolerated, image GC effectively off, eviction only near empty,
/// the pods' resolv.conf, client certificates of the cluster CA only.
fn kubelet_config_yaml(
    info: &NodeInfo,
    ca: &Path,
    resolv: &Path,
    cgroup: &str,
) -> anyhow::Result<String> {
    Ok(format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz}
providerID: {provider}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: {ca}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://{sock}
imageServiceEndpoint: unix://{sock}
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup}
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
memorySwap: {{}}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
imageMinimumGCAge: 24h
evictionHard:
  memory.available: 20Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
evictionPressureTransitionPeriod: 10s
resolvConf: {resolv}
clusterDomain: cluster.local
volumePluginDir: {dir}/volume-plugins
serializeImagePulls: false
nodeStatusUpdateFrequency: 4s
nodeStatusReportFrequency: 10s
syncFrequency: 10s
fileCheckFrequency: 10s
maxPods: 110
protectKernelDefaults: false
localStorageCapacityIsolation: true
"#,
        ip = info.ip,
        port = free_port()?,
        healthz = free_port()?,
        provider = info.provider_id,
        ca = ca.display(),
        sock = info.containerd_socket.display(),
        resolv = resolv.display(),
        dir = info.dir.display(),
    ))
}

/// Adds link `link` (a bridge without ports) with the first free /24 of
/// 198.18.128.0/17 (from a pid-derived start), `.1` as the node's address;
/// returns it.
fn add_link(link: &str) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()?;
    let taken = String::from_utf8_lossy(&out.stdout).into_owned();
    let span = NODE_NET_THIRD.end - NODE_NET_THIRD.start;
    let start = std::process::id() % span;
    let third = (0..span)
        .map(|i| NODE_NET_THIRD.start + (start + i) % span)
        .find(|t| !taken.contains(&format!(" {NODE_NET_PREFIX}.{t}.")))
        .context("no free /24 in 198.18.128.0/17 for the node's link")?;
    let ip = format!("{NODE_NET_PREFIX}.{third}.1");
    for args in [
        vec!["link", "add", link, "type", "bridge"],
        vec!["addr", "add", &format!("{ip}/24"), "dev", link],
        vec!["link", "set", link, "up"],
    ] {
        let out = Command::new("ip").args(&args).output()?;
        ensure!(
            out.status.success(),
            "ip {} failed: {} (the real node needs CAP_NET_ADMIN for its own link)",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(ip)
}

/// The mounted cgroup hierarchies (v1: one per controller set; v2: one).
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    if root.join("cgroup.controllers").exists() {
        return vec![root.to_path_buf()];
    }
    std::fs::read_dir(root)
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("cgroup.procs").exists() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default()
}

/// `/<name>` in every hierarchy (the kubelet wants its cgroupRoot to
/// exist); cpuset gets its parent's CPUs and memory nodes.
fn make_cgroup(name: &str) -> anyhow::Result<()> {
    for h in cgroup_hierarchies() {
        let dir = h.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cgroup {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(file)) {
                std::fs::write(dir.join(file), v.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Every cgroup directory under `/<name>`, deepest first.
fn cgroup_dirs(name: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() && !p.is_symlink() {
                    walk(&p, out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for h in cgroup_hierarchies() {
        let top = h.join(name);
        if top.is_dir() {
            walk(&top, &mut out);
        }
    }
    out
}

/// SIGKILLs every process in cgroup `/<name>` and below until none is
/// left (at most 10 s).
fn kill_cgroup(name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut pids: Vec<String> = cgroup_dirs(name)
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| t.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        pids.sort();
        pids.dedup();
        if pids.is_empty() || Instant::now() > deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes cgroup `/<name>` and everything below it (each must be empty).
fn remove_cgroup(name: &str) {
    for _ in 0..20 {
        let dirs = cgroup_dirs(name);
        if dirs.is_empty() {
            return;
        }
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILLs the containerd shims serving the containerd at `sock` (their
/// command line names its address).
fn kill_shims(sock: &Path) {
    kill_matching(|cmdline| {
        cmdline.contains("containerd-shim") && cmdline.contains(&sock.display().to_string())
    });
}

/// SIGKILLs every process whose command line (arguments joined by spaces)
/// satisfies `matches`.
fn kill_matching(matches: impl Fn(&str) -> bool) {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in procs.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if matches(&cmdline) {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
        }
    }
}

/// Lazily unmounts every mount point at or below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    for _ in 0..3 {
        let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let mut points: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|p| p.replace("\\040", " "))
            .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        points.dedup();
        for p in points {
            let _ = Command::new("umount")
                .args(["-l", &p])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what nodes of supervisors that are gone left behind (a
/// supervisor killed with SIGKILL never tears its node down): their
/// containers, shims, mounts, cgroups and links.
pub fn sweep_stale() {
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for e in entries.flatten() {
            if !e
                .file_name()
                .to_string_lossy()
                .starts_with("sextant-cluster-")
            {
                continue;
            }
            let Ok(inside) = std::fs::read_dir(e.path()) else {
                continue;
            };
            let mut stale = false;
            for n in inside.flatten() {
                let name = n.file_name().to_string_lossy().into_owned();
                let Some(owner) = name
                    .strip_prefix(NODE_DIR_PREFIX)
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if alive(owner) {
                    continue;
                }
                stale = true;
                // Its kubelet, containerd and shims outlive a supervisor
                // killed with SIGKILL; each names a file of the node's
                // directory.
                let node_dir = n.path();
                let needle = format!("{}/", node_dir.display());
                kill_matching(|cmdline| cmdline.contains(&needle));
                kill_cgroup(&format!("{CGROUP_PREFIX}{owner}"));
                unmount_under(&node_dir);
                remove_cgroup(&format!("{CGROUP_PREFIX}{owner}"));
            }
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    // Cgroups and links whose owner is gone even without a directory left.
    for h in cgroup_hierarchies() {
        if let Ok(entries) = std::fs::read_dir(&h) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix(CGROUP_PREFIX)
                    .and_then(|p| p.parse().ok())
                    && !alive(pid)
                {
                    kill_cgroup(&name);
                    remove_cgroup(&name);
                }
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            if let Some(pid) = name.strip_prefix(LINK_PREFIX).and_then(|p| p.parse().ok())
                && !alive(pid)
            {
                let _ = Command::new("ip").args(["link", "del", name]).status();
            }
        }
    }
}

/// Installs Sextant's CNI on the node as the agent DaemonSet's
/// `install-cni` init container does: `sextant-cni` into the CNI bin
/// directory and the chart's conflist (ConfigMap `sextant-cni`) into the
/// conf directory, each through a temporary file and a rename so
/// containerd never reads half a file. The conflist's `agentSocket` is the
/// node's ([`NodeInfo::agent_socket`]), as the hostPath would map it.
pub fn install_cni(info: &NodeInfo, rendered: &Rendered) -> anyhow::Result<PathBuf> {
    let (file, conflist) = rendered
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::ConfigMap(c) if c.metadata.name.as_deref() == Some("sextant-cni") => c
                .data
                .as_ref()
                .and_then(|d| d.iter().next())
                .map(|(k, v)| (k.clone(), v.clone())),
            _ => None,
        })
        .context("the chart rendered no sextant-cni ConfigMap with a conflist")?;
    let mut value: serde_json::Value = serde_json::from_str(&conflist)
        .with_context(|| format!("the chart's conflist {file} is not JSON"))?;
    let plugin = value["plugins"]
        .as_array_mut()
        .and_then(|p| p.iter_mut().find(|p| p["type"] == "sextant-cni"))
        .context("the chart's conflist has no sextant-cni plugin")?;
    plugin["agentSocket"] = serde_json::json!(info.agent_socket.display().to_string());

    let bin = workspace_bin("sextant-cni")?;
    let tmp = info.cni_bin_dir.join("sextant-cni.tmp");
    std::fs::copy(&bin, &tmp).with_context(|| format!("copying {}", bin.display()))?;
    std::fs::rename(&tmp, info.cni_bin_dir.join("sextant-cni"))?;
    let tmp = info.cni_conf_dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&value)?)?;
    let path = info.cni_conf_dir.join(&file);
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// The chart as [`install::install`] applies it, minus its Deployments and
/// DaemonSets: on a cluster with a real node their pods would land there
/// and pull Sextant's images from a registry this machine cannot reach;
/// the tests run each component as a host process instead.
pub fn install_without_workloads(
    cluster: &Cluster,
    values: Option<String>,
) -> anyhow::Result<Rendered> {
    let ns = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
        crate::chart::NAMESPACE
    );
    install::apply(cluster, &ns, false)?;
    install::apply_crds(cluster)?;
    let rendered = install::render(values)?;
    let all = install::manifests(&rendered);
    let kept: Vec<&str> = all
        .split("\n---")
        .filter(|doc| {
            !doc.lines()
                .any(|l| l == "kind: Deployment" || l == "kind: DaemonSet")
        })
        .collect();
    install::apply(cluster, &kept.join("\n---"), false)?;
    Ok(rendered)
}

/// What of the node `info` is still on this machine: processes naming a
/// file of its directory (kubelet, containerd, shims), mounts under it,
/// its cgroups, its link. Empty once it is torn down or swept.
pub fn traces(info: &NodeInfo) -> Vec<String> {
    let mut out = Vec::new();
    let needle = format!("{}/", info.dir.display());
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for e in procs.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if cmdline.contains(&needle) {
                    out.push(format!("process {pid}: {}", cmdline.trim()));
                }
            }
        }
    }
    let prefix = info.dir.display().to_string();
    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        out.extend(
            text.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|p| *p == prefix || p.starts_with(&needle))
                .map(|p| format!("mount {p}")),
        );
    }
    if !info.cgroup.is_empty() {
        out.extend(
            cgroup_dirs(&info.cgroup)
                .into_iter()
                .map(|d| format!("cgroup {}", d.display())),
        );
    }
    if Command::new("ip")
        .args(["link", "show", &info.link])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        out.push(format!("link {}", info.link));
    }
    out
}
