//! A simulated cloud behind [`EniCloud`]: one or more VPCs with subnets of
//! finite size, instances with published per-type ENI limits, per-call
//! latency, the providers' server-side throttling (EC2 token buckets per
//! action class, or Alibaba per-API per-minute windows) and injected faults.
//!
//! Time is `tokio::time`, so under a paused runtime (`start_paused`) thousands
//! of simulated nodes run in seconds of wall time; randomness comes from one
//! seeded generator, so a seed replays the same run.
//!
//! ```text
//!  caller ──▶ SimCloud (EniCloud) ──▶ gate: latency, SimStats, throttle (EC2 buckets |
//!              │                            Alibaba windows), injected faults
//!              │                      ──▶ enis / addresses / instances on State ─▶ subnets
//!              └─ setup: vpc (SimVpc: a subnet per zone + a security group),
//!                        add_subnet, add_security_group, add_instance*
//!  AutoRegister (register) wraps a SimCloud and launches unknown i-... on first sight
//! ```
//!
//! Only built with the crate's `sim` feature: production providers never
//! carry it unless a binary asks for `--provider sim`.

mod addresses;
mod config;
mod enis;
mod gate;
mod instance_types;
mod instances;
mod register;
mod snapshot;
mod subnets;
mod throttle;
mod vpc;

pub use config::{Faults, SimConfig, SimProvider};
pub use gate::{ActionStats, SimStats};
pub use instance_types::{INSTANCE_TYPES, instance_type};
pub use instances::is_instance_id;
pub use register::{AutoRegister, InstanceDirectory, InstanceHint};
pub use snapshot::{SimSnapshot, SnapshotAttachment, SnapshotEni, SnapshotInstance};
pub use vpc::{Cidr, SimVpc, SimVpcConfig};

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use rand::{SeedableRng, rngs::SmallRng};
use sextant_kit::sync::lock;
use tokio::time::Instant;

use crate::{Action, Eni, SecurityGroup};
use instances::SimInstance;
use subnets::SimSubnet;
use throttle::{MinuteWindow, TokenBucket};

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
    /// A snapshot that cannot be put back (see [`SimCloud::restore`]).
    #[error("simulated cloud snapshot refused: {0}")]
    BadSnapshot(String),
    /// A VPC CIDR too small for a subnet per zone.
    #[error("VPC CIDR {cidr} is too small for {zones} zone subnets of at least /28")]
    CidrTooSmall {
        /// The VPC CIDR.
        cidr: String,
        /// Zones asked for.
        zones: usize,
    },
}

/// Everything the simulated provider holds, behind one lock.
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
    /// Client tokens seen, as EC2 keeps them: the request they came with
    /// and what the first call made.
    tokens: HashMap<String, TokenRecord>,
}

/// What a client token stands for.
struct TokenRecord {
    /// The call and its request, as sent the first time.
    request: String,
    /// What that call made.
    made: Made,
}

/// The result a repeated token returns.
enum Made {
    Eni(Box<Eni>),
    Ips(Vec<std::net::Ipv4Addr>),
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
                tokens: HashMap::new(),
            }),
        }
    }

    /// Changes the injected faults from now on.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.config).faults = faults;
    }

    /// What reached the provider so far.
    pub fn stats(&self) -> SimStats {
        lock(&self.state).stats.clone()
    }
}

#[cfg(test)]
mod tests;
