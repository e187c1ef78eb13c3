//! The operator's flags, each with a `SEXTANT_*` environment fallback, and
//! what they mean for the parts (`Args::ipam_defaults`,
//! [`Args::node_network_defaults`], `Args::gc_policy`,
//! `Args::lease_config`). Durations are human (`30s`, `5m`) through
//! `sextant_kit::duration`. Wiring the parts together is [`crate::run`]'s.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use sextant_cloud::{RateLimit, RateLimits};
use sextant_crds::{IpamSpec, Provider, wellknown::FIELD_MANAGER_OPERATOR};
use sextant_kit::{duration, lease::LeaseConfig};

#[cfg(feature = "sim")]
use crate::sim::{DEFAULT_SIM_VPC, SimArgs};
use crate::{
    ipam::{gc::GcPolicy, watermark::IpamDefaults},
    node_network::{
        node_watch::{NodeNetworkDefaults, PodCidrAllocator},
        pod_cidr::{PodCidrPool, PoolError},
    },
};

/// The clouds the operator takes ENIs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudProvider {
    /// AWS EC2.
    Aws,
    /// Alibaba Cloud ECS.
    Alibaba,
    /// Bare metal: no cloud; each node's pod CIDRs (from
    /// `Node.spec.podCIDRs`, or cut from `--pod-cidr-pool`) are its pool.
    Static,
    /// The embedded simulated cloud, seeded, its VPC from the `--sim-*`
    /// flags: the suite on a real API server without a cloud account.
    ///
    /// Its NodeNetworks say `provider: aws`: the simulator follows EC2's
    /// model (ENIs with secondary IPv4 addresses, EC2's per-type limits and
    /// token buckets) and its nodes carry EC2 providerIDs
    /// (`aws:///<zone>/i-...`), so the CRD, the node watch, the agent and the
    /// scheduler extender treat them as the AWS nodes they stand in for. A
    /// separate CRD value would say nothing the agent acts on and make every
    /// match on the provider grow an arm that behaves as `aws` does. How the
    /// simulated VPC is laid out and learns the nodes' instances: the `sim`
    /// module. A binary built without the cargo feature `sim` (the image)
    /// parses the value and refuses it at startup.
    Sim,
}

impl From<CloudProvider> for Provider {
    fn from(p: CloudProvider) -> Self {
        match p {
            CloudProvider::Aws | CloudProvider::Sim => Provider::Aws,
            CloudProvider::Alibaba => Provider::Alibaba,
            CloudProvider::Static => Provider::Static,
        }
    }
}

/// Parses `key=value`.
pub(crate) fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Client-side rate-limit overrides, per action class; unset values keep the
/// provider's preset ([`RateLimits::aws`], also for `sim`, [`RateLimits::alibaba`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, clap::Args)]
pub(crate) struct RateLimitArgs {
    /// Describe/list calls per second.
    #[arg(long, env = "SEXTANT_DESCRIBE_QPS")]
    pub(crate) describe_qps: Option<f64>,
    /// Describe/list burst.
    #[arg(long, env = "SEXTANT_DESCRIBE_BURST")]
    pub(crate) describe_burst: Option<u32>,
    /// ENI create/delete and address assign/unassign calls per second (each).
    #[arg(long, env = "SEXTANT_MUTATE_ENI_QPS")]
    pub(crate) mutate_eni_qps: Option<f64>,
    /// ENI mutation burst.
    #[arg(long, env = "SEXTANT_MUTATE_ENI_BURST")]
    pub(crate) mutate_eni_burst: Option<u32>,
    /// Attach/detach calls per second.
    #[arg(long, env = "SEXTANT_MUTATE_OTHER_QPS")]
    pub(crate) mutate_other_qps: Option<f64>,
    /// Attach/detach burst.
    #[arg(long, env = "SEXTANT_MUTATE_OTHER_BURST")]
    pub(crate) mutate_other_burst: Option<u32>,
}

impl RateLimitArgs {
    /// The provider's preset with the overrides applied.
    pub(crate) fn limits(&self, provider: CloudProvider) -> RateLimits {
        let preset = match provider {
            CloudProvider::Aws | CloudProvider::Sim | CloudProvider::Static => RateLimits::aws(),
            CloudProvider::Alibaba => RateLimits::alibaba(),
        };
        let apply = |l: RateLimit, qps: Option<f64>, burst: Option<u32>| RateLimit {
            per_second: qps.unwrap_or(l.per_second),
            burst: burst.unwrap_or(l.burst),
        };
        RateLimits {
            describe: apply(preset.describe, self.describe_qps, self.describe_burst),
            mutate_eni: apply(
                preset.mutate_eni,
                self.mutate_eni_qps,
                self.mutate_eni_burst,
            ),
            mutate_other: apply(
                preset.mutate_other,
                self.mutate_other_qps,
                self.mutate_other_burst,
            ),
        }
    }
}

/// Flags of `sextant-operator`; each has a `SEXTANT_*` environment fallback.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "sextant-operator",
    version,
    about = "Sextant's ENI IPAM operator"
)]
pub struct Args {
    /// Cluster name, tagged on every ENI; garbage collection only touches ENIs with it.
    #[arg(long, env = "SEXTANT_CLUSTER_NAME")]
    pub(crate) cluster_name: String,
    /// Cloud provider.
    #[arg(long, env = "SEXTANT_PROVIDER", value_enum)]
    pub provider: CloudProvider,
    /// Cloud region (`us-east-1`, `cn-hangzhou`).
    #[arg(long, env = "SEXTANT_REGION")]
    pub(crate) region: String,
    /// Cloud API endpoint override (a VPC endpoint, a test server).
    #[arg(long, env = "SEXTANT_ENDPOINT")]
    pub(crate) endpoint: Option<String>,
    /// VPC written into new NodeNetworks and listed by every full resync;
    /// with `--provider sim`, the simulated VPC's id (default `vpc-sim`).
    #[arg(long, env = "SEXTANT_VPC_ID")]
    pub(crate) vpc_id: Option<String>,
    /// Subnet tags (`k=v`, comma-separated) written into new NodeNetworks.
    #[arg(long, env = "SEXTANT_SUBNET_TAGS", value_delimiter = ',', value_parser = parse_key_value)]
    pub(crate) subnet_tags: Vec<(String, String)>,
    /// Security-group tags (`k=v`, comma-separated) written into new NodeNetworks.
    #[arg(long, env = "SEXTANT_SECURITY_GROUP_TAGS", value_delimiter = ',', value_parser = parse_key_value)]
    pub(crate) security_group_tags: Vec<(String, String)>,
    /// Free IPs every node keeps ready, unless its NodeNetwork says otherwise.
    #[arg(long, env = "SEXTANT_PRE_ALLOCATE", default_value_t = sextant_crds::DEFAULT_PRE_ALLOCATE)]
    pub(crate) pre_allocate: u32,
    /// IPs every node holds at least.
    #[arg(long, env = "SEXTANT_MIN_ALLOCATE", default_value_t = 0)]
    pub(crate) min_allocate: u32,
    /// IPs a node holds at most; 0 is the instance's limit.
    #[arg(long, env = "SEXTANT_MAX_ALLOCATE", default_value_t = 0)]
    pub(crate) max_allocate: u32,
    /// Free IPs tolerated above pre-allocate before releasing.
    #[arg(long, env = "SEXTANT_MAX_ABOVE_WATERMARK", default_value_t = 0)]
    pub(crate) max_above_watermark: u32,
    /// Time between full resyncs (one paged listing per VPC).
    #[arg(long, env = "SEXTANT_FULL_RESYNC_INTERVAL", default_value = "5m", value_parser = duration::parse)]
    pub(crate) full_resync_interval: Duration,
    /// How long a leaked ENI stays unattached before it is deleted.
    #[arg(long, env = "SEXTANT_GC_GRACE", default_value = "5m", value_parser = duration::parse)]
    pub(crate) gc_grace: Duration,
    /// Most leaked ENIs deleted per full resync.
    #[arg(long, env = "SEXTANT_GC_BATCH", default_value_t = 20)]
    pub(crate) gc_batch: usize,
    /// Bare metal (`--provider static`): CIDRs cut into per-node pod CIDRs
    /// for nodes the controller-manager gives no `podCIDR`, comma-separated.
    /// Empty: such nodes wait for one.
    #[arg(long, env = "SEXTANT_POD_CIDR_POOL", value_delimiter = ',')]
    pub(crate) pod_cidr_pool: Vec<String>,
    /// Prefix length of each node's block from `--pod-cidr-pool`.
    #[arg(long, env = "SEXTANT_POD_CIDR_MASK_SIZE", default_value_t = 24)]
    pub(crate) pod_cidr_mask_size: u8,
    /// How long a block freed by a deleted node waits before it is handed
    /// out again (its pods are being removed meanwhile).
    #[arg(long, env = "SEXTANT_POD_CIDR_QUARANTINE", default_value = "5m", value_parser = duration::parse)]
    pub(crate) pod_cidr_quarantine: Duration,
    /// Client-side cloud API rate limits.
    #[command(flatten)]
    pub(crate) rate_limits: RateLimitArgs,
    /// NodeNetworks reconciled at once.
    #[arg(long, env = "SEXTANT_RECONCILE_CONCURRENCY", default_value_t = 64)]
    pub(crate) reconcile_concurrency: u16,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "SEXTANT_LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    pub(crate) listen_addr: SocketAddr,
    /// Namespace of the leader Lease.
    #[arg(long, env = "SEXTANT_LEASE_NAMESPACE", default_value = "kube-system")]
    pub(crate) lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "SEXTANT_LEASE_NAME", default_value = "sextant-operator")]
    pub(crate) lease_name: String,
    /// How long the Lease stays valid without renewal.
    #[arg(long, env = "SEXTANT_LEASE_DURATION", default_value = "15s", value_parser = duration::parse)]
    pub(crate) lease_duration: Duration,
    /// This replica's identity in the Lease; defaults to `$HOSTNAME` (the pod name).
    #[arg(long, env = "SEXTANT_POD_NAME")]
    pub(crate) identity: Option<String>,
    /// The simulated cloud of `--provider sim` (last: its help heading
    /// applies to every flag after it).
    #[cfg(feature = "sim")]
    #[command(flatten, next_help_heading = "Simulated cloud (--provider sim)")]
    pub(crate) sim: SimArgs,
}

impl Args {
    /// The VPC: `--vpc-id`, or with `--provider sim` the simulated VPC's
    /// default id.
    pub(crate) fn vpc(&self) -> Option<String> {
        match (&self.vpc_id, self.provider) {
            (Some(v), _) => Some(v.clone()),
            #[cfg(feature = "sim")]
            (None, CloudProvider::Sim) => Some(DEFAULT_SIM_VPC.to_owned()),
            (None, _) => None,
        }
    }

    /// Operator-wide IPAM defaults.
    pub(crate) fn ipam_defaults(&self) -> IpamDefaults {
        IpamDefaults {
            pre_allocate: self.pre_allocate,
            min_allocate: self.min_allocate,
            max_allocate: self.max_allocate,
            max_above_watermark: self.max_above_watermark,
        }
    }

    /// What NodeNetworks created for new nodes start with.
    pub fn node_network_defaults(&self) -> NodeNetworkDefaults {
        let map = |kv: &[(String, String)]| kv.iter().cloned().collect::<BTreeMap<_, _>>();
        NodeNetworkDefaults {
            vpc_id: self.vpc(),
            ipam: IpamSpec {
                subnet_tags: map(&self.subnet_tags),
                security_group_tags: map(&self.security_group_tags),
                ..IpamSpec::default()
            },
        }
    }

    /// The pod CIDR allocator `--pod-cidr-pool` asks for, if any.
    pub(crate) fn pod_cidr_allocator(
        &self,
    ) -> Result<Option<std::sync::Arc<PodCidrAllocator>>, PodCidrArgError> {
        let pool: Vec<String> = self
            .pod_cidr_pool
            .iter()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .collect();
        if pool.is_empty() {
            return Ok(None);
        }
        if self.provider != CloudProvider::Static {
            return Err(PodCidrArgError::NotStatic);
        }
        let pool = PodCidrPool::new(&pool, self.pod_cidr_mask_size)?;
        Ok(Some(std::sync::Arc::new(PodCidrAllocator::new(
            pool,
            self.pod_cidr_quarantine,
        ))))
    }

    /// Garbage collection settings.
    pub(crate) fn gc_policy(&self) -> GcPolicy {
        GcPolicy {
            grace: self.gc_grace,
            per_round: self.gc_batch,
        }
    }

    /// The Lease settings; the identity falls back to `$HOSTNAME`, then to a
    /// random name.
    pub(crate) fn lease_config(&self) -> LeaseConfig {
        let identity = self
            .identity
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("sextant-operator-{:08x}", rand::random::<u32>()));
        LeaseConfig {
            namespace: self.lease_namespace.clone(),
            name: self.lease_name.clone(),
            identity,
            duration: self.lease_duration,
            field_manager: FIELD_MANAGER_OPERATOR.to_owned(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    #[cfg(feature = "sim")]
    use crate::sim::SimLatency;
    use clap::{CommandFactory, Parser};

    pub(crate) const REQUIRED: [&str; 7] = [
        "sextant-operator",
        "--cluster-name",
        "prod",
        "--provider",
        "aws",
        "--region",
        "us-east-1",
    ];

    #[test]
    fn defaults_follow_the_design() {
        let a = Args::try_parse_from(REQUIRED).unwrap();
        assert_eq!(a.pre_allocate, 8);
        assert_eq!(a.full_resync_interval, Duration::from_secs(300));
        assert_eq!(a.gc_policy(), GcPolicy::default());
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.listen_addr, "0.0.0.0:9090".parse().unwrap());
        assert_eq!(a.rate_limits.limits(a.provider), RateLimits::aws());
        assert_eq!(
            a.ipam_defaults(),
            IpamDefaults {
                pre_allocate: 8,
                ..IpamDefaults::default()
            }
        );
    }

    #[test]
    fn rate_limit_flags_override_the_provider_preset_per_class() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "alibaba";
        argv.extend(["--mutate-eni-qps", "2.5", "--describe-burst", "10"]);
        let a = Args::try_parse_from(argv).unwrap();
        let l = a.rate_limits.limits(a.provider);
        let preset = RateLimits::alibaba();
        assert_eq!(l.mutate_eni.per_second, 2.5);
        assert_eq!(l.mutate_eni.burst, preset.mutate_eni.burst);
        assert_eq!(l.describe.burst, 10);
        assert_eq!(l.describe.per_second, preset.describe.per_second);
        assert_eq!(l.mutate_other, preset.mutate_other);
    }

    #[test]
    fn every_flag_has_an_environment_fallback() {
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            assert!(env.starts_with("SEXTANT_"), "--{id} has env {env:?}");
        }
    }

    #[test]
    fn no_flag_carries_a_secret() {
        for arg in Args::command().get_arguments() {
            let id = arg.get_id().as_str().to_lowercase();
            assert!(
                !["secret", "password", "access_key", "token"]
                    .iter()
                    .any(|s| id.contains(s)),
                "{id}"
            );
        }
    }

    #[test]
    fn durations_and_tags_parse() {
        assert_eq!(duration::parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration::parse("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(duration::parse("PT5M"), Ok(Duration::from_secs(300)));
        assert!(duration::parse("soon").is_err());
        assert!(duration::parse("-5s").is_err());
        let mut argv = REQUIRED.to_vec();
        argv.extend(["--subnet-tags", "role=pods,tier=a", "--vpc-id", "vpc-1"]);
        let a = Args::try_parse_from(argv).unwrap();
        let d = a.node_network_defaults();
        assert_eq!(d.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(
            d.ipam.subnet_tags.get("role").map(String::as_str),
            Some("pods")
        );
        assert_eq!(d.ipam.subnet_tags.len(), 2);
        assert!(parse_key_value("novalue").is_err());
    }

    #[cfg(feature = "sim")]
    #[test]
    fn sim_flags_default_to_a_seeded_realistic_ec2_vpc() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "sim";
        let a = Args::try_parse_from(argv).unwrap();
        assert_eq!(a.provider, CloudProvider::Sim);
        assert_eq!(Provider::from(a.provider), Provider::Aws);
        assert_eq!(a.sim.sim_seed, 1);
        assert_eq!(a.sim.sim_vpc_cidr.to_string(), "10.0.0.0/16");
        assert_eq!(a.sim.zones(&a.region), ["us-east-1a", "us-east-1b"]);
        assert_eq!(a.sim.sim_instance_type, "m5.large");
        assert_eq!(a.sim.sim_latency, SimLatency::Realistic);
        assert!(a.sim.sim_config().server_throttling);
        assert_eq!(a.rate_limits.limits(a.provider), RateLimits::aws());
        // The simulated VPC's id is everywhere the VPC is.
        assert_eq!(a.vpc().as_deref(), Some(DEFAULT_SIM_VPC));
        assert_eq!(
            a.node_network_defaults().vpc_id.as_deref(),
            Some(DEFAULT_SIM_VPC)
        );
        // Other providers have no VPC unless told.
        assert_eq!(Args::try_parse_from(REQUIRED).unwrap().vpc(), None);
    }

    #[cfg(feature = "sim")]
    #[test]
    fn sim_flags_override_the_defaults() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "sim";
        argv.extend([
            "--sim-seed",
            "42",
            "--sim-vpc-cidr",
            "172.31.0.0/20",
            "--sim-zones",
            "us-east-1c,us-east-1d,us-east-1f",
            "--sim-instance-type",
            "m5.4xlarge",
            "--sim-latency",
            "instant",
            "--vpc-id",
            "vpc-0abc",
        ]);
        let a = Args::try_parse_from(argv).unwrap();
        assert_eq!(a.sim.sim_seed, 42);
        assert_eq!(a.sim.sim_instance_type, "m5.4xlarge");
        assert_eq!(a.sim.sim_latency, SimLatency::Instant);
        assert!(!a.sim.sim_config().server_throttling);
        let vpc = a.sim.vpc_config(&a.region, &a.vpc().unwrap());
        assert_eq!(vpc.vpc_id, "vpc-0abc");
        assert_eq!(vpc.cidr.to_string(), "172.31.0.0/20");
        assert_eq!(vpc.zones, ["us-east-1c", "us-east-1d", "us-east-1f"]);
    }

    #[cfg(feature = "sim")]
    #[test]
    fn bad_sim_flags_are_rejected_when_parsed() {
        for (flag, value) in [
            ("--sim-vpc-cidr", "10.0.0.0/8"),
            ("--sim-vpc-cidr", "10.0.0.1/16"),
            ("--sim-vpc-cidr", "not-a-cidr"),
            ("--sim-instance-type", "t3.nano"),
            ("--sim-latency", "slow"),
            ("--sim-seed", "-1"),
        ] {
            let mut argv = REQUIRED.to_vec();
            argv[4] = "sim";
            argv.extend([flag, value]);
            let err = Args::try_parse_from(argv).unwrap_err().to_string();
            assert!(err.contains(value), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn unknown_provider_is_rejected() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "gcp";
        assert!(Args::try_parse_from(argv).is_err());
    }
}

/// Why `--pod-cidr-pool` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PodCidrArgError {
    /// The pool is only for bare metal.
    #[error("--pod-cidr-pool is for --provider static (cloud nodes take ENI addresses)")]
    NotStatic,
    /// The pool or mask is malformed.
    #[error(transparent)]
    Pool(#[from] PoolError),
}
