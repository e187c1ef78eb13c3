//! The running agent: one handle over the pool, the checkpoint, pod
//! plumbing and the datapath, shared by the API server, the CNI endpoints
//! and the NodeNetwork loops. Its decisions are made in
//! `sextant-agent-core` (allocation, handshake, usage, fixed IP, fail-open);
//! this module holds the state and does the IO around them, one file per
//! concern:
//!
//! ```text
//!  mod.rs     state, start-up (checkpoint read, datapath open), restore/sweep, save
//!  cni.rs     CNI ADD/DEL/CHECK and the allocation step (fixed-IP wait)
//!  node.rs    NodeNetwork in (pool, fixedIps, handshake) and usage out
//!  policy.rs  policy snapshots into the datapath, the fail-open mode
//!  status.rs  health, /v1/ipam, services, metrics, conntrack sweeps
//! ```
//!
//! Locks are std mutexes never held across an `.await`. When more than one
//! is held they are taken in the order `policy` → `state` → `datapath`.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use sextant_agent_api::AgentState;
use sextant_agent_core::{node::LocalIpam, pool::Pool};
use sextant_kit::sync::lock;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::{
    checkpoint::{self, Checkpoint},
    cni::veth,
    datapath::Datapath,
    error::{Error, Result},
    metrics::Metrics,
    paths::CHECKPOINT_FILE,
};

mod cni;
mod node;
mod policy;
mod status;
#[cfg(test)]
mod tests;

use cni::FixedIpLookup;
pub use policy::PolicyFailOpen;
use policy::PolicyState;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 timestamp of now.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Where the agent is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Reading and checking the checkpoint; counts are not final.
    Restoring,
    /// Serving.
    Ready,
    /// Serving, but something is wrong (datapath failed to load).
    Degraded,
}

impl Phase {
    fn state(self) -> AgentState {
        match self {
            Phase::Restoring => AgentState::Restoring,
            Phase::Ready => AgentState::Ready,
            Phase::Degraded => AgentState::Degraded,
        }
    }
}

/// What the agent needs to know to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Directory of the checkpoint.
    pub state_dir: PathBuf,
    /// bpffs root of the datapath; `None` runs without one (kernel routing only).
    pub bpf_root: Option<PathBuf>,
    /// Reuse cooldown of freed IPs.
    pub cooldown: Duration,
    /// Pod IPs when there is no NodeNetwork (bare metal without the operator, labs, tests).
    pub static_pool: Vec<Ipv4Addr>,
}

struct State {
    node: LocalIpam,
    phase: Phase,
}

/// The agent. Cheap to share behind an `Arc`.
pub struct Agent {
    cfg: Config,
    state: Mutex<State>,
    fixed_lookup: std::sync::OnceLock<FixedIpLookup>,
    /// Bumped on every NodeNetwork applied: ADDs waiting for a fixed IP look again.
    node_changed: watch::Sender<()>,
    /// Signalled when an ADD found the pool empty: the usage report (with
    /// the pods waiting) goes out at once, not at the next interval.
    report_now: tokio::sync::Notify,
    datapath: Mutex<Option<Datapath>>,
    policy: Mutex<PolicyState>,
    netlink: rtnetlink::Handle,
    save_lock: tokio::sync::Mutex<()>,
    ready: watch::Sender<bool>,
    pub(crate) metrics: Metrics,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Agent {
    /// Builds the agent in the restoring phase: reads the checkpoint (a
    /// corrupt one or a double assignment is an error: the agent refuses to
    /// guess) and opens the datapath. Call [`Agent::restore`] next.
    pub fn new(cfg: Config) -> Result<Arc<Self>> {
        let cp_path = cfg.state_dir.join(CHECKPOINT_FILE);
        let cp = checkpoint::read(&cp_path)?;
        let cooldown_ms = u64::try_from(cfg.cooldown.as_millis()).unwrap_or(u64::MAX);
        let mut pool = Pool::new(cooldown_ms);
        pool.set_pool(cfg.static_pool.iter().copied());
        if let Some(cp) = &cp {
            // Until every entry is checked, all of them count as in use.
            let all = checkpoint::restore(cp, |_| true)?;
            checkpoint::apply(&mut pool, cp, all, now_ms(), cooldown_ms);
        }
        let mut phase = Phase::Restoring;
        let datapath = match &cfg.bpf_root {
            Some(root) => match Datapath::open(root) {
                Ok(dp) => {
                    info!(root = %root.display(), adopted = dp.adopted(), "datapath ready");
                    Some(dp)
                }
                Err(e) => {
                    warn!(error = %sextant_kit::ErrorChain(&e), "datapath failed to load; kernel routing only");
                    phase = Phase::Degraded;
                    None
                }
            },
            None => None,
        };
        // Pinned maps of an earlier agent may hold entries of objects deleted
        // while none ran: the first policy sync reconciles them all.
        let adopted = datapath.as_ref().is_some_and(Datapath::adopted);
        let netlink = veth::connect()?;
        let metrics = Metrics::default();
        let registry = Arc::new(metrics.registry());
        Ok(Arc::new(Agent {
            state: Mutex::new(State {
                node: LocalIpam::new(pool),
                phase,
            }),
            cfg,
            fixed_lookup: std::sync::OnceLock::new(),
            node_changed: watch::channel(()).0,
            report_now: tokio::sync::Notify::new(),
            datapath: Mutex::new(datapath),
            policy: Mutex::new(PolicyState {
                node: crate::policy::NodePolicy::default(),
                last: None,
                control_plane_seen: std::time::Instant::now(),
                fail_open: None,
                engaged: false,
                events: Vec::new(),
                rewrite: adopted,
            }),
            netlink,
            save_lock: tokio::sync::Mutex::new(()),
            ready: watch::channel(false).0,
            metrics,
            registry,
        }))
    }

    /// Checks every checkpointed allocation against the kernel, drops those
    /// whose netns or interface is gone, and turns the agent ready.
    pub async fn restore(self: &Arc<Self>) -> Result<()> {
        let (kept, dropped) = self.sweep(None).await?;
        // Endpoints of pods this node no longer has (deleted while no agent
        // ran) leave the datapath before the agent reports ready.
        let live: std::collections::BTreeSet<std::net::Ipv4Addr> = lock(&self.state)
            .node
            .pool()
            .allocations()
            .map(|a| a.ip)
            .collect();
        if let Some(dp) = lock(&self.datapath).as_mut() {
            let stale = dp.retain_endpoints(&live)?;
            if stale > 0 {
                info!(stale, "stale endpoints removed from the pinned datapath");
            }
        }
        {
            let mut st = lock(&self.state);
            if st.phase == Phase::Restoring {
                st.phase = Phase::Ready;
            }
        }
        self.ready.send_replace(true);
        info!(kept, dropped, "restored");
        Ok(())
    }

    /// Frees allocations whose netns or interface is gone (a DEL that never
    /// reached the agent). With `grace`, allocations younger than it are left
    /// alone: their ADD may still be wiring the pod. Returns (kept, dropped).
    pub async fn sweep(&self, grace: Option<Duration>) -> Result<(usize, usize)> {
        let now = jiff::Timestamp::now();
        let allocations: Vec<_> = lock(&self.state)
            .node
            .pool()
            .allocations()
            .filter(|a| match grace {
                None => true,
                Some(g) => a
                    .since
                    .parse::<jiff::Timestamp>()
                    .map(|t| now.duration_since(t).unsigned_abs() >= g)
                    .unwrap_or(true),
            })
            .cloned()
            .collect();
        let cp = Checkpoint {
            version: checkpoint::VERSION,
            allocations,
            cooling: Vec::new(),
            releasing: Vec::new(),
        };
        // Host veths, for pods whose netns path the agent cannot see; when
        // they cannot be listed, every such pod counts as alive.
        let host_links = match veth::link_names(&self.netlink).await {
            Ok(names) => Some(names),
            Err(e) => {
                warn!(error = %sextant_kit::ErrorChain(&e), "cannot list host veths; keeping pods whose netns is not visible");
                None
            }
        };
        let restored = tokio::task::spawn_blocking(move || {
            checkpoint::restore(&cp, |a| {
                let host_up = host_links.as_ref().is_none_or(|names| {
                    names.contains(&veth::host_veth_name(&a.container_id, &a.ifname))
                });
                veth::interface_alive(Path::new(&a.netns), &a.ifname, host_up)
            })
        })
        .await
        .map_err(|e| Error::io("sweep worker", std::io::Error::other(e)))??;
        let dropped = restored.dropped;
        if dropped.is_empty() {
            return Ok((restored.kept.len(), 0));
        }
        {
            let mut st = lock(&self.state);
            let now = now_ms();
            for a in &dropped {
                st.node.free(&a.key(), now);
            }
        }
        for a in &dropped {
            warn!(ip = %a.ip, container = %a.container_id, "pod interface gone; IP back to the pool after cooldown");
            let _ = veth::teardown(&self.netlink, &a.container_id, &a.ifname).await;
            if let Some(dp) = lock(&self.datapath).as_mut() {
                let _ = dp.remove_endpoint(a.ip);
                let _ = dp.detach(&veth::host_veth_name(&a.container_id, &a.ifname));
            }
        }
        self.save().await?;
        Ok((restored.kept.len(), dropped.len()))
    }

    async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Writes the checkpoint of the current pool.
    pub async fn save(&self) -> Result<()> {
        let _guard = self.save_lock.lock().await;
        let cp = Checkpoint::of(lock(&self.state).node.pool(), now_ms());
        let path = self.cfg.state_dir.join(CHECKPOINT_FILE);
        tokio::task::spawn_blocking(move || checkpoint::write(&path, &cp))
            .await
            .map_err(|e| Error::io("checkpoint worker", std::io::Error::other(e)))?
    }
}
