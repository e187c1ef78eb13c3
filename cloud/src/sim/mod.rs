//! A simulated cloud behind [`EniCloud`]: one or more VPCs with subnets of
//! finite size, instances with published per-type ENI limits, per-call
//! latency, the providers' server-side throttling (EC2 token buckets per
//! action class, or Alibaba per-API per-minute windows) and injected faults.
//!
//! Time is `tokio::time`, so under a paused runtime (`start_paused`) thousands
//! of simulated nodes run in seconds of wall time; randomness comes from one
//! seeded generator, so a seed replays the same run.

mod instance_types;
mod register;
mod throttle;
mod vpc;

pub use instance_types::{INSTANCE_TYPES, instance_type};
pub use register::{AutoRegister, InstanceDirectory, InstanceHint};
pub use vpc::{Cidr, SimVpc, SimVpcConfig};

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Mutex,
    time::Duration,
};

use async_trait::async_trait;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use sextant_kit::sync::lock;
use tokio::time::Instant;

use crate::{
    Action, AssignIps, Attachment, CreateEni, Eni, EniCloud, EniState, Error, InstanceLimits,
    InstanceNetwork, Page, PageRequest, Result, SecurityGroup, Subnet, Tags,
};
use throttle::{MinuteWindow, TokenBucket};

/// Which provider's throttling model and limits the simulation follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimProvider {
    /// EC2 token buckets.
    Aws,
    /// ECS per-minute windows.
    Alibaba,
}

/// Injected faults, each a probability per call.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Calls answered "throttled" regardless of the buckets.
    pub throttle_ratio: f64,
    /// Calls failing with `Unavailable` (a 5xx) before doing anything.
    pub error_ratio: f64,
    /// Calls taking `spike` longer than usual.
    pub spike_ratio: f64,
    /// Extra latency of a spike.
    pub spike: Duration,
}

/// Settings of a simulated cloud.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Throttling model.
    pub provider: SimProvider,
    /// Seed of every random choice.
    pub seed: u64,
    /// Latency of a describe call.
    pub describe_latency: Duration,
    /// Latency of a mutating call.
    pub mutate_latency: Duration,
    /// Uniform extra latency in `[0, latency_jitter]`.
    pub latency_jitter: Duration,
    /// Whether the provider's own throttling applies.
    pub server_throttling: bool,
    /// Injected faults.
    pub faults: Faults,
}

impl SimConfig {
    /// Defaults for `provider`: 50 ms describes, 150 ms mutations, throttling on, no faults.
    pub fn new(provider: SimProvider, seed: u64) -> Self {
        SimConfig {
            provider,
            seed,
            describe_latency: Duration::from_millis(50),
            mutate_latency: Duration::from_millis(150),
            latency_jitter: Duration::from_millis(50),
            server_throttling: true,
            faults: Faults::default(),
        }
    }

    /// For tests that look at what calls do, not how long they take: no
    /// latency and no provider throttling.
    pub fn instant(provider: SimProvider, seed: u64) -> Self {
        SimConfig {
            describe_latency: Duration::ZERO,
            mutate_latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            server_throttling: false,
            ..SimConfig::new(provider, seed)
        }
    }
}

/// Counts of what reached the simulated provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ActionStats {
    /// Calls received.
    pub calls: u64,
    /// Calls answered "throttled".
    pub throttled: u64,
    /// Calls failed for another reason.
    pub failed: u64,
}

/// Per-action counts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Counts per action.
    pub by_action: BTreeMap<Action, ActionStats>,
}

impl SimStats {
    /// Calls of every action.
    pub fn total_calls(&self) -> u64 {
        self.by_action.values().map(|s| s.calls).sum()
    }
    /// Throttled calls of every action.
    pub fn total_throttled(&self) -> u64 {
        self.by_action.values().map(|s| s.throttled).sum()
    }
}

/// Why a simulated world could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupError {
    /// CIDR that does not parse or is too small.
    #[error("bad subnet CIDR {0:?}")]
    BadCidr(String),
    /// Instance type not in the table.
    #[error("unknown instance type {0:?}")]
    UnknownInstanceType(String),
    /// Subnet id not known.
    #[error("unknown subnet {0:?}")]
    UnknownSubnet(String),
    /// Subnet full.
    #[error("subnet {0} has no free address for the primary interface")]
    SubnetFull(String),
    /// Instance id not of EC2's shape (`i-` and letters, digits or dashes).
    #[error("{0:?} is not an instance id (i-...)")]
    BadInstanceId(String),
    /// An instance with this id exists already.
    #[error("instance {0} exists already")]
    DuplicateInstance(String),
    /// Security group id not known.
    #[error("unknown security group {0:?}")]
    UnknownSecurityGroup(String),
    /// Zone name that no subnet could be put in.
    #[error("bad zone name {0:?}")]
    BadZone(String),
    /// A VPC without zones.
    #[error("no zones given")]
    NoZones,
    /// A zone given twice.
    #[error("zone {0} is given twice")]
    DuplicateZone(String),
    /// A VPC CIDR too small for a subnet per zone.
    #[error("VPC CIDR {cidr} is too small for {zones} zone subnets of at least /28")]
    CidrTooSmall {
        /// The VPC CIDR.
        cidr: String,
        /// Zones asked for.
        zones: usize,
    },
}

struct SimSubnet {
    subnet: Subnet,
    base: u32,
    /// Usable host offsets: AWS reserves the first four and the last address.
    first: u32,
    last: u32,
    cursor: u32,
    freed: BTreeSet<u32>,
    owners: HashMap<Ipv4Addr, String>,
}

impl SimSubnet {
    fn usable(&self) -> u32 {
        self.last - self.first + 1
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        v >= self.base + self.first && v <= self.base + self.last
    }

    fn allocate(&mut self, eni: &str) -> Option<Ipv4Addr> {
        let offset = match self.freed.pop_first() {
            Some(o) => o,
            None if self.cursor <= self.last => {
                self.cursor += 1;
                self.cursor - 1
            }
            None => return None,
        };
        let ip = Ipv4Addr::from(self.base + offset);
        self.owners.insert(ip, eni.to_owned());
        self.refresh();
        Some(ip)
    }

    fn take_specific(&mut self, ip: Ipv4Addr, eni: &str) {
        let offset = u32::from(ip) - self.base;
        if offset >= self.cursor {
            // Skip past it: addresses between the cursor and it go to the free set.
            self.freed.extend(self.cursor..offset);
            self.cursor = offset + 1;
        } else {
            self.freed.remove(&offset);
        }
        self.owners.insert(ip, eni.to_owned());
        self.refresh();
    }

    fn release(&mut self, ip: Ipv4Addr) {
        if self.owners.remove(&ip).is_some() {
            self.freed.insert(u32::from(ip) - self.base);
        }
        self.refresh();
    }

    fn refresh(&mut self) {
        let used = u32::try_from(self.owners.len()).unwrap_or(u32::MAX);
        self.subnet.available_ips = self.usable().saturating_sub(used);
    }
}

struct SimInstance {
    instance_type: InstanceLimits,
}

struct State {
    rng: SmallRng,
    next_id: u64,
    subnets: BTreeMap<String, SimSubnet>,
    security_groups: BTreeMap<String, SecurityGroup>,
    instances: BTreeMap<String, SimInstance>,
    enis: BTreeMap<String, Eni>,
    buckets: HashMap<Action, TokenBucket>,
    windows: HashMap<Action, MinuteWindow>,
    stats: SimStats,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}-{:08x}", self.next_id)
    }
}

/// The simulated cloud.
pub struct SimCloud {
    config: Mutex<SimConfig>,
    started: Instant,
    state: Mutex<State>,
}

fn parse_cidr(cidr: &str) -> Option<(u32, u8)> {
    let (a, l) = cidr.split_once('/')?;
    let a: Ipv4Addr = a.parse().ok()?;
    let l: u8 = l.parse().ok()?;
    (l <= 28).then_some((u32::from(a) & (u32::MAX << (32 - l)), l))
}

impl SimCloud {
    /// An empty cloud.
    pub fn new(config: SimConfig) -> Self {
        let rng = SmallRng::seed_from_u64(config.seed);
        SimCloud {
            config: Mutex::new(config),
            started: Instant::now(),
            state: Mutex::new(State {
                rng,
                next_id: 0,
                subnets: BTreeMap::new(),
                security_groups: BTreeMap::new(),
                instances: BTreeMap::new(),
                enis: BTreeMap::new(),
                buckets: HashMap::new(),
                windows: HashMap::new(),
                stats: SimStats::default(),
            }),
        }
    }

    /// Changes the injected faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.config).faults = faults;
    }

    /// Adds a subnet; returns its id.
    pub fn add_subnet(
        &self,
        vpc_id: &str,
        zone: &str,
        cidr: &str,
        tags: Tags,
    ) -> Result<String, SetupError> {
        let (base, len) = parse_cidr(cidr).ok_or_else(|| SetupError::BadCidr(cidr.into()))?;
        let size = 1u32 << (32 - len);
        let mut st = lock(&self.state);
        let id = st.id("subnet");
        let mut s = SimSubnet {
            subnet: Subnet {
                id: id.clone(),
                vpc_id: vpc_id.into(),
                zone: zone.into(),
                cidr: cidr.into(),
                available_ips: 0,
                tags,
            },
            base,
            first: 4,
            last: size - 2,
            cursor: 4,
            freed: BTreeSet::new(),
            owners: HashMap::new(),
        };
        s.refresh();
        st.subnets.insert(id.clone(), s);
        Ok(id)
    }

    /// Adds a security group; returns its id.
    pub fn add_security_group(&self, vpc_id: &str, name: &str, tags: Tags) -> String {
        let mut st = lock(&self.state);
        let id = st.id("sg");
        st.security_groups.insert(
            id.clone(),
            SecurityGroup {
                id: id.clone(),
                vpc_id: vpc_id.into(),
                name: name.into(),
                tags,
            },
        );
        id
    }

    /// Launches an instance with its primary ENI (device 0) in `subnet_id`.
    pub fn add_instance(&self, instance_type: &str, subnet_id: &str) -> Result<String, SetupError> {
        let limits = instance_type_limits(instance_type)?;
        let mut st = lock(&self.state);
        let instance_id = loop {
            // Skip ids taken by [`SimCloud::add_instance_with_id`].
            let id = st.id("i");
            if !st.instances.contains_key(&id) {
                break id;
            }
        };
        launch(&mut st, &instance_id, limits, subnet_id, &[])?;
        Ok(instance_id)
    }

    /// Launches an instance under a caller-given id (one a real cloud
    /// already runs, such as the instance a node's `spec.providerID` names),
    /// with its primary ENI (device 0) in `subnet_id` carrying
    /// `security_groups`, as EC2 launches it in the node group's groups.
    pub fn add_instance_with_id(
        &self,
        instance_id: &str,
        instance_type: &str,
        subnet_id: &str,
        security_groups: &[String],
    ) -> Result<(), SetupError> {
        if !is_instance_id(instance_id) {
            return Err(SetupError::BadInstanceId(instance_id.into()));
        }
        let limits = instance_type_limits(instance_type)?;
        let mut st = lock(&self.state);
        if st.instances.contains_key(instance_id) {
            return Err(SetupError::DuplicateInstance(instance_id.into()));
        }
        if let Some(g) = security_groups
            .iter()
            .find(|g| !st.security_groups.contains_key(*g))
        {
            return Err(SetupError::UnknownSecurityGroup(g.clone()));
        }
        launch(&mut st, instance_id, limits, subnet_id, security_groups)
    }

    /// Whether an instance runs (launched and not terminated).
    pub fn has_instance(&self, instance_id: &str) -> bool {
        lock(&self.state).instances.contains_key(instance_id)
    }

    /// The instance type an instance runs as.
    pub fn instance_type_of(&self, instance_id: &str) -> Option<String> {
        lock(&self.state)
            .instances
            .get(instance_id)
            .map(|i| i.instance_type.instance_type.clone())
    }

    /// Terminates an instance: its primary ENI is deleted with it, other ENIs
    /// are detached and left behind (as on EC2, where secondary ENIs created
    /// separately do not delete on termination): garbage for the collector.
    pub fn terminate_instance(&self, instance_id: &str) {
        let mut st = lock(&self.state);
        st.instances.remove(instance_id);
        let attached: Vec<(String, u32)> = st
            .enis
            .values()
            .filter_map(|e| {
                let a = e.attachment.as_ref()?;
                (a.instance_id == instance_id).then(|| (e.id.clone(), a.device_index))
            })
            .collect();
        for (id, device_index) in attached {
            if device_index == 0 {
                if let Some(eni) = st.enis.remove(&id) {
                    release_all(&mut st, &eni);
                }
            } else if let Some(eni) = st.enis.get_mut(&id) {
                eni.attachment = None;
                eni.state = EniState::Available;
            }
        }
    }

    /// Every ENI, for audits.
    pub fn all_enis(&self) -> Vec<Eni> {
        lock(&self.state).enis.values().cloned().collect()
    }

    /// What reached the provider so far.
    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats.clone()
    }

    /// Describes the ENIs of one subnet: the per-subnet resync of the
    /// baseline the simulator compares against (counted as `ListEnis`).
    pub async fn describe_subnet_enis(&self, subnet_id: &str) -> Result<Vec<Eni>> {
        self.enter(Action::ListEnis).await?;
        let st = lock(&self.state);
        Ok(st
            .enis
            .values()
            .filter(|e| e.subnet_id == subnet_id)
            .cloned()
            .collect())
    }

    /// Latency, counters, faults and throttling of one call; `Ok` means the
    /// call goes through.
    async fn enter(&self, action: Action) -> Result<()> {
        let config = lock(&self.config).clone();
        let delay = {
            let mut st = lock(&self.state);
            let base = match action.class() {
                crate::ActionClass::Describe => config.describe_latency,
                _ => config.mutate_latency,
            };
            let jitter_ns = u64::try_from(config.latency_jitter.as_nanos()).unwrap_or(0);
            let mut d = base + Duration::from_nanos(st.rng.random_range(0..=jitter_ns));
            if config.faults.spike_ratio > 0.0
                && st.rng.random_bool(config.faults.spike_ratio.min(1.0))
            {
                d += config.faults.spike;
            }
            d
        };
        tokio::time::sleep(delay).await;
        let now = Instant::now();
        let since_start = now.saturating_duration_since(self.started);
        let mut st = lock(&self.state);
        st.stats.by_action.entry(action).or_default().calls += 1;
        let throttled = if config.server_throttling {
            match config.provider {
                SimProvider::Aws => {
                    let (cap, refill) = throttle::ec2_bucket(action);
                    st.buckets
                        .entry(throttle::ec2_bucket_key(action))
                        .or_insert_with(|| TokenBucket::new(cap, refill, self.started))
                        .take(now)
                        .is_err()
                }
                SimProvider::Alibaba => st
                    .windows
                    .entry(action)
                    .or_insert_with(|| MinuteWindow::new(throttle::alibaba_per_minute(action)))
                    .take(since_start)
                    .is_err(),
            }
        } else {
            false
        };
        let injected_throttle = config.faults.throttle_ratio > 0.0
            && st.rng.random_bool(config.faults.throttle_ratio.min(1.0));
        if throttled || injected_throttle {
            st.stats.by_action.entry(action).or_default().throttled += 1;
            return Err(Error::Throttled {
                action,
                retry_after: None,
            });
        }
        if config.faults.error_ratio > 0.0 && st.rng.random_bool(config.faults.error_ratio.min(1.0))
        {
            st.stats.by_action.entry(action).or_default().failed += 1;
            return Err(Error::Unavailable {
                action,
                message: "injected fault: internal error".into(),
                source: None,
            });
        }
        Ok(())
    }

    /// Runs `op` on the state after `enter`, counting its failure.
    async fn run<T>(&self, action: Action, op: impl FnOnce(&mut State) -> Result<T>) -> Result<T> {
        self.enter(action).await?;
        let mut st = lock(&self.state);
        let r = op(&mut st);
        if r.is_err() {
            st.stats.by_action.entry(action).or_default().failed += 1;
        }
        r
    }
}

/// Puts an instance and its primary ENI into `st`.
fn launch(
    st: &mut State,
    instance_id: &str,
    limits: InstanceLimits,
    subnet_id: &str,
    security_groups: &[String],
) -> Result<(), SetupError> {
    let eni_id = st.id("eni");
    let subnet = st
        .subnets
        .get_mut(subnet_id)
        .ok_or_else(|| SetupError::UnknownSubnet(subnet_id.into()))?;
    let primary_ip = subnet
        .allocate(&eni_id)
        .ok_or_else(|| SetupError::SubnetFull(subnet_id.into()))?;
    let eni = Eni {
        id: eni_id.clone(),
        subnet_id: subnet_id.into(),
        vpc_id: subnet.subnet.vpc_id.clone(),
        zone: subnet.subnet.zone.clone(),
        mac: mac_of(&eni_id),
        primary_ip,
        secondary_ips: vec![],
        security_groups: security_groups.to_vec(),
        tags: Tags::new(),
        state: EniState::InUse,
        attachment: Some(Attachment {
            id: format!("attach-{eni_id}"),
            instance_id: instance_id.to_owned(),
            device_index: 0,
        }),
    };
    st.enis.insert(eni_id, eni);
    st.instances.insert(
        instance_id.to_owned(),
        SimInstance {
            instance_type: limits,
        },
    );
    Ok(())
}

/// EC2's instance id shape: `i-` and then letters, digits or dashes.
pub fn is_instance_id(id: &str) -> bool {
    id.len() > 2
        && id.starts_with("i-")
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn instance_type_limits(name: &str) -> Result<InstanceLimits, SetupError> {
    instance_type(name).ok_or_else(|| SetupError::UnknownInstanceType(name.into()))
}

fn mac_of(eni_id: &str) -> String {
    let h = eni_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[1], b[2], b[3], b[4], b[5]
    )
}

fn release_all(st: &mut State, eni: &Eni) {
    if let Some(s) = st.subnets.get_mut(&eni.subnet_id) {
        s.release(eni.primary_ip);
        for ip in &eni.secondary_ips {
            s.release(*ip);
        }
    }
}

fn not_found(action: Action, what: &str, id: &str) -> Error {
    Error::NotFound {
        action,
        message: format!("{what} {id} does not exist"),
    }
}

fn invalid(action: Action, message: impl Into<String>) -> Error {
    Error::InvalidRequest {
        action,
        message: message.into(),
    }
}

/// Most secondary addresses one call may assign at ENI creation (ECS allows
/// 49; EC2's largest types allow 49 secondaries on one ENI).
const MAX_AT_CREATE: u32 = 49;

#[async_trait]
impl EniCloud for SimCloud {
    fn provider(&self) -> &'static str {
        "sim"
    }

    async fn instance_network(&self, instance_id: &str) -> Result<InstanceNetwork> {
        let action = Action::DescribeInstanceNetwork;
        self.run(action, |st| {
            if !st.instances.contains_key(instance_id) {
                return Err(not_found(action, "instance", instance_id));
            }
            let mut enis: Vec<Eni> = st
                .enis
                .values()
                .filter(|e| {
                    e.attachment
                        .as_ref()
                        .is_some_and(|a| a.instance_id == instance_id)
                })
                .cloned()
                .collect();
            enis.sort_by_key(|e| e.attachment.as_ref().map(|a| a.device_index));
            Ok(InstanceNetwork {
                instance_id: instance_id.into(),
                enis,
            })
        })
        .await
    }

    async fn list_enis(&self, vpc_id: &str, page: PageRequest) -> Result<Page<Eni>> {
        let action = Action::ListEnis;
        self.run(action, |st| {
            let size = page.size.clamp(5, 1000) as usize;
            let start = page.token.clone().unwrap_or_default();
            let mut items: Vec<Eni> = st
                .enis
                .range::<String, _>((std::ops::Bound::Excluded(start), std::ops::Bound::Unbounded))
                .map(|(_, e)| e)
                .filter(|e| e.vpc_id == vpc_id)
                .take(size + 1)
                .cloned()
                .collect();
            let next = if items.len() > size {
                items.truncate(size);
                items.last().map(|e| e.id.clone())
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn subnets(&self, vpc_id: &str) -> Result<Vec<Subnet>> {
        self.run(Action::DescribeSubnets, |st| {
            Ok(st
                .subnets
                .values()
                .filter(|s| s.subnet.vpc_id == vpc_id)
                .map(|s| s.subnet.clone())
                .collect())
        })
        .await
    }

    async fn security_groups(&self, vpc_id: &str) -> Result<Vec<SecurityGroup>> {
        self.run(Action::DescribeSecurityGroups, |st| {
            Ok(st
                .security_groups
                .values()
                .filter(|g| g.vpc_id == vpc_id)
                .cloned()
                .collect())
        })
        .await
    }

    async fn instance_limits(&self, instance_type: &str) -> Result<InstanceLimits> {
        let action = Action::DescribeInstanceTypes;
        self.run(action, |_| {
            instance_type_limits(instance_type).map_err(|_| {
                let known: Vec<&str> = INSTANCE_TYPES.iter().map(|(n, ..)| *n).collect();
                invalid(
                    action,
                    format!(
                        "unknown instance type {instance_type} (the simulator knows {})",
                        known.join(", ")
                    ),
                )
            })
        })
        .await
    }

    async fn create_eni(&self, request: &CreateEni) -> Result<Eni> {
        let action = Action::CreateEni;
        self.run(action, |st| {
            if request.secondary_ips > MAX_AT_CREATE {
                return Err(invalid(
                    action,
                    format!("at most {MAX_AT_CREATE} secondary addresses at creation"),
                ));
            }
            for g in &request.security_groups {
                if !st.security_groups.contains_key(g) {
                    return Err(not_found(action, "security group", g));
                }
            }
            let eni_id = st.id("eni");
            let subnet = st
                .subnets
                .get_mut(&request.subnet_id)
                .ok_or_else(|| not_found(action, "subnet", &request.subnet_id))?;
            if subnet.subnet.available_ips < request.secondary_ips + 1 {
                return Err(Error::InsufficientAddresses {
                    action,
                    message: format!(
                        "subnet {} has {} free addresses",
                        request.subnet_id, subnet.subnet.available_ips
                    ),
                });
            }
            let mut ips = Vec::with_capacity(request.secondary_ips as usize + 1);
            for _ in 0..=request.secondary_ips {
                match subnet.allocate(&eni_id) {
                    Some(ip) => ips.push(ip),
                    None => {
                        for ip in ips {
                            subnet.release(ip);
                        }
                        return Err(Error::InsufficientAddresses {
                            action,
                            message: "subnet exhausted".into(),
                        });
                    }
                }
            }
            let primary_ip = ips.remove(0);
            let eni = Eni {
                id: eni_id.clone(),
                subnet_id: request.subnet_id.clone(),
                vpc_id: subnet.subnet.vpc_id.clone(),
                zone: subnet.subnet.zone.clone(),
                mac: mac_of(&eni_id),
                primary_ip,
                secondary_ips: ips,
                security_groups: request.security_groups.clone(),
                tags: request.tags.clone(),
                state: EniState::Available,
                attachment: None,
            };
            st.enis.insert(eni_id, eni.clone());
            Ok(eni)
        })
        .await
    }

    async fn attach_eni(&self, eni_id: &str, instance_id: &str, device_index: u32) -> Result<()> {
        let action = Action::AttachEni;
        self.run(action, |st| {
            let limits = st
                .instances
                .get(instance_id)
                .ok_or_else(|| not_found(action, "instance", instance_id))?
                .instance_type
                .clone();
            let on_instance: Vec<u32> = st
                .enis
                .values()
                .filter_map(|e| e.attachment.as_ref())
                .filter(|a| a.instance_id == instance_id)
                .map(|a| a.device_index)
                .collect();
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?;
            if eni.attachment.is_some() {
                return Err(invalid(action, format!("{eni_id} is already attached")));
            }
            if on_instance.len() as u32 >= limits.max_enis {
                return Err(Error::LimitExceeded {
                    action,
                    message: format!(
                        "{} allows {} network interfaces",
                        limits.instance_type, limits.max_enis
                    ),
                });
            }
            if device_index >= limits.max_enis || on_instance.contains(&device_index) {
                return Err(invalid(
                    action,
                    format!("device index {device_index} is not free"),
                ));
            }
            if eni.secondary_ips.len() as u32 > limits.secondary_per_eni() {
                return Err(Error::LimitExceeded {
                    action,
                    message: format!(
                        "{} allows {} addresses per interface",
                        limits.instance_type, limits.ipv4_per_eni
                    ),
                });
            }
            eni.state = EniState::InUse;
            eni.attachment = Some(Attachment {
                id: format!("attach-{eni_id}"),
                instance_id: instance_id.into(),
                device_index,
            });
            Ok(())
        })
        .await
    }

    async fn assign_ips(&self, eni_id: &str, request: &AssignIps) -> Result<Vec<Ipv4Addr>> {
        let action = Action::AssignIps;
        self.run(action, |st| {
            let eni = st
                .enis
                .get(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?
                .clone();
            let per_eni = match &eni.attachment {
                Some(a) => st
                    .instances
                    .get(&a.instance_id)
                    .map(|i| i.instance_type.secondary_per_eni())
                    .unwrap_or(MAX_AT_CREATE),
                None => MAX_AT_CREATE,
            };
            let after = eni.secondary_ips.len() as u32 + request.len();
            if after > per_eni {
                return Err(Error::LimitExceeded {
                    action,
                    message: format!(
                        "{eni_id} can hold {per_eni} secondary addresses, asked for {after}"
                    ),
                });
            }
            let subnet = st
                .subnets
                .get_mut(&eni.subnet_id)
                .ok_or_else(|| not_found(action, "subnet", &eni.subnet_id))?;
            let mut assigned = Vec::new();
            let mut moved_from: Vec<(Ipv4Addr, String)> = Vec::new();
            match request {
                AssignIps::Count(n) => {
                    if subnet.subnet.available_ips < *n {
                        return Err(Error::InsufficientAddresses {
                            action,
                            message: format!(
                                "subnet {} has {} free addresses",
                                eni.subnet_id, subnet.subnet.available_ips
                            ),
                        });
                    }
                    for _ in 0..*n {
                        if let Some(ip) = subnet.allocate(eni_id) {
                            assigned.push(ip);
                        }
                    }
                }
                AssignIps::Specific {
                    ips,
                    allow_reassignment,
                } => {
                    for ip in ips {
                        if !subnet.contains(*ip) {
                            return Err(invalid(
                                action,
                                format!("{ip} is not in subnet {}", eni.subnet_id),
                            ));
                        }
                        if let Some(owner) = subnet.owners.get(ip)
                            && (owner == eni_id || !allow_reassignment)
                        {
                            return Err(invalid(
                                action,
                                format!("{ip} is already assigned to {owner}"),
                            ));
                        }
                    }
                    for ip in ips {
                        if let Some(owner) = subnet.owners.get(ip).cloned() {
                            moved_from.push((*ip, owner));
                        }
                        subnet.take_specific(*ip, eni_id);
                        assigned.push(*ip);
                    }
                }
            }
            for (ip, owner) in moved_from {
                if let Some(old) = st.enis.get_mut(&owner) {
                    old.secondary_ips.retain(|x| *x != ip);
                }
            }
            if let Some(e) = st.enis.get_mut(eni_id) {
                e.secondary_ips.extend(assigned.iter().copied());
            }
            Ok(assigned)
        })
        .await
    }

    async fn unassign_ips(&self, eni_id: &str, ips: &[Ipv4Addr]) -> Result<()> {
        let action = Action::UnassignIps;
        self.run(action, |st| {
            let eni = st
                .enis
                .get_mut(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?;
            if let Some(ip) = ips.iter().find(|ip| !eni.secondary_ips.contains(ip)) {
                return Err(invalid(
                    action,
                    format!("{ip} is not a secondary address of {eni_id}"),
                ));
            }
            eni.secondary_ips.retain(|x| !ips.contains(x));
            let subnet_id = eni.subnet_id.clone();
            if let Some(s) = st.subnets.get_mut(&subnet_id) {
                for ip in ips {
                    s.release(*ip);
                }
            }
            Ok(())
        })
        .await
    }

    async fn detach_eni(&self, eni: &Eni) -> Result<()> {
        let action = Action::DetachEni;
        self.run(action, |st| {
            let e = st
                .enis
                .get_mut(&eni.id)
                .ok_or_else(|| not_found(action, "network interface", &eni.id))?;
            match &e.attachment {
                None => Err(invalid(action, format!("{} is not attached", eni.id))),
                Some(a) if a.device_index == 0 => {
                    Err(invalid(action, "the primary interface cannot be detached"))
                }
                Some(_) => {
                    e.attachment = None;
                    e.state = EniState::Available;
                    Ok(())
                }
            }
        })
        .await
    }

    async fn delete_eni(&self, eni_id: &str) -> Result<()> {
        let action = Action::DeleteEni;
        self.run(action, |st| {
            let e = st
                .enis
                .get(eni_id)
                .ok_or_else(|| not_found(action, "network interface", eni_id))?;
            if e.attachment.is_some() {
                return Err(invalid(action, format!("{eni_id} is in use")));
            }
            if let Some(eni) = st.enis.remove(eni_id) {
                release_all(st, &eni);
            }
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests;
