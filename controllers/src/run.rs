//! The operator process: flags (with `SEXTANT_*` environment fallbacks), the
//! cloud behind its rate limits, metrics and health, leader election, and,
//! while leading, the controllers and the full resync.
//!
//! ```text
//!  Args ─▶ Cloud(AwsCloud | AlibabaCloud | sim::AutoRegister) ─▶ NodeIpam
//!    │                                         │
//!    ├─▶ kit admin::serve (/metrics /healthz)  │        (only while leading)
//!    └─▶ kit LeaderElector ──leading──▶ NodeNetwork controller ─┬─ Node controller (creates NodeNetworks)
//!                                                           ├─ FullResync (list VPCs, patch, GC)
//!                                                           ├─ FixedIP controller (with --vpc-id)
//!                                                           └─ policy status (SextantNetworkPolicy
//!                                                              Accepted condition, NetworkPolicy events)
//! ```
//!
//! Cloud credentials come only from the environment or the provider's
//! default chain, never from flags, and are checked and logged at start:
//! AWS through the SDK's chain (IRSA's `AWS_ROLE_ARN` and
//! `AWS_WEB_IDENTITY_TOKEN_FILE`, pod identity, instance profile, `AWS_*`
//! keys), Alibaba from a static AccessKey (`ALIBABA_CLOUD_ACCESS_KEY_ID`,
//! `ALIBABA_CLOUD_ACCESS_KEY_SECRET`, optionally
//! `ALIBABA_CLOUD_SECURITY_TOKEN`) or RRSA (`ALIBABA_CLOUD_ROLE_ARN`,
//! `ALIBABA_CLOUD_OIDC_PROVIDER_ARN`, `ALIBABA_CLOUD_OIDC_TOKEN_FILE`; see
//! `sextant_cloud::alibaba::Credentials`). `--provider sim` needs none:
//! its cloud is simulated in the operator (the `sim` module, in builds with
//! the cargo feature `sim`; without it `--provider sim` is refused).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use futures::{StreamExt, future};
use kube::{
    Api, Client,
    runtime::{Controller, controller, watcher},
};
use prometheus_client::registry::Registry;
use sextant_cloud::{
    Backoff, Cloud, CloudConfig, CloudMetrics, CredentialsError, EniCloud,
    alibaba::{AlibabaCloud, AlibabaConfig, ClientBuildError},
    aws::{AwsCloud, AwsConfig},
};
use sextant_crds::{NodeNetwork, Provider};
use sextant_kit::{
    ErrorChain,
    admin::{self, Admin, Readiness},
    lease::{LeaderElector, LeaderMetrics},
};
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[cfg(feature = "sim")]
use crate::sim::DEFAULT_SIM_VPC;
use crate::{
    apiserver::Clock,
    args::{Args, CloudProvider},
    fixed_ip::controller::{FixedIpController, watch as fixed_ip_watch},
    ipam::metrics::IpamMetrics,
    ipam::node::{IpamConfig, NodeIpam},
    metrics::PolicyMetrics,
    node_network::{
        controller::{self as nn_controller, Context, RequeuePolicy},
        directory::NodeNetworkDirectory,
        full_resync::{FullResync, FullResyncConfig, FullResyncMetrics},
        node_watch::{self, NodeContext, NodeNetworkDefaults, NodeWatchMetrics, PodCidrAllocator},
    },
    policy_status::{
        controller::{self as policy_controller, PolicyContext},
        identity_gc,
    },
};

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client configuration (in-cluster or kubeconfig).
    #[error("configuring the Kubernetes client")]
    Kube(#[source] kube::Error),
    /// `--pod-cidr-pool` cannot be used.
    #[error(transparent)]
    PodCidr(#[from] crate::args::PodCidrArgError),
    /// The cloud's credentials are missing or cannot work (a variable not
    /// set, a token file that cannot be read).
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The ECS HTTP client could not be built.
    #[error("building the ECS client")]
    AlibabaClient(#[source] ClientBuildError),
    /// The simulated VPC of `--provider sim` cannot be laid out.
    #[cfg(feature = "sim")]
    #[error("setting up the simulated cloud")]
    Sim(#[source] sextant_cloud::sim::SetupError),
    /// `--provider sim` given to a binary built without the cargo feature
    /// `sim` (the image).
    #[error(
        "--provider sim: this binary was built without the simulated cloud \
         (cargo feature `sim`); use a development build"
    )]
    SimNotBuilt,
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
/// `env` reads (a static AccessKey or RRSA).
pub(crate) fn alibaba_config(
    region: &str,
    endpoint: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<AlibabaConfig, RunError> {
    let mut config = AlibabaConfig::from_env(region, env)?;
    if let Some(e) = endpoint {
        config = config.with_endpoint(e);
    }
    Ok(config)
}

impl Args {
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
                Arc::new(AwsCloud::new(config).await?)
            }
            CloudProvider::Alibaba => {
                let config = alibaba_config(&self.region, self.endpoint.as_deref(), |n| {
                    std::env::var(n).ok()
                })?;
                Arc::new(AlibabaCloud::new(config).map_err(RunError::AlibabaClient)?)
            }
            CloudProvider::Static => Arc::new(crate::bare_metal::NoCloud),
            #[cfg(not(feature = "sim"))]
            CloudProvider::Sim => {
                let _ = nodes;
                return Err(RunError::SimNotBuilt);
            }
            #[cfg(feature = "sim")]
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
        let provider = self.provider_cloud(nodes).await?;
        // A simulated run replays with its seed, retries included.
        #[cfg(feature = "sim")]
        let seed = (self.provider == CloudProvider::Sim).then_some(self.sim.sim_seed);
        #[cfg(not(feature = "sim"))]
        let seed = None;
        Ok(Arc::new(Cloud::new(
            provider,
            CloudConfig {
                limits: self.rate_limits.limits(self.provider),
                seed,
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
        let pod_cidrs = self.pod_cidr_allocator()?;
        let client = sextant_kit::client::client()
            .await
            .map_err(RunError::Kube)?;
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
        let attaching = ipam.attaching().clone();

        let listener = tokio::net::TcpListener::bind(self.listen_addr)
            .await
            .map_err(|source| RunError::Listen {
                addr: self.listen_addr,
                source,
            })?;
        // Ready once a Lease round reached the API server, leading or
        // standing by; not ready, with the reason, while rounds fail.
        let readiness = Readiness::not_ready();
        readiness.set_not_ready("no Lease round has reached the API server yet");
        let http = tokio::spawn(admin::serve(
            listener,
            Admin::new(Arc::new(registry), readiness.clone()),
        ));

        let elector = Arc::new(
            LeaderElector::new(
                client.clone(),
                self.lease_config(),
                clock.clone(),
                leader_metrics,
            )
            .with_readiness(readiness),
        );
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
            pod_cidrs,
            resync: Arc::new(
                FullResync::new(
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
                )
                .with_attaching(attaching),
            ),
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
    /// Bare metal: Sextant's pod CIDR pool, when `--pod-cidr-pool` is set.
    pod_cidrs: Option<Arc<PodCidrAllocator>>,
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
                pod_cidrs: self.pod_cidrs.clone(),
            }),
            16,
        );
        let pruned = nn_controller::prune(self.ctx.clone(), nn_store.clone());
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
            pruned,
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
    use crate::args::tests::REQUIRED;
    use clap::Parser;
    use sextant_cloud::alibaba;

    #[cfg(feature = "sim")]
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

    #[cfg(not(feature = "sim"))]
    #[tokio::test]
    async fn without_the_feature_the_sim_provider_is_refused() {
        let mut argv = REQUIRED.to_vec();
        argv[4] = "sim";
        let a = Args::try_parse_from(argv).expect("`sim` still parses");
        let err = a
            .cloud(CloudMetrics::default(), &NodeNetworkDirectory::default())
            .await
            .err()
            .expect("no simulated cloud in this build");
        assert!(matches!(err, RunError::SimNotBuilt), "{err:?}");
        assert!(
            err.to_string()
                .contains("built without the simulated cloud"),
            "{err}"
        );
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
                (alibaba::ENV_ACCESS_KEY_ID, "LTAI"),
                (alibaba::ENV_ACCESS_KEY_SECRET, "s3cr3t"),
                (alibaba::ENV_SECURITY_TOKEN, "sts"),
            ]),
        )
        .unwrap();
        assert!(
            matches!(&c.credentials, alibaba::Credentials::Static { access_key_id, security_token, .. }
                if access_key_id == "LTAI" && security_token.as_deref() == Some("sts")),
            "{c:?}"
        );
        assert_eq!(c.endpoint(), "http://127.0.0.1:1");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let missing = alibaba_config(
            "cn-hangzhou",
            None,
            env(&[(alibaba::ENV_ACCESS_KEY_ID, "x")]),
        )
        .unwrap_err();
        assert_eq!(
            missing.to_string(),
            "Alibaba Cloud credentials: ALIBABA_CLOUD_ACCESS_KEY_SECRET is not set"
        );
    }
}
