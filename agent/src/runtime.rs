//! Flags (with `SEXTANT_*` environment fallbacks) and the agent's main loop:
//! API server, checkpoint restore, then the NodeNetwork watch (pool and
//! release handshake) and the periodic usage report (`watch::node_network`).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use kube::Api;
use sextant_crds::NodeNetwork;
use tracing::{info, warn};

use sextant_kit::{ErrorChain, duration};

use crate::{
    agent::{Agent, Config, PolicyFailOpen},
    datapath::CtTimeouts,
    error::{Error, Result},
    paths::{
        CHECKPOINT_FILE, DEFAULT_BPF_ROOT, DEFAULT_SOCKET, DEFAULT_STATE_DIR, LEGACY_STATE_DIR,
    },
    server,
};

/// `sextant-agent` flags.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "sextant-agent", version, about = "Sextant node agent")]
pub struct Args {
    /// Agent API socket.
    #[arg(long, env = "SEXTANT_AGENT_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group of the agent API socket, by name or gid: the socket is mode
    /// 0660, so root and this group's members can connect. Unset: the
    /// agent's own group (root only, as the chart runs it).
    #[arg(long, env = "SEXTANT_API_SOCKET_GROUP")]
    pub api_socket_group: Option<String>,
    /// Uids besides 0 that may call the agent API's mutating endpoints
    /// (`PUT /v1/policy`, `POST /v1/services`), comma separated.
    #[arg(long, env = "SEXTANT_API_ALLOW_UIDS", value_delimiter = ',')]
    pub api_allow_uids: Vec<u32>,
    /// Gids whose processes may call them (the peer's gid at connect),
    /// comma separated.
    #[arg(long, env = "SEXTANT_API_ALLOW_GIDS", value_delimiter = ',')]
    pub api_allow_gids: Vec<u32>,
    /// Directory of the allocation checkpoint.
    #[arg(long, env = "SEXTANT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// bpffs directory for the datapath's pins.
    #[arg(long, env = "SEXTANT_BPF_ROOT", default_value = DEFAULT_BPF_ROOT)]
    pub bpf_root: PathBuf,
    /// Serve `/metrics`, `/healthz` and `/readyz` on this TCP address (the
    /// chart: `0.0.0.0:<agent.metricsPort>` on the host network); off when
    /// unset. The agent API socket serves `/metrics` too.
    #[arg(long, env = "SEXTANT_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Run without the eBPF datapath (kernel routing only).
    #[arg(long, env = "SEXTANT_NO_DATAPATH")]
    pub no_datapath: bool,
    /// How long a freed IP waits before reuse.
    #[arg(long, env = "SEXTANT_IP_COOLDOWN", default_value = "30s", value_parser = duration::parse)]
    pub ip_cooldown: Duration,
    /// Interval of usage reports into NodeNetwork status (at least 1s).
    #[arg(long, env = "SEXTANT_USAGE_REPORT_INTERVAL", default_value = "15s", value_parser = duration::parse)]
    pub usage_report_interval: Duration,
    /// Interval of sweeps that free IPs of pods gone without a DEL (at least 1s).
    #[arg(long, env = "SEXTANT_RECONCILE_INTERVAL", default_value = "60s", value_parser = duration::parse)]
    pub reconcile_interval: Duration,
    /// How long a CNI ADD of a pod with a FixedIP waits for the address to
    /// reach this node's NodeNetwork `status.fixedIps`.
    #[arg(long, env = "SEXTANT_FIXED_IP_WAIT", default_value = "30s", value_parser = duration::parse)]
    pub fixed_ip_wait: Duration,
    /// This node's name (its NodeNetwork's name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Network namespace (path) to run in, entered before any thread starts;
    /// the node's host namespace by default.
    #[arg(long, env = "SEXTANT_NETNS")]
    pub netns: Option<PathBuf>,
    /// Pod IPs or IPv4 CIDRs to serve without a NodeNetwork (comma separated).
    #[arg(long, env = "SEXTANT_STATIC_POOL", value_delimiter = ',')]
    pub static_pool: Vec<String>,
    /// NodeNetwork (spec and status, YAML or JSON) to read from this file
    /// instead of the Kubernetes API, re-read when it changes; the usage
    /// report goes to `PATH.usage.json` (labs, `sextantctl lab`).
    #[arg(
        long,
        env = "SEXTANT_NODE_NETWORK_FILE",
        conflicts_with_all = ["static_pool", "node_name"]
    )]
    pub node_network_file: Option<PathBuf>,
    /// Idle timeout of TCP conntrack entries (service and policy).
    #[arg(long, env = "SEXTANT_CT_TIMEOUT_TCP", default_value = "6h", value_parser = duration::parse)]
    pub ct_timeout_tcp: Duration,
    /// Idle timeout of UDP and other conntrack entries.
    #[arg(long, env = "SEXTANT_CT_TIMEOUT_OTHER", default_value = "60s", value_parser = duration::parse)]
    pub ct_timeout_other: Duration,
    /// Interval of conntrack sweeps (at least 1s).
    #[arg(long, env = "SEXTANT_CT_GC_INTERVAL", default_value = "30s", value_parser = duration::parse)]
    pub ct_gc_interval: Duration,
    /// Last resort: after this long without the control plane, lift policy
    /// enforcement of the pods `--policy-fail-open-selector` selects.
    /// 0s (the default) never does.
    #[arg(
        long,
        env = "SEXTANT_POLICY_FAIL_OPEN_AFTER",
        default_value = "0s",
        value_parser = duration::parse
    )]
    pub policy_fail_open_after: Duration,
    /// `key=value` pod labels (all must match) of the pods the fail-open mode
    /// opens; empty opens every policy-selected pod on the node.
    #[arg(long, env = "SEXTANT_POLICY_FAIL_OPEN_SELECTOR", value_delimiter = ',')]
    pub policy_fail_open_selector: Vec<String>,
    /// Most policy map entries one network policy may expand to on this
    /// node (the map holds 262,144); a policy past it is refused with a
    /// `PolicyTooLarge` Event while the others keep working. 0: no cap.
    #[arg(
        long,
        env = "SEXTANT_POLICY_MAX_ENTRIES_PER_POLICY",
        default_value_t = 65_536
    )]
    pub policy_max_entries_per_policy: usize,
    /// Integer-seconds flags of earlier agents, still read so that an
    /// existing DaemonSet keeps working; each wins over its new flag.
    #[command(flatten)]
    pub deprecated: DeprecatedSeconds,
}

/// The `--*-seconds` flags (and their `SEXTANT_*` variables) of earlier
/// agents: hidden, deprecated, each a whole number of seconds. When one is
/// given it wins over its duration flag and a warning names the new one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeprecatedSeconds {
    /// Deprecated: `--ip-cooldown`.
    #[arg(long, env = "SEXTANT_IP_COOLDOWN_SECONDS", hide = true)]
    pub ip_cooldown_seconds: Option<u64>,
    /// Deprecated: `--usage-report-interval`.
    #[arg(long, env = "SEXTANT_IPAM_NODE_UPDATE_RATE", hide = true)]
    pub ipam_node_update_rate: Option<u64>,
    /// Deprecated: `--reconcile-interval`.
    #[arg(long, env = "SEXTANT_RECONCILE_SECONDS", hide = true)]
    pub reconcile_seconds: Option<u64>,
    /// Deprecated: `--fixed-ip-wait`.
    #[arg(long, env = "SEXTANT_FIXED_IP_WAIT_SECONDS", hide = true)]
    pub fixed_ip_wait_seconds: Option<u64>,
    /// Deprecated: `--ct-timeout-tcp`.
    #[arg(long, env = "SEXTANT_CT_TIMEOUT_TCP_SECONDS", hide = true)]
    pub ct_timeout_tcp_seconds: Option<u64>,
    /// Deprecated: `--ct-timeout-other`.
    #[arg(long, env = "SEXTANT_CT_TIMEOUT_OTHER_SECONDS", hide = true)]
    pub ct_timeout_other_seconds: Option<u64>,
    /// Deprecated: `--ct-gc-interval`.
    #[arg(long, env = "SEXTANT_CT_GC_SECONDS", hide = true)]
    pub ct_gc_seconds: Option<u64>,
    /// Deprecated: `--policy-fail-open-after`.
    #[arg(long, env = "SEXTANT_POLICY_FAIL_OPEN_AFTER_SECONDS", hide = true)]
    pub policy_fail_open_after_seconds: Option<u64>,
}

impl Args {
    /// Folds the deprecated `--*-seconds` flags into their duration flags
    /// (a given old flag wins) and returns the old names that were used.
    pub fn resolve_deprecated(&mut self) -> Vec<(&'static str, &'static str)> {
        let d = std::mem::take(&mut self.deprecated);
        let mut used = Vec::new();
        let mut fold =
            |old: Option<u64>, new: &mut Duration, names: (&'static str, &'static str)| {
                if let Some(secs) = old {
                    *new = Duration::from_secs(secs);
                    used.push(names);
                }
            };
        fold(
            d.ip_cooldown_seconds,
            &mut self.ip_cooldown,
            ("--ip-cooldown-seconds", "--ip-cooldown"),
        );
        fold(
            d.ipam_node_update_rate,
            &mut self.usage_report_interval,
            ("--ipam-node-update-rate", "--usage-report-interval"),
        );
        fold(
            d.reconcile_seconds,
            &mut self.reconcile_interval,
            ("--reconcile-seconds", "--reconcile-interval"),
        );
        fold(
            d.fixed_ip_wait_seconds,
            &mut self.fixed_ip_wait,
            ("--fixed-ip-wait-seconds", "--fixed-ip-wait"),
        );
        fold(
            d.ct_timeout_tcp_seconds,
            &mut self.ct_timeout_tcp,
            ("--ct-timeout-tcp-seconds", "--ct-timeout-tcp"),
        );
        fold(
            d.ct_timeout_other_seconds,
            &mut self.ct_timeout_other,
            ("--ct-timeout-other-seconds", "--ct-timeout-other"),
        );
        fold(
            d.ct_gc_seconds,
            &mut self.ct_gc_interval,
            ("--ct-gc-seconds", "--ct-gc-interval"),
        );
        fold(
            d.policy_fail_open_after_seconds,
            &mut self.policy_fail_open_after,
            (
                "--policy-fail-open-after-seconds",
                "--policy-fail-open-after",
            ),
        );
        used
    }
}

/// Parses `key=value` items into a label map.
pub fn parse_labels(items: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(Error::InvalidFlag {
                flag: "--policy-fail-open-selector",
                value: kv.to_string(),
                reason: "is not key=value",
            }),
        })
        .collect()
}

/// Expands `10.0.0.5` and `10.0.0.0/28` (network and broadcast excluded) into IPs.
pub fn expand_pool(items: &[String]) -> Result<Vec<Ipv4Addr>> {
    let mut out = Vec::new();
    for item in items.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if let Ok(ip) = item.parse::<Ipv4Addr>() {
            out.push(ip);
            continue;
        }
        let (net, len) = sextant_crds::parse_ipv4_cidr(item).ok_or_else(|| Error::InvalidFlag {
            flag: "--static-pool",
            value: item.to_string(),
            reason: "is not an IPv4 address or CIDR",
        })?;
        if len < 16 {
            return Err(Error::InvalidFlag {
                flag: "--static-pool",
                value: item.to_string(),
                reason: "has a prefix shorter than /16",
            });
        }
        let base = u32::from(net) & (u32::MAX << (32 - u32::from(len)));
        let size = 1u32 << (32 - u32::from(len));
        let range = if size <= 2 { 0..size } else { 1..size - 1 };
        out.extend(range.map(|i| Ipv4Addr::from(base + i)));
    }
    Ok(out)
}

/// A group given by gid or by name (looked up in the group database).
pub fn resolve_group(group: &str) -> Result<u32> {
    let group = group.trim();
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) | Err(_) => Err(Error::InvalidFlag {
            flag: "--api-socket-group",
            value: group.to_string(),
            reason: "is no gid and no group this node knows",
        }),
    }
}

impl Args {
    /// Who may reach the API socket and call its mutating endpoints.
    pub fn access(&self) -> Result<server::Access> {
        Ok(server::Access {
            group: self
                .api_socket_group
                .as_deref()
                .map(resolve_group)
                .transpose()?,
            allow_uids: self.api_allow_uids.iter().copied().collect(),
            allow_gids: self.api_allow_gids.iter().copied().collect(),
        })
    }

    /// The agent configuration these flags describe.
    pub fn config(&self) -> Result<Config> {
        Ok(Config {
            state_dir: self.state_dir.clone(),
            bpf_root: (!self.no_datapath).then(|| self.bpf_root.clone()),
            cooldown: self.ip_cooldown,
            static_pool: expand_pool(&self.static_pool)?,
        })
    }

    /// Runs the agent until SIGTERM or SIGINT.
    pub async fn run(mut self) -> Result<()> {
        for (old, new) in self.resolve_deprecated() {
            warn!(
                flag = old,
                instead = new,
                "deprecated flag (whole seconds); use its duration flag"
            );
        }
        let checkpoint = self.state_dir.join(CHECKPOINT_FILE);
        // Only a node's agent (the default state dir) takes an older node
        // agent's checkpoint over; labs and tests with their own dirs never do.
        if self.state_dir == Path::new(DEFAULT_STATE_DIR)
            && crate::checkpoint::adopt_legacy(&checkpoint, Path::new(LEGACY_STATE_DIR))?
        {
            warn!(
                from = LEGACY_STATE_DIR,
                to = %checkpoint.display(),
                "checkpoint of an older agent moved to the state dir"
            );
        }
        let agent = Agent::new(self.config()?)?;
        let readiness = sextant_kit::admin::Readiness::not_ready();
        readiness.set_not_ready("restoring the checkpoint");
        let admin = match self.metrics_addr {
            Some(addr) => {
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| Error::io(format!("binding the metrics listener {addr}"), e))?;
                info!(%addr, "metrics, health and readiness on TCP");
                let refreshed = agent.clone();
                let admin = sextant_kit::admin::Admin::new(agent.registry(), readiness.clone())
                    .with_refresh(std::sync::Arc::new(move || refreshed.refresh_metrics()));
                Some(tokio::spawn(sextant_kit::admin::serve(listener, admin)))
            }
            None => None,
        };
        let access = self.access()?;
        let listener = server::bind(&self.socket, &access)?;
        info!(socket = %self.socket.display(), group = ?access.group, allow_uids = ?access.allow_uids, allow_gids = ?access.allow_gids, "agent API listening (mode 0660)");
        let srv = tokio::spawn(server::serve(
            agent.clone(),
            listener,
            std::sync::Arc::new(access),
        ));
        agent.set_policy_entry_budget(self.policy_max_entries_per_policy);
        agent.restore().await?;
        readiness.set(true);
        let selector = parse_labels(&self.policy_fail_open_selector)?;
        if !self.policy_fail_open_after.is_zero() {
            warn!(
                after_s = self.policy_fail_open_after.as_secs(),
                ?selector,
                "policy fail-open armed: selected pods lose enforcement when the control plane stays away"
            );
            agent.enable_policy_fail_open(PolicyFailOpen {
                after: self.policy_fail_open_after,
                selector,
            });
        }
        let ct_gc = tokio::spawn(agent.clone().sweep_conntrack(
            self.ct_gc_interval.max(MIN_INTERVAL),
            CtTimeouts {
                tcp: self.ct_timeout_tcp,
                other: self.ct_timeout_other,
            },
        ));
        let sweeper = {
            let agent = agent.clone();
            let every = self.reconcile_interval.max(MIN_INTERVAL);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = agent.sweep(Some(every)).await {
                        agent.metrics.error(&e);
                        warn!(error = %ErrorChain(&e), "sweep of gone pods failed");
                    }
                }
            })
        };
        let rate = self.usage_report_interval.max(MIN_INTERVAL);
        // What the fail-open mode asks before it lifts anything: this node's
        // NodeNetwork, when there is an API server to ask.
        let mut probe: Option<(Api<NodeNetwork>, String)> = None;
        let node_loop = match (
            &self.node_network_file,
            &self.node_name,
            self.static_pool.is_empty(),
        ) {
            (Some(path), _, _) => {
                info!(file = %path.display(), "NodeNetwork from a file, not the Kubernetes API");
                Some(tokio::spawn(crate::watch::node_file::file_loops(
                    agent.clone(),
                    path.clone(),
                    rate,
                )))
            }
            (None, Some(node), true) => {
                let client = sextant_kit::client::client()
                    .await
                    .map_err(|source| Error::Kube {
                        action: "building the Kubernetes client".into(),
                        source: Box::new(source),
                    })?;
                agent.enable_fixed_ips_cached(
                    client.clone(),
                    crate::watch::fixed_ip::FixedIpCache::start(client.clone()),
                    self.fixed_ip_wait,
                );
                if !self.no_datapath {
                    tokio::spawn(crate::watch::services::watch(agent.clone(), client.clone()));
                    tokio::spawn(crate::policy::watch::watch(
                        agent.clone(),
                        client.clone(),
                        node.clone(),
                    ));
                }
                probe = Some((Api::all(client.clone()), node.clone()));
                Some(tokio::spawn(crate::watch::node_network::node_loops(
                    agent.clone(),
                    Api::all(client),
                    node.clone(),
                    rate,
                )))
            }
            (None, None, true) => {
                warn!(
                    "neither --node-name, --node-network-file nor --static-pool: the pool stays empty"
                );
                None
            }
            _ => None,
        };
        let fail_open = tokio::spawn(agent.clone().watch_policy_fail_open(
            Duration::from_secs(1),
            move || {
                let probe = probe.clone();
                async move {
                    match probe {
                        Some((api, node)) => control_plane_answers(&api, &node).await,
                        None => false,
                    }
                }
            },
        ));
        let signal = sextant_kit::shutdown::signal()
            .map_err(|e| Error::io("installing the SIGTERM/SIGINT handlers", e))?
            .await;
        info!(%signal, "shutting down; the datapath stays pinned");
        srv.abort();
        if let Some(admin) = &admin {
            admin.abort();
        }
        sweeper.abort();
        fail_open.abort();
        ct_gc.abort();
        if let Some(l) = node_loop {
            l.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
        agent.save().await
    }
}

/// Floor of the loop intervals, so a typo cannot spin a loop.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long the fail-open mode's probe waits for the API server.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the API server answers a read of NodeNetwork `node` (a 404 is an
/// answer) within [`PROBE_TIMEOUT`].
async fn control_plane_answers(api: &Api<NodeNetwork>, node: &str) -> bool {
    match tokio::time::timeout(PROBE_TIMEOUT, api.get_metadata_opt(node)).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            warn!(error = %e, %node, "control plane probe failed");
            false
        }
        Err(_) => {
            warn!(%node, timeout_s = PROBE_TIMEOUT.as_secs(), "control plane probe timed out");
            false
        }
    }
}

/// Enters `--netns` on the calling thread; call before starting the runtime
/// so that every worker thread inherits it.
pub fn enter_netns(args: &Args) -> Result<()> {
    let Some(path) = &args.netns else {
        return Ok(());
    };
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening netns {}", path.display()), e))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::io(format!("entering netns {}", path.display()), e.into()))
}

#[cfg(test)]
mod tests {

    use clap::Parser;

    use super::*;

    #[test]
    fn node_network_file_excludes_static_pool_and_the_api() {
        let ok = Args::try_parse_from(["sextant-agent", "--node-network-file", "/tmp/nn.json"])
            .expect("file alone");
        assert_eq!(
            ok.node_network_file.as_deref(),
            Some(Path::new("/tmp/nn.json"))
        );
        for other in [["--static-pool", "10.0.0.0/28"], ["--node-name", "node-a"]] {
            let mut argv = vec!["sextant-agent", "--node-network-file", "/tmp/nn.json"];
            argv.extend(other);
            assert!(Args::try_parse_from(argv).is_err(), "{other:?}");
        }
    }

    #[test]
    fn durations_default_to_the_old_seconds_and_take_units() {
        let mut a = Args::try_parse_from(["sextant-agent"]).expect("defaults");
        assert!(a.resolve_deprecated().is_empty());
        assert_eq!(a.ip_cooldown, Duration::from_secs(30));
        assert_eq!(a.usage_report_interval, Duration::from_secs(15));
        assert_eq!(a.reconcile_interval, Duration::from_secs(60));
        assert_eq!(a.fixed_ip_wait, Duration::from_secs(30));
        assert_eq!(a.ct_timeout_tcp, Duration::from_secs(21_600));
        assert_eq!(a.ct_timeout_other, Duration::from_secs(60));
        assert_eq!(a.ct_gc_interval, Duration::from_secs(30));
        assert_eq!(a.policy_fail_open_after, Duration::ZERO);
        let a = Args::try_parse_from([
            "sextant-agent",
            "--ip-cooldown",
            "500ms",
            "--ct-timeout-tcp",
            "2h",
        ])
        .expect("units");
        assert_eq!(a.ip_cooldown, Duration::from_millis(500));
        assert_eq!(a.ct_timeout_tcp, Duration::from_secs(7_200));
        assert!(
            Args::try_parse_from(["sextant-agent", "--ip-cooldown", "30"]).is_err(),
            "a bare number is refused"
        );
    }

    #[test]
    fn deprecated_seconds_flags_still_work_and_win() {
        let mut a = Args::try_parse_from([
            "sextant-agent",
            "--ip-cooldown",
            "1s",
            "--ip-cooldown-seconds",
            "600",
            "--ipam-node-update-rate",
            "2",
            "--reconcile-seconds",
            "7",
            "--fixed-ip-wait-seconds",
            "60",
            "--ct-timeout-tcp-seconds",
            "100",
            "--ct-timeout-other-seconds",
            "5",
            "--ct-gc-seconds",
            "3",
            "--policy-fail-open-after-seconds",
            "9",
        ])
        .expect("old flags parse");
        assert_eq!(a.resolve_deprecated().len(), 8);
        assert_eq!(a.ip_cooldown, Duration::from_secs(600));
        assert_eq!(a.usage_report_interval, Duration::from_secs(2));
        assert_eq!(a.reconcile_interval, Duration::from_secs(7));
        assert_eq!(a.fixed_ip_wait, Duration::from_secs(60));
        assert_eq!(a.ct_timeout_tcp, Duration::from_secs(100));
        assert_eq!(a.ct_timeout_other, Duration::from_secs(5));
        assert_eq!(a.ct_gc_interval, Duration::from_secs(3));
        assert_eq!(a.policy_fail_open_after, Duration::from_secs(9));
    }

    #[test]
    fn api_socket_group_takes_a_gid_or_a_group_name_and_refuses_others() {
        let a = Args::try_parse_from([
            "sextant-agent",
            "--api-socket-group",
            "root",
            "--api-allow-uids",
            "1000,1001",
            "--api-allow-gids",
            "2000",
        ])
        .expect("flags");
        let access = a.access().expect("access");
        assert_eq!(access.group, Some(0));
        assert_eq!(access.allow_uids, [1000, 1001].into());
        assert_eq!(access.allow_gids, [2000].into());
        assert_eq!(resolve_group("65534").expect("gid"), 65534);
        let e = resolve_group("no-such-group-here").expect_err("unknown");
        assert!(
            matches!(
                e,
                Error::InvalidFlag {
                    flag: "--api-socket-group",
                    ..
                }
            ),
            "{e}"
        );
        let none = Args::try_parse_from(["sextant-agent"]).expect("defaults");
        assert_eq!(none.access().expect("access"), server::Access::default());
    }

    #[test]
    fn static_pool_expands_cidrs_without_network_and_broadcast() {
        let ips = expand_pool(&["10.9.0.0/30".into(), "10.9.1.7".into()]).expect("pool");
        assert_eq!(
            ips,
            vec![
                Ipv4Addr::new(10, 9, 0, 1),
                Ipv4Addr::new(10, 9, 0, 2),
                Ipv4Addr::new(10, 9, 1, 7)
            ]
        );
        assert!(expand_pool(&["nope".into()]).is_err());
    }
}
