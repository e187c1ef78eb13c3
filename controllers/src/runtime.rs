//! The operator process: flags (with `SEXTANT_*` environment fallbacks), the
//! cloud behind its rate limits, metrics and health, leader election, and,
//! while leading, the controllers and the full resync.
//!
//! ```text
//!  Args ─▶ Cloud(AwsCloud | AlibabaCloud | sim::AutoRegister) ─▶ NodeIpam
//!    │                                         │
//!    ├─▶ http::serve (/metrics, /healthz)      │        (only while leading)
//!    └─▶ LeaderElector ──leading──▶ NodeNetwork controller ─┬─ Node controller (creates NodeNetworks)
//!                                                           ├─ FullResync (list VPCs, patch, GC)
//!                                                           ├─ FixedIP controller (with --vpc-id)
//!                                                           └─ policy status (SextantNetworkPolicy
//!                                                              Accepted condition, NetworkPolicy events)
//! ```
//!
//! Cloud credentials come only from the environment or the provider's
//! default chain, never from flags: AWS through the SDK's chain (IRSA, pod
//! identity, instance profile, `AWS_*`), Alibaba from
//! `ALIBABA_CLOUD_ACCESS_KEY_ID`, `ALIBABA_CLOUD_ACCESS_KEY_SECRET` and
//! optionally `ALIBABA_CLOUD_SECURITY_TOKEN`. `--provider sim` needs none:
//! its cloud is simulated in the operator ([`crate::sim`]).

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use futures::{StreamExt, future};
use kube::{
    Api, Client,
    runtime::{Controller, controller, watcher},
};
use prometheus_client::registry::Registry;
use sextant_cloud::{
    Backoff, Cloud, CloudConfig, CloudMetrics, EniCloud, RateLimit, RateLimits,
    alibaba::{AlibabaCloud, AlibabaConfig, ClientBuildError},
    aws::{AwsCloud, AwsConfig},
    sim::SetupError,
};
use sextant_crds::wellknown::FIELD_MANAGER_OPERATOR;
use sextant_crds::{IpamSpec, NodeNetwork, Provider};
use sextant_kit::{
    ErrorChain,
    admin::{self, Admin, Readiness},
    duration,
    lease::{LeaderElector, LeaderMetrics, LeaseConfig},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    controller::{self as nn_controller, Clock, Context, RequeuePolicy},
    fixed_ip::controller::{FixedIpController, watch as fixed_ip_watch},
    full_resync::{FullResync, FullResyncConfig, FullResyncMetrics},
    ipam::{
        gc::GcPolicy,
        node::{IpamConfig, NodeIpam},
        watermark::IpamDefaults,
    },
    metrics::{IpamMetrics, PolicyMetrics},
    node_watch::{self, NodeContext, NodeNetworkDefaults, NodeWatchMetrics},
    policy_status::{
        controller::{self as policy_controller, PolicyContext},
        identity_gc,
    },
    sim::{DEFAULT_SIM_VPC, NodeNetworkDirectory, SimArgs},
};

/// Environment variable with the Alibaba AccessKey id.
pub const ENV_ALIBABA_ACCESS_KEY_ID: &str = "ALIBABA_CLOUD_ACCESS_KEY_ID";
/// Environment variable with the Alibaba AccessKey secret.
pub const ENV_ALIBABA_ACCESS_KEY_SECRET: &str = "ALIBABA_CLOUD_ACCESS_KEY_SECRET";
/// Environment variable with an Alibaba STS token (optional).
pub const ENV_ALIBABA_SECURITY_TOKEN: &str = "ALIBABA_CLOUD_SECURITY_TOKEN";

/// The clouds the operator takes ENIs from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CloudProvider {
    /// AWS EC2.
    Aws,
    /// Alibaba Cloud ECS.
    Alibaba,
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
    /// simulated VPC is laid out and learns the nodes' instances: [`crate::sim`].
    Sim,
}

impl From<CloudProvider> for Provider {
    fn from(p: CloudProvider) -> Self {
        match p {
            CloudProvider::Aws | CloudProvider::Sim => Provider::Aws,
            CloudProvider::Alibaba => Provider::Alibaba,
        }
    }
}

/// Parses `key=value`.
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
        _ => Err(format!("{s:?} is not key=value")),
    }
}

/// Client-side rate-limit overrides, per action class; unset values keep the
/// provider's preset ([`RateLimits::aws`], also for `sim`, [`RateLimits::alibaba`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, clap::Args)]
pub struct RateLimitArgs {
    /// Describe/list calls per second.
    #[arg(long, env = "SEXTANT_DESCRIBE_QPS")]
    pub describe_qps: Option<f64>,
    /// Describe/list burst.
    #[arg(long, env = "SEXTANT_DESCRIBE_BURST")]
    pub describe_burst: Option<u32>,
    /// ENI create/delete and address assign/unassign calls per second (each).
    #[arg(long, env = "SEXTANT_MUTATE_ENI_QPS")]
    pub mutate_eni_qps: Option<f64>,
    /// ENI mutation burst.
    #[arg(long, env = "SEXTANT_MUTATE_ENI_BURST")]
    pub mutate_eni_burst: Option<u32>,
    /// Attach/detach calls per second.
    #[arg(long, env = "SEXTANT_MUTATE_OTHER_QPS")]
    pub mutate_other_qps: Option<f64>,
    /// Attach/detach burst.
    #[arg(long, env = "SEXTANT_MUTATE_OTHER_BURST")]
    pub mutate_other_burst: Option<u32>,
}

impl RateLimitArgs {
    /// The provider's preset with the overrides applied.
    pub fn limits(&self, provider: CloudProvider) -> RateLimits {
        let preset = match provider {
            CloudProvider::Aws | CloudProvider::Sim => RateLimits::aws(),
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
    pub cluster_name: String,
    /// Cloud provider.
    #[arg(long, env = "SEXTANT_PROVIDER", value_enum)]
    pub provider: CloudProvider,
    /// Cloud region (`us-east-1`, `cn-hangzhou`).
    #[arg(long, env = "SEXTANT_REGION")]
    pub region: String,
    /// Cloud API endpoint override (a VPC endpoint, a test server).
    #[arg(long, env = "SEXTANT_ENDPOINT")]
    pub endpoint: Option<String>,
    /// VPC written into new NodeNetworks and listed by every full resync;
    /// with `--provider sim`, the simulated VPC's id (default `vpc-sim`).
    #[arg(long, env = "SEXTANT_VPC_ID")]
    pub vpc_id: Option<String>,
    /// Subnet tags (`k=v`, comma-separated) written into new NodeNetworks.
    #[arg(long, env = "SEXTANT_SUBNET_TAGS", value_delimiter = ',', value_parser = parse_key_value)]
    pub subnet_tags: Vec<(String, String)>,
    /// Security-group tags (`k=v`, comma-separated) written into new NodeNetworks.
    #[arg(long, env = "SEXTANT_SECURITY_GROUP_TAGS", value_delimiter = ',', value_parser = parse_key_value)]
    pub security_group_tags: Vec<(String, String)>,
    /// Free IPs every node keeps ready, unless its NodeNetwork says otherwise.
    #[arg(long, env = "SEXTANT_PRE_ALLOCATE", default_value_t = sextant_crds::DEFAULT_PRE_ALLOCATE)]
    pub pre_allocate: u32,
    /// IPs every node holds at least.
    #[arg(long, env = "SEXTANT_MIN_ALLOCATE", default_value_t = 0)]
    pub min_allocate: u32,
    /// IPs a node holds at most; 0 is the instance's limit.
    #[arg(long, env = "SEXTANT_MAX_ALLOCATE", default_value_t = 0)]
    pub max_allocate: u32,
    /// Free IPs tolerated above pre-allocate before releasing.
    #[arg(long, env = "SEXTANT_MAX_ABOVE_WATERMARK", default_value_t = 0)]
    pub max_above_watermark: u32,
    /// Time between full resyncs (one paged listing per VPC).
    #[arg(long, env = "SEXTANT_FULL_RESYNC_INTERVAL", default_value = "5m", value_parser = duration::parse)]
    pub full_resync_interval: Duration,
    /// How long a leaked ENI stays unattached before it is deleted.
    #[arg(long, env = "SEXTANT_GC_GRACE", default_value = "5m", value_parser = duration::parse)]
    pub gc_grace: Duration,
    /// Most leaked ENIs deleted per full resync.
    #[arg(long, env = "SEXTANT_GC_BATCH", default_value_t = 20)]
    pub gc_batch: usize,
    /// Client-side cloud API rate limits.
    #[command(flatten)]
    pub rate_limits: RateLimitArgs,
    /// NodeNetworks reconciled at once.
    #[arg(long, env = "SEXTANT_RECONCILE_CONCURRENCY", default_value_t = 64)]
    pub reconcile_concurrency: u16,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "SEXTANT_LISTEN_ADDR", default_value = "0.0.0.0:9090")]
    pub listen_addr: SocketAddr,
    /// Namespace of the leader Lease.
    #[arg(long, env = "SEXTANT_LEASE_NAMESPACE", default_value = "kube-system")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, env = "SEXTANT_LEASE_NAME", default_value = "sextant-operator")]
    pub lease_name: String,
    /// How long the Lease stays valid without renewal.
    #[arg(long, env = "SEXTANT_LEASE_DURATION", default_value = "15s", value_parser = duration::parse)]
    pub lease_duration: Duration,
    /// This replica's identity in the Lease; defaults to `$HOSTNAME` (the pod name).
    #[arg(long, env = "SEXTANT_POD_NAME")]
    pub identity: Option<String>,
    /// The simulated cloud of `--provider sim` (last: its help heading
    /// applies to every flag after it).
    #[command(flatten, next_help_heading = "Simulated cloud (--provider sim)")]
    pub sim: SimArgs,
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration (in-cluster or kubeconfig).
    #[error("configuring the Kubernetes client")]
    Kube(#[source] kube::Error),
    /// An Alibaba credential is missing from the environment.
    #[error("Alibaba Cloud credentials: {0} is not set")]
    MissingCredential(&'static str),
    /// The ECS HTTP client could not be built.
    #[error("building the ECS client")]
    AlibabaClient(#[source] ClientBuildError),
    /// The simulated VPC of `--provider sim` cannot be laid out.
    #[error("setting up the simulated cloud")]
    Sim(#[source] SetupError),
    /// The metrics address cannot be bound.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("installing signal handlers")]
    Signal(#[source] std::io::Error),
}

/// Alibaba settings from the region, endpoint and the credential variables
/// `env` reads.
pub fn alibaba_config(
    region: &str,
    endpoint: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AlibabaConfig, RunError> {
    let get = |name: &'static str| {
        env(name)
            .filter(|v| !v.is_empty())
            .ok_or(RunError::MissingCredential(name))
    };
    let mut config = AlibabaConfig::new(
        region,
        get(ENV_ALIBABA_ACCESS_KEY_ID)?,
        get(ENV_ALIBABA_ACCESS_KEY_SECRET)?,
    );
    if let Ok(token) = get(ENV_ALIBABA_SECURITY_TOKEN) {
        config = config.with_security_token(token);
    }
    if let Some(e) = endpoint {
        config = config.with_endpoint(e);
    }
    Ok(config)
}

impl Args {
    /// The VPC: `--vpc-id`, or with `--provider sim` the simulated VPC's
    /// default id.
    pub fn vpc(&self) -> Option<String> {
        match (&self.vpc_id, self.provider) {
            (Some(v), _) => Some(v.clone()),
            (None, CloudProvider::Sim) => Some(DEFAULT_SIM_VPC.to_owned()),
            (None, _) => None,
        }
    }

    /// Operator-wide IPAM defaults.
    pub fn ipam_defaults(&self) -> IpamDefaults {
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

    /// Garbage collection settings.
    pub fn gc_policy(&self) -> GcPolicy {
        GcPolicy {
            grace: self.gc_grace,
            per_round: self.gc_batch,
        }
    }

    /// The Lease settings; the identity falls back to `$HOSTNAME`, then to a
    /// random name.
    pub fn lease_config(&self) -> LeaseConfig {
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

    /// The provider, raw. `nodes` tells the simulated cloud about the
    /// instances it launches on first sight; the real clouds ignore it.
    async fn provider_cloud(
        &self,
        nodes: &NodeNetworkDirectory,
    ) -> Result<Arc<dyn EniCloud>, RunError> {
        Ok(match self.provider {
            CloudProvider::Aws => {
                let mut config = AwsConfig::new(&self.region);
                config.endpoint_url = self.endpoint.clone();
                Arc::new(AwsCloud::new(config).await)
            }
            CloudProvider::Alibaba => {
                let config = alibaba_config(&self.region, self.endpoint.as_deref(), |n| {
                    std::env::var(n).ok()
                })?;
                Arc::new(AlibabaCloud::new(config).map_err(RunError::AlibabaClient)?)
            }
            CloudProvider::Sim => {
                let vpc = self.vpc().unwrap_or_else(|| DEFAULT_SIM_VPC.to_owned());
                let sim = self
                    .sim
                    .build(&self.region, &vpc, Arc::new(nodes.clone()))
                    .map_err(RunError::Sim)?;
                info!(
                    vpc = %sim.vpc().vpc_id,
                    cidr = %self.sim.sim_vpc_cidr,
                    zones = %sim.vpc().zone_list(),
                    seed = self.sim.sim_seed,
                    latency = ?self.sim.sim_latency,
                    "simulated cloud"
                );
                Arc::new(sim)
            }
        })
    }

    /// The cloud the operator works against: the provider behind
    /// deadlines, client-side rate limits, retries and metrics (one code
    /// path for every provider, the simulated one included).
    pub async fn cloud(
        &self,
        metrics: CloudMetrics,
        nodes: &NodeNetworkDirectory,
    ) -> Result<Arc<dyn EniCloud>, RunError> {
        Ok(Arc::new(Cloud::new(
            self.provider_cloud(nodes).await?,
            CloudConfig {
                limits: self.rate_limits.limits(self.provider),
                // A simulated run replays with its seed, retries included.
                seed: (self.provider == CloudProvider::Sim).then_some(self.sim.sim_seed),
                ..CloudConfig::default()
            },
            metrics,
        )))
    }

    /// Node IPAM over `cloud` with the flags' cluster name and watermarks.
    pub fn node_ipam(&self, cloud: Arc<dyn EniCloud>, metrics: IpamMetrics) -> NodeIpam {
        NodeIpam::new(
            cloud,
            IpamConfig {
                cluster: self.cluster_name.clone(),
                defaults: self.ipam_defaults(),
                ..IpamConfig::default()
            },
            metrics,
        )
    }

    /// Runs the operator until SIGTERM or Ctrl-C.
    pub async fn run(self) -> Result<(), RunError> {
        let client = Client::try_default().await.map_err(RunError::Kube)?;
        let clock: Clock = Arc::new(jiff::Timestamp::now);

        let cloud_metrics = CloudMetrics::default();
        let ipam_metrics = IpamMetrics::default();
        let resync_metrics = FullResyncMetrics::default();
        let leader_metrics = LeaderMetrics::default();
        let node_metrics = NodeWatchMetrics::default();
        let fixed_ip_metrics = crate::metrics::FixedIpMetrics::default();
        let policy_metrics = PolicyMetrics::default();
        let mut registry = Registry::default();
        {
            let op = registry.sub_registry_with_prefix("sextant_operator");
            ipam_metrics.register(op);
            resync_metrics.register(op);
            leader_metrics.register(op);
            node_metrics.register(op);
            fixed_ip_metrics.register(op);
            policy_metrics.register(op);
        }
        cloud_metrics.register(registry.sub_registry_with_prefix("sextant_cloud"));

        let nodes = NodeNetworkDirectory::default();
        let cloud = self.cloud(cloud_metrics, &nodes).await?;
        let ipam = Arc::new(self.node_ipam(cloud.clone(), ipam_metrics));

        let listener = tokio::net::TcpListener::bind(self.listen_addr)
            .await
            .map_err(|source| RunError::Listen {
                addr: self.listen_addr,
                source,
            })?;
        // Ready from the start: a standby replica serves too (it waits for the
        // Lease), and readiness gates no traffic to the operator.
        let http = tokio::spawn(admin::serve(
            listener,
            Admin::new(Arc::new(registry), Readiness::ready()),
        ));

        let elector = Arc::new(LeaderElector::new(
            client.clone(),
            self.lease_config(),
            clock.clone(),
            leader_metrics,
        ));
        let (leading_tx, mut leading) = watch::channel(false);
        let election = tokio::spawn({
            let elector = elector.clone();
            async move { elector.run(leading_tx).await }
        });

        let fixed_ips = self.vpc().map(|vpc| {
            (
                Arc::new(
                    FixedIpController::new(client.clone(), cloud.clone(), &self.cluster_name, &vpc)
                        .with_metrics(fixed_ip_metrics.clone()),
                ),
                cloud.clone(),
                vpc,
            )
        });
        if fixed_ips.is_none() {
            warn!("no --vpc-id: fixed IPs for StatefulSets are off");
        }
        let shared = Leading {
            fixed_ips,
            policies: Arc::new(PolicyContext::new(
                client.clone(),
                policy_metrics,
                clock.clone(),
            )),
            client: client.clone(),
            ctx: Arc::new(Context::new(client.clone(), ipam, RequeuePolicy::default())),
            provider: self.provider.into(),
            node_defaults: self.node_network_defaults(),
            nodes,
            concurrency: self.reconcile_concurrency,
            node_metrics,
            resync: Arc::new(FullResync::new(
                client,
                cloud,
                FullResyncConfig {
                    interval: self.full_resync_interval,
                    cluster: self.cluster_name.clone(),
                    gc: self.gc_policy(),
                    vpcs: self.vpc().into_iter().collect(),
                },
                clock,
                resync_metrics,
            )),
        };

        let mut shutdown =
            std::pin::pin!(sextant_kit::shutdown::signal().map_err(RunError::Signal)?);
        info!(identity = %elector.config().identity, "waiting for the leader lease");
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = leading.wait_for(|l| *l) => if r.is_err() { break },
            }
            info!("leading: starting controllers");
            tokio::select! {
                _ = &mut shutdown => break,
                _ = leading.wait_for(|l| !*l) => warn!("lost the lease: controllers stopped"),
                () = shared.run() => warn!("controllers ended"),
            }
        }
        info!("shutting down");
        election.abort();
        http.abort();
        if let Err(e) = elector.release().await {
            warn!(error = %ErrorChain(&e), "releasing the lease failed");
        }
        Ok(())
    }
}

/// What runs while this replica leads.
struct Leading {
    /// The FixedIP controller, its cloud and VPC, when a VPC is configured.
    fixed_ips: Option<(Arc<FixedIpController>, Arc<dyn EniCloud>, String)>,
    /// The policy status controllers' context.
    policies: Arc<PolicyContext>,
    client: Client,
    ctx: Arc<Context>,
    provider: Provider,
    node_defaults: NodeNetworkDefaults,
    /// Handed the NodeNetwork cache, for the simulated cloud.
    nodes: NodeNetworkDirectory,
    concurrency: u16,
    resync: Arc<FullResync>,
    node_metrics: NodeWatchMetrics,
}

impl Leading {
    /// The NodeNetwork controller, the node watch (once the NodeNetwork
    /// cache is filled, so existing NodeNetworks cost no create call), the
    /// full resync, the FixedIP controller and the policy status
    /// controllers. Ends only if the watches end.
    async fn run(&self) {
        let nn_api: Api<NodeNetwork> = Api::all(self.client.clone());
        let controller = Controller::new(nn_api, watcher::Config::default())
            .with_config(controller::Config::default().concurrency(self.concurrency));
        let nn_store = controller.store();
        self.nodes.set(nn_store.clone());
        let node_networks = controller
            .run(
                nn_controller::reconcile,
                nn_controller::error_policy,
                self.ctx.clone(),
            )
            .for_each(|r| {
                match r {
                    Ok((obj, _)) => debug!(node = %obj.name, "reconciled"),
                    Err(e) => debug!(error = %ErrorChain(&e), "NodeNetwork controller"),
                }
                future::ready(())
            });

        let nodes = node_watch::watch_nodes(
            Arc::new(NodeContext {
                client: self.client.clone(),
                provider: self.provider,
                defaults: self.node_defaults.clone(),
                node_networks: nn_store.clone(),
                retry: Backoff::default(),
                metrics: self.node_metrics.clone(),
            }),
            16,
        );
        let resync = self.resync.run(nn_store);
        let fixed_ips = async {
            match &self.fixed_ips {
                Some((ctl, cloud, vpc)) => {
                    fixed_ip_watch::run(ctl.clone(), cloud.clone(), vpc.clone(), FIXED_IP_TICK)
                        .await
                }
                None => std::future::pending().await,
            }
        };
        let policies = policy_controller::run(self.policies.clone(), self.concurrency);
        let identities = identity_gc::run(
            self.client.clone(),
            IDENTITY_GC_EVERY,
            IDENTITY_GC_GRACE,
            self.policies.metrics().identities_deleted(),
        );
        tokio::join!(
            node_networks,
            nodes,
            resync,
            fixed_ips,
            policies,
            identities
        );
    }
}

/// How often unused SextantIdentities are swept (each sweep lists pods).
const IDENTITY_GC_EVERY: Duration = Duration::from_secs(1800);
/// How old an unused SextantIdentity must be before it goes.
const IDENTITY_GC_GRACE: Duration = Duration::from_secs(900);

/// How often every fixed-IP StatefulSet is looked at without an event
/// (retention TTLs expire on their own).
const FIXED_IP_TICK: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::SimLatency;
    use clap::{CommandFactory, Parser};

    const REQUIRED: [&str; 7] = [
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

    #[tokio::test]
    async fn a_sim_vpc_too_small_for_its_zones_fails_at_startup() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "sim";
        argv.extend(["--sim-vpc-cidr", "10.0.0.0/28"]);
        let a = Args::try_parse_from(argv).unwrap();
        let err = a
            .cloud(CloudMetrics::default(), &NodeNetworkDirectory::default())
            .await
            .err()
            .expect("two zones do not fit a /28");
        assert!(
            ErrorChain(&err).to_string().contains("10.0.0.0/28"),
            "{}",
            ErrorChain(&err)
        );
    }

    #[test]
    fn unknown_provider_is_rejected() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "gcp";
        assert!(Args::try_parse_from(argv).is_err());
    }

    #[test]
    fn alibaba_credentials_come_from_the_environment() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        let c = alibaba_config(
            "cn-hangzhou",
            Some("http://127.0.0.1:1"),
            env(&[
                (ENV_ALIBABA_ACCESS_KEY_ID, "LTAI"),
                (ENV_ALIBABA_ACCESS_KEY_SECRET, "s3cr3t"),
                (ENV_ALIBABA_SECURITY_TOKEN, "sts"),
            ]),
        )
        .unwrap();
        assert_eq!(c.access_key_id, "LTAI");
        assert_eq!(c.security_token.as_deref(), Some("sts"));
        assert_eq!(c.endpoint(), "http://127.0.0.1:1");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let missing = alibaba_config(
            "cn-hangzhou",
            None,
            env(&[(ENV_ALIBABA_ACCESS_KEY_ID, "x")]),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Alibaba Cloud credentials: ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"
        );
    }
}
