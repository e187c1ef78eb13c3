//! `--provider sim`: the operator against the embedded simulated cloud, so
//! the whole suite can be tried on a real Kubernetes API server (fake kwok
//! nodes, say) without a cloud account.
//!
//! ```text
//!  Node (providerID aws:///<zone>/i-..., instance-type and zone labels)
//!    └─▶ NodeNetwork (provider aws) ─▶ NodeIpam ─▶ Cloud (limits, retries, metrics)
//!                                                   └─▶ AutoRegister ─▶ SimCloud (seeded; EC2 buckets)
//!                                                        └─ unknown i-... ? look it up in the NodeNetworks, launch it once
//! ```
//!
//! The simulated VPC is laid out from flags: `--sim-vpc-cidr` split into one
//! subnet per `--sim-zones` zone, and one security group every instance's
//! primary interface is in. Its id is `--vpc-id`, or [`DEFAULT_SIM_VPC`]
//! when that is unset, so NodeNetworks, the full resync and fixed IPs all
//! name the VPC the simulator has. The simulator does not know the cluster's
//! nodes: the first describe (or attach) naming an `i-...` instance launches
//! it, with the instance type and zone its NodeNetwork says (from the node's
//! labels and providerID), else `--sim-instance-type` in the first zone.
//! State lives in the operator's memory: a restart, or a new leader, starts
//! an empty VPC (NodeNetworks then resync to what it has).
//! `--sim-throttle-ratio` answers that share of calls "throttled" on top of
//! EC2's buckets. `--sim-state-file` keeps the cloud across restarts: the
//! instances and ENIs (attachment, addresses, tags) are written as JSON,
//! replaced whole (temp + rename) every second they changed, and read back
//! when the operator starts, so a new leader (a restarted replica) works on
//! the same cloud; tests audit the cloud from outside the operator with it.
//!
//! Behind the cargo feature `sim` (default on; the image leaves it out and
//! refuses `--provider sim`).

use std::{path::PathBuf, sync::Arc, time::Duration};

use sextant_cloud::sim::{
    AutoRegister, Cidr, Faults, INSTANCE_TYPES, InstanceDirectory, InstanceHint, SetupError,
    SimCloud, SimConfig, SimProvider, SimVpc, SimVpcConfig, instance_type,
};

use crate::node_network::directory::NodeNetworkDirectory;

/// VPC id of the simulated VPC when `--vpc-id` is not given.
pub(crate) const DEFAULT_SIM_VPC: &str = "vpc-sim";

/// How calls to the simulated cloud behave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SimLatency {
    /// Like EC2: 50 ms describes, 150 ms mutations (plus up to 50 ms of
    /// jitter) and EC2's server-side token buckets, so throttling, retries
    /// and the client-side limiter behave as they would against AWS.
    Realistic,
    /// No latency and no server-side throttling (the client-side limiter
    /// still applies).
    Instant,
}

/// Parses an instance type the simulator knows.
pub(crate) fn parse_instance_type(s: &str) -> Result<String, String> {
    match instance_type(s.trim()) {
        Some(l) => Ok(l.instance_type),
        None => Err(format!(
            "{s:?} is not a simulated instance type; known: {}",
            INSTANCE_TYPES
                .iter()
                .map(|(n, ..)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Parses a probability in `[0, 1]`.
pub(crate) fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        Ok(r) => Err(format!("{r} is not a ratio between 0 and 1")),
        Err(e) => Err(format!("{s:?} is not a number: {e}")),
    }
}

/// Flags of `--provider sim` (ignored by the other providers).
#[derive(Clone, Debug, PartialEq, clap::Args)]
pub(crate) struct SimArgs {
    /// Seed of the simulated cloud's latency jitter and of the client's retry jitter.
    #[arg(long, env = "SEXTANT_SIM_SEED", default_value_t = 1)]
    pub(crate) sim_seed: u64,
    /// CIDR of the simulated VPC (/16 to /28), split into one subnet per zone.
    #[arg(long, env = "SEXTANT_SIM_VPC_CIDR", default_value = "10.0.0.0/16")]
    pub(crate) sim_vpc_cidr: Cidr,
    /// Zones of the simulated VPC (comma-separated); default `<region>a,<region>b`.
    #[arg(long, env = "SEXTANT_SIM_ZONES", value_delimiter = ',')]
    pub(crate) sim_zones: Vec<String>,
    /// Instance type of instances no NodeNetwork describes.
    #[arg(long, env = "SEXTANT_SIM_INSTANCE_TYPE", default_value = "m5.large", value_parser = parse_instance_type)]
    pub(crate) sim_instance_type: String,
    /// `realistic` (EC2 latencies and token buckets) or `instant`.
    #[arg(long, env = "SEXTANT_SIM_LATENCY", value_enum, default_value_t = SimLatency::Realistic)]
    pub(crate) sim_latency: SimLatency,
    /// Share of calls (0 to 1) answered "throttled" on top of the buckets.
    #[arg(long, env = "SEXTANT_SIM_THROTTLE_RATIO", default_value_t = 0.0, value_parser = parse_ratio)]
    pub(crate) sim_throttle_ratio: f64,
    /// Write the simulated VPC's ENIs here as JSON (every second it changed).
    #[arg(long, env = "SEXTANT_SIM_STATE_FILE")]
    pub(crate) sim_state_file: Option<PathBuf>,
}

impl SimArgs {
    /// The zones: `--sim-zones`, or `<region>a` and `<region>b`.
    pub(crate) fn zones(&self, region: &str) -> Vec<String> {
        let given: Vec<String> = self
            .sim_zones
            .iter()
            .map(|z| z.trim().to_owned())
            .filter(|z| !z.is_empty())
            .collect();
        if given.is_empty() {
            vec![format!("{region}a"), format!("{region}b")]
        } else {
            given
        }
    }

    /// The simulator's settings, following EC2.
    pub(crate) fn sim_config(&self) -> SimConfig {
        let mut config = match self.sim_latency {
            SimLatency::Realistic => SimConfig::new(SimProvider::Aws, self.sim_seed),
            SimLatency::Instant => SimConfig::instant(SimProvider::Aws, self.sim_seed),
        };
        config.faults = Faults {
            throttle_ratio: self.sim_throttle_ratio,
            ..config.faults
        };
        config
    }

    /// The simulated VPC `vpc_id` in `region`.
    pub(crate) fn vpc_config(&self, region: &str, vpc_id: &str) -> SimVpcConfig {
        SimVpcConfig {
            vpc_id: vpc_id.to_owned(),
            cidr: self.sim_vpc_cidr,
            zones: self.zones(region),
        }
    }

    /// A seeded simulated cloud with its VPC laid out, launching unseen
    /// instances as `directory` describes them.
    pub(crate) fn build(
        &self,
        region: &str,
        vpc_id: &str,
        directory: Arc<dyn InstanceDirectory>,
    ) -> Result<AutoRegister, SetupError> {
        let sim = Arc::new(SimCloud::new(self.sim_config()));
        let vpc = SimVpc::create(&sim, &self.vpc_config(region, vpc_id))?;
        if let Some(path) = &self.sim_state_file {
            match std::fs::read(path) {
                Ok(body) => {
                    let snap = serde_json::from_slice(&body)
                        .map_err(|e| SetupError::BadSnapshot(format!("{}: {e}", path.display())))?;
                    sim.restore(&snap)?;
                    tracing::info!(path = %path.display(), "simulated cloud restored");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(SetupError::BadSnapshot(format!("{}: {e}", path.display())));
                }
            }
            tokio::spawn(write_state(sim.clone(), path.clone()));
        }
        AutoRegister::new(sim, vpc, &self.sim_instance_type, directory)
    }
}

/// Writes the cloud's snapshot to `path` every second it changed, temp + rename.
async fn write_state(sim: Arc<SimCloud>, path: PathBuf) {
    let mut last = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = sim.snapshot();
        if last.as_ref() == Some(&now) {
            continue;
        }
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec_pretty(&now)
            .map_err(std::io::Error::other)
            .and_then(|body| std::fs::write(&tmp, body))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match written {
            Ok(()) => last = Some(now),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the simulated cloud's state")
            }
        }
    }
}

impl InstanceDirectory for NodeNetworkDirectory {
    fn lookup(&self, instance_id: &str) -> Option<InstanceHint> {
        let nn = self.by_instance(instance_id)?;
        Some(InstanceHint {
            instance_type: nn.spec.instance_type.clone(),
            zone: nn.spec.zone.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::{reflector, watcher};
    use sextant_crds::{NodeNetwork, NodeNetworkSpec, Provider};

    #[test]
    fn zones_default_to_the_regions_a_and_b() {
        let mut a = SimArgs {
            sim_seed: 1,
            sim_vpc_cidr: "10.0.0.0/16".parse().unwrap(),
            sim_zones: vec![],
            sim_instance_type: "m5.large".into(),
            sim_latency: SimLatency::Realistic,
            sim_throttle_ratio: 0.0,
            sim_state_file: None,
        };
        assert_eq!(a.zones("eu-west-1"), ["eu-west-1a", "eu-west-1b"]);
        a.sim_zones = vec![" us-east-1c".into(), "".into()];
        assert_eq!(a.zones("eu-west-1"), ["us-east-1c"]);
        assert!(a.sim_config().server_throttling);
        a.sim_latency = SimLatency::Instant;
        assert!(!a.sim_config().server_throttling);
        assert_eq!(a.sim_config().seed, 1);
    }

    #[test]
    fn throttle_ratios_are_probabilities() {
        assert_eq!(parse_ratio("0.2"), Ok(0.2));
        assert!(parse_ratio("1.5").unwrap_err().contains("between 0 and 1"));
        assert!(parse_ratio("lots").unwrap_err().contains("not a number"));
    }

    #[tokio::test]
    async fn the_state_file_lists_the_vpcs_enis_and_a_throttle_ratio_reaches_the_cloud() {
        let dir = tempfile::tempdir().expect("dir");
        let args = SimArgs {
            sim_seed: 1,
            sim_vpc_cidr: "10.0.0.0/16".parse().expect("cidr"),
            sim_zones: vec![],
            sim_instance_type: "m5.large".into(),
            sim_latency: SimLatency::Instant,
            sim_throttle_ratio: 0.2,
            sim_state_file: Some(dir.path().join("cloud.json")),
        };
        assert_eq!(args.sim_config().faults.throttle_ratio, 0.2);
        let cloud = args
            .build(
                "us-east-1",
                DEFAULT_SIM_VPC,
                Arc::new(NodeNetworkDirectory::default()),
            )
            .expect("sim");
        drop(cloud);
        let path = dir.path().join("cloud.json");
        let mut state = None;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(body) = std::fs::read(&path) {
                state = Some(serde_json::from_slice::<serde_json::Value>(&body).expect("JSON"));
                break;
            }
        }
        let state = state.expect("the state file is written");
        assert!(state["enis"].is_array(), "{state}");
        // A restart reads it back: the same cloud.
        let again = args
            .build(
                "us-east-1",
                DEFAULT_SIM_VPC,
                Arc::new(NodeNetworkDirectory::default()),
            )
            .expect("restored");
        drop(again);
        std::fs::write(&path, b"{not json").expect("write");
        let err = args
            .build(
                "us-east-1",
                DEFAULT_SIM_VPC,
                Arc::new(NodeNetworkDirectory::default()),
            )
            .err()
            .expect("a broken state file is refused");
        assert!(err.to_string().contains("cloud.json"), "{err}");
    }

    #[test]
    fn instance_types_parse_only_when_simulated() {
        assert_eq!(parse_instance_type("m5.xlarge"), Ok("m5.xlarge".into()));
        let err = parse_instance_type("t3.nano").unwrap_err();
        assert!(err.contains("t3.nano") && err.contains("m5.large"), "{err}");
    }

    #[test]
    fn the_directory_reads_the_nodenetwork_naming_the_instance() {
        let dir = NodeNetworkDirectory::default();
        assert_eq!(dir.lookup("i-0abc"), None, "no store yet");
        let (store, mut writer) = reflector::store::<NodeNetwork>();
        let nn = NodeNetwork::new(
            "kwok-1",
            NodeNetworkSpec {
                provider: Provider::Aws,
                instance_id: Some("i-0abc".into()),
                instance_type: Some("m5.xlarge".into()),
                zone: Some("us-east-1b".into()),
                ..NodeNetworkSpec::default()
            },
        );
        writer.apply_watcher_event(&watcher::Event::Apply(nn));
        dir.set(store);
        assert_eq!(
            dir.lookup("i-0abc"),
            Some(InstanceHint {
                instance_type: Some("m5.xlarge".into()),
                zone: Some("us-east-1b".into()),
            })
        );
        assert_eq!(dir.lookup("i-0other"), None);
    }
}
