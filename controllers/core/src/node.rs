//! One node's reconcile, without Kubernetes: observe (cached VPC facts, the
//! status, a scoped describe when needed), plan, execute, and the status to
//! write. The operator's kube shell and `sextantctl simulate` both call it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use sextant_cloud::{EniCloud, InstanceLimits, SecurityGroup, Subnet};
use sextant_crds::{
    NodeNetwork, NodeNetworkStatus, Provider, ReleaseState, condition, set_condition,
};
use sextant_kit::sync::lock;
use tokio::time::Instant;
use tracing::debug;

use super::{
    execute::{Target, execute},
    gc::Attaching,
    plan::{Plan, PlanInput, ReleasedBound, Step, instance_capacity, plan, pod_cidr_capacity},
    resync::{
        InstanceResync, InstanceScoped, apply_enis, eni_statuses, refresh_summary, set_capacity,
    },
    watermark::{IpamDefaults, Watermarks},
};
use crate::{
    Error,
    metrics::{IpamMetrics, ReconcileTimer},
};

/// Settings of node IPAM.
#[derive(Clone, Debug)]
pub struct IpamConfig {
    /// Cluster name, tagged on every ENI.
    pub cluster: String,
    /// Defaults for knobs a node leaves unset.
    pub defaults: IpamDefaults,
    /// How long subnet and security-group facts of a VPC are reused.
    pub vpc_cache_ttl: Duration,
    /// Requeue while a pool is still filling.
    pub requeue_busy: Duration,
    /// Requeue when a limit blocks the pool.
    pub requeue_blocked: Duration,
    /// Requeue when all is well (events trigger earlier reconciles).
    pub requeue_idle: Duration,
    /// How long and how many `released` handshake entries of addresses gone
    /// from a node may wait for its agent before the operator drops them.
    pub released_bound: ReleasedBound,
}

impl Default for IpamConfig {
    fn default() -> Self {
        IpamConfig {
            cluster: "default".into(),
            defaults: IpamDefaults::default(),
            vpc_cache_ttl: Duration::from_secs(60),
            requeue_busy: Duration::from_secs(1),
            requeue_blocked: Duration::from_secs(60),
            requeue_idle: Duration::from_secs(300),
            released_bound: ReleasedBound::default(),
        }
    }
}

#[derive(Clone)]
struct VpcFacts {
    subnets: Arc<Vec<Subnet>>,
    security_groups: Arc<Vec<SecurityGroup>>,
    fetched: Instant,
}

/// Shared state of node IPAM: the cloud, caches and metrics.
pub struct NodeIpam {
    cloud: Arc<dyn EniCloud>,
    resync: Arc<dyn InstanceResync>,
    config: IpamConfig,
    limits: Mutex<HashMap<String, InstanceLimits>>,
    vpcs: Mutex<HashMap<String, VpcFacts>>,
    instance_vpc: Mutex<HashMap<String, String>>,
    /// Per node: when each `released` entry of an address gone from the
    /// node was first seen (the CRD keeps no time; after a restart the
    /// bound starts over, which only delays the drop).
    released_since: Mutex<HashMap<String, BTreeMap<String, Timestamp>>>,
    attaching: Attaching,
    metrics: IpamMetrics,
}

/// The result of one reconcile.
#[derive(Debug)]
pub struct Reconciled {
    /// The status to write (operator-owned fields; see [`crate::status_patch`]).
    pub status: NodeNetworkStatus,
    /// The plan that was made.
    pub plan: Plan,
    /// Kinds of the cloud steps done.
    pub done: Vec<&'static str>,
    /// When to look again.
    pub requeue_after: Duration,
    /// A cloud error met while executing; the status above is still worth writing.
    pub error: Option<Error>,
}

/// A node's plan, decided and not yet carried out ([`NodeIpam::decide`]).
pub struct Decision {
    status: NodeNetworkStatus,
    plan: Plan,
    next: Option<Next>,
    _timer: ReconcileTimer,
}

/// What carrying a decision out needs besides its status and plan.
struct Next {
    name: String,
    instance_id: String,
    vpc_id: String,
    exclude: BTreeMap<String, String>,
    first: u32,
    generation: Option<i64>,
    watermarks: Watermarks,
    limits: InstanceLimits,
}

impl Decision {
    /// The status as decided: handshake changes, and the addresses to
    /// unassign marked `released` and out of the pool.
    pub fn status(&self) -> &NodeNetworkStatus {
        &self.status
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Whether the plan unassigns addresses: then [`Decision::status`] is
    /// to be written (guarded by the read's resourceVersion) before
    /// [`NodeIpam::carry_out`].
    pub fn records_unassigns(&self) -> bool {
        self.plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::UnassignIps { .. }))
    }

    /// Counts this decision as refused by a conflict: nothing was done.
    pub fn refused(self, metrics: &IpamMetrics) {
        metrics.decision_refused();
    }
}

impl NodeIpam {
    /// Node IPAM over `cloud`, resyncing instances with scoped describes.
    pub fn new(cloud: Arc<dyn EniCloud>, config: IpamConfig, metrics: IpamMetrics) -> Self {
        Self::with_resync(cloud, Arc::new(InstanceScoped), config, metrics)
    }

    /// Node IPAM with another resync strategy (the simulator's baselines).
    pub fn with_resync(
        cloud: Arc<dyn EniCloud>,
        resync: Arc<dyn InstanceResync>,
        config: IpamConfig,
        metrics: IpamMetrics,
    ) -> Self {
        NodeIpam {
            cloud,
            resync,
            config,
            limits: Mutex::default(),
            vpcs: Mutex::default(),
            instance_vpc: Mutex::default(),
            released_since: Mutex::default(),
            attaching: Attaching::default(),
            metrics,
        }
    }

    /// ENIs this node IPAM created and is still attaching: hand it to the
    /// ENI collector ([`crate::gc::GcState::plan`]), which must not take them.
    pub fn attaching(&self) -> &Attaching {
        &self.attaching
    }

    /// Settings.
    pub fn config(&self) -> &IpamConfig {
        &self.config
    }

    /// The cloud this works against.
    pub fn cloud(&self) -> &Arc<dyn EniCloud> {
        &self.cloud
    }

    /// Metrics.
    pub fn metrics(&self) -> &IpamMetrics {
        &self.metrics
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits, Error> {
        if let Some(l) = lock(&self.limits).get(instance_type) {
            return Ok(l.clone());
        }
        let l = self.cloud.instance_limits(instance_type).await?;
        lock(&self.limits).insert(instance_type.to_owned(), l.clone());
        Ok(l)
    }

    async fn vpc_facts(&self, vpc_id: &str) -> Result<VpcFacts, Error> {
        if let Some(f) = lock(&self.vpcs).get(vpc_id)
            && f.fetched.elapsed() < self.config.vpc_cache_ttl
        {
            return Ok(f.clone());
        }
        let subnets = self.cloud.subnets(vpc_id).await?;
        let security_groups = self.cloud.security_groups(vpc_id).await?;
        let f = VpcFacts {
            subnets: Arc::new(subnets),
            security_groups: Arc::new(security_groups),
            fetched: Instant::now(),
        };
        lock(&self.vpcs).insert(vpc_id.to_owned(), f.clone());
        Ok(f)
    }

    /// Records when each `released` entry of an address gone from `node`'s
    /// pool was first seen, forgetting entries that went; returns the times.
    fn note_released(
        &self,
        node: &str,
        status: &NodeNetworkStatus,
        now: Timestamp,
    ) -> BTreeMap<String, Timestamp> {
        let mut all = lock(&self.released_since);
        let seen = all.entry(node.to_owned()).or_default();
        seen.retain(|ip, _| {
            status.release.get(ip) == Some(&sextant_crds::ReleaseState::Released)
                && !status.pool.contains_key(ip)
        });
        for (ip, state) in &status.release {
            if *state == sextant_crds::ReleaseState::Released && !status.pool.contains_key(ip) {
                seen.entry(ip.clone()).or_insert(now);
            }
        }
        let out = seen.clone();
        if seen.is_empty() {
            all.remove(node);
        }
        out
    }

    /// Forgets what is kept about a deleted node.
    pub fn forget(&self, node: &str) {
        lock(&self.released_since).remove(node);
        self.metrics.forget(node);
    }

    /// Forgets what is kept about every node and instance no longer present:
    /// the operator calls it with its NodeNetwork cache, since deletions do
    /// not reach the reconciler.
    pub fn retain(
        &self,
        node_present: impl Fn(&str) -> bool,
        instance_present: impl Fn(&str) -> bool,
    ) {
        lock(&self.released_since).retain(|n, _| node_present(n));
        lock(&self.instance_vpc).retain(|i, _| instance_present(i));
        self.metrics.retain(node_present);
    }

    /// How many nodes and instances per-object state is kept for:
    /// `(released_since, instance_vpc, pool series)`.
    pub fn kept(&self) -> (usize, usize, usize) {
        (
            lock(&self.released_since).len(),
            lock(&self.instance_vpc).len(),
            self.metrics.pool_nodes(),
        )
    }

    /// Forgets cached subnet facts of a VPC (after the cloud said a subnet is full).
    pub fn invalidate_vpc(&self, vpc_id: &str) {
        lock(&self.vpcs).remove(vpc_id);
    }

    /// Reconciles one node: [`NodeIpam::decide`], then at once
    /// [`NodeIpam::carry_out`], for callers whose NodeNetwork is never
    /// stale (the simulator's store). Errors before any mutation are
    /// returned as `Err`; errors while executing come back in
    /// [`Reconciled::error`] with the status that still has to be written.
    pub async fn reconcile(&self, nn: &NodeNetwork, now: Timestamp) -> Result<Reconciled, Error> {
        let decision = self.decide(nn, now).await?;
        Ok(self.carry_out(decision, now).await)
    }

    /// Observes and plans one node without any cloud mutation. When the
    /// plan unassigns addresses the decision must be recorded first
    /// ([`Decision::records_unassigns`]): its status marks them `released`
    /// and takes them out of the pool, and the shell writes it guarded by
    /// the resourceVersion of the read, so an unassign decided on a stale
    /// read is refused (409) before the cloud is touched.
    pub async fn decide(&self, nn: &NodeNetwork, now: Timestamp) -> Result<Decision, Error> {
        let timer = self.metrics.reconcile_timer();
        let name = nn.metadata.name.as_deref().unwrap_or_default();
        let spec = &nn.spec;
        let generation = nn.metadata.generation;
        let mut status = nn.status.clone().unwrap_or_default();

        if let Err(e) = spec.validate() {
            set_condition(
                &mut status.conditions,
                condition(
                    "SpecValid",
                    false,
                    "InvalidSpec",
                    e.to_string(),
                    generation,
                    now,
                ),
            );
            return Err(Error::InvalidSpec {
                node: name.to_owned(),
                source: e,
                status: Box::new(status),
            });
        }
        set_condition(
            &mut status.conditions,
            condition("SpecValid", true, "Valid", "", generation, now),
        );
        if spec.provider == Provider::Static {
            // Bare metal: the pool is the pod CIDRs; nothing to ask a cloud.
            status.observed_generation = generation;
            refresh_summary(&mut status);
            set_capacity(&mut status, pod_cidr_capacity(&spec.pod_cidrs), 0, 0);
            return Ok(Decision {
                status,
                plan: Plan::default(),
                next: None,
                _timer: timer,
            });
        }
        let instance_id = spec.instance_id.clone().unwrap_or_default();
        let instance_type =
            spec.instance_type
                .clone()
                .ok_or_else(|| Error::MissingInstanceType {
                    node: name.to_owned(),
                })?;
        let limits = self.instance_limits(&instance_type).await?;
        let first = spec.ipam.first_interface_index();

        // Never planned from nothing: the first reconcile resyncs the instance.
        if status.last_resync.is_none() {
            self.resync_into(
                &mut status,
                &instance_id,
                spec.vpc_id.as_deref(),
                &spec.ipam.exclude_interface_tags,
                first,
                now,
            )
            .await?;
        }
        let vpc_id = match &spec.vpc_id {
            Some(v) => v.clone(),
            None => lock(&self.instance_vpc)
                .get(&instance_id)
                .cloned()
                .ok_or_else(|| Error::MissingVpc {
                    node: name.to_owned(),
                })?,
        };
        let facts = self.vpc_facts(&vpc_id).await?;

        let watermarks = Watermarks::resolve(&spec.ipam, &self.config.defaults);
        let released_since = self.note_released(name, &status, now);
        let the_plan = plan(&PlanInput {
            spec,
            status: &status,
            watermarks,
            limits: &limits,
            subnets: &facts.subnets,
            security_groups: &facts.security_groups,
            now,
            released_since: &released_since,
            released_bound: self.config.released_bound,
        });
        self.metrics.release_cleanup(the_plan.cleanup);
        debug!(node = name, steps = the_plan.steps.len(), counts = ?the_plan.counts, "planned");
        for (ip, change) in &the_plan.release {
            match change {
                Some(state) => {
                    status.release.insert(ip.clone(), *state);
                }
                None => {
                    status.release.remove(ip);
                }
            }
        }
        // The unassigns, recorded before they are made: released, and out
        // of the pool so the agent never takes them even once it drops the
        // entry. A failed unassign puts them back on the resync after it.
        for step in &the_plan.steps {
            if let Step::UnassignIps { ips, .. } = step {
                for ip in ips {
                    status
                        .release
                        .insert(ip.to_string(), ReleaseState::Released);
                    status.pool.remove(&ip.to_string());
                }
            }
        }
        Ok(Decision {
            status,
            plan: the_plan,
            next: Some(Next {
                name: name.to_owned(),
                instance_id,
                vpc_id,
                exclude: spec.ipam.exclude_interface_tags.clone(),
                first,
                generation,
                watermarks,
                limits,
            }),
            _timer: timer,
        })
    }

    /// Carries out a [`Decision`]: the cloud steps, the resync after them,
    /// conditions, summary and metrics; the status to write.
    pub async fn carry_out(&self, decision: Decision, now: Timestamp) -> Reconciled {
        let Decision {
            mut status,
            plan: the_plan,
            next,
            _timer,
        } = decision;
        let Some(Next {
            name,
            instance_id,
            vpc_id,
            exclude,
            first,
            generation,
            watermarks,
            limits,
        }) = next
        else {
            return Reconciled {
                status,
                plan: the_plan,
                done: vec![],
                requeue_after: self.config.requeue_idle,
                error: None,
            };
        };
        let name = name.as_str();

        let executed = execute(
            self.cloud.as_ref(),
            Target {
                cluster: &self.config.cluster,
                node: name,
                instance_id: &instance_id,
                attaching: &self.attaching,
            },
            the_plan.steps.clone(),
            &mut status,
            now,
        )
        .await;
        for kind in &executed.done {
            self.metrics.step(kind);
        }
        let mutated = executed.mutated();
        let mut error = executed.error.map(Error::from);
        if let Some(Error::Cloud {
            source: sextant_cloud::Error::InsufficientAddresses { .. },
        }) = &error
        {
            self.invalidate_vpc(&vpc_id);
        }
        if (mutated || error.is_some())
            && let Err(e) = self
                .resync_into(
                    &mut status,
                    &instance_id,
                    Some(&vpc_id),
                    &exclude,
                    first,
                    now,
                )
                .await
        {
            error.get_or_insert(e);
        }

        let c = the_plan.counts;
        let ready = c.available
            >= watermarks
                .pre_allocate
                .min(c.pool.max(watermarks.pre_allocate));
        set_condition(
            &mut status.conditions,
            condition(
                "PoolReady",
                ready && the_plan.steps.is_empty(),
                if ready { "Ready" } else { "Filling" },
                format!(
                    "{} available of {} in pool, {} used, {} releasing; preAllocate {}",
                    c.available, c.pool, c.used, c.releasing, watermarks.pre_allocate
                ),
                generation,
                now,
            ),
        );
        match &the_plan.limit {
            Some(limit) => set_condition(
                &mut status.conditions,
                condition(
                    "LimitReached",
                    true,
                    limit.reason(),
                    limit.message(c.unmet.max(1)),
                    generation,
                    now,
                ),
            ),
            None => set_condition(
                &mut status.conditions,
                condition("LimitReached", false, "WithinLimits", "", generation, now),
            ),
        };
        status.observed_generation = generation;
        refresh_summary(&mut status);
        let capacity = instance_capacity(&limits, first);
        set_capacity(
            &mut status,
            watermarks
                .max_allocate
                .map_or(capacity, |m| capacity.min(m)),
            limits.max_enis,
            limits.ipv4_per_eni,
        );
        self.metrics.pool(name, &status, c.available);

        let requeue_after = if !the_plan.steps.is_empty() || error.is_some() {
            self.config.requeue_busy
        } else if the_plan.limit.is_some() {
            self.config.requeue_blocked
        } else {
            self.config.requeue_idle
        };
        Reconciled {
            status,
            plan: the_plan,
            done: executed.done,
            requeue_after,
            error,
        }
    }

    async fn resync_into(
        &self,
        status: &mut NodeNetworkStatus,
        instance_id: &str,
        vpc_id: Option<&str>,
        exclude: &std::collections::BTreeMap<String, String>,
        first_interface_index: u32,
        now: Timestamp,
    ) -> Result<(), Error> {
        let net = self
            .resync
            .instance(self.cloud.as_ref(), instance_id, vpc_id.unwrap_or_default())
            .await?;
        if let Some(e) = net.enis.first() {
            lock(&self.instance_vpc).insert(instance_id.to_owned(), e.vpc_id.clone());
        }
        let returned = apply_enis(status, eni_statuses(&net, exclude), first_interface_index);
        self.metrics.release_cleanup(crate::plan::ReleaseCleanup {
            returned: u32::try_from(returned).unwrap_or(u32::MAX),
            stale: 0,
        });
        status.last_resync = Some(now.to_string());
        Ok(())
    }
}
