//! The device list: which `sextant.io/ip` devices exist and which are healthy.
//! Pure: the runtime feeds observations of the agent and publishes the result.
//!
//! Capacity: one device per pod IP this node can ever hold, as the agent
//! reports it in `ipam.capacity` (ENIs x (IPv4 per ENI - 1) less reserved
//! addresses, capped by `maxAllocate`; on bare metal the pod CIDRs' usable
//! addresses). Not the warm pool: kube-scheduler subtracts the pods already
//! bound to the node, so it stops at the real limit. Of these, the
//! `ipam.unavailable` highest-numbered devices are `Unhealthy`, so kubelet's
//! allocatable is what the agent can provide now.
//!
//! Ids are `ip-00000`, `ip-00001`, ...: device `i` keeps its id across
//! updates; growth appends, shrinking drops the highest.

use std::collections::HashSet;

use sextant_agent_api::Health;

use crate::api;

/// Width of the number in a device id; ids stay sortable as strings.
const ID_DIGITS: usize = 5;
/// Prefix of every device id.
const ID_PREFIX: &str = "ip-";

/// The id of device `index`.
pub fn device_id(index: u32) -> String {
    format!("{ID_PREFIX}{index:0ID_DIGITS$}")
}

/// The index of a device id this plugin hands out, if it is one.
pub fn parse_device_id(id: &str) -> Option<u32> {
    let digits = id.strip_prefix(ID_PREFIX)?;
    if digits.len() != ID_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The advertised devices: `total` of them, the last `unhealthy` unhealthy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceList {
    /// Devices advertised (`ip-00000` .. `ip-{total-1}`).
    pub total: u32,
    /// How many of the highest-numbered devices are unhealthy.
    pub unhealthy: u32,
}

impl DeviceList {
    /// Devices kubelet may allocate.
    pub fn healthy(&self) -> u32 {
        self.total - self.unhealthy.min(self.total)
    }

    /// Whether `id` is one of the advertised devices.
    pub fn contains(&self, id: &str) -> bool {
        parse_device_id(id).is_some_and(|i| i < self.total)
    }

    /// Whether device `index` is healthy.
    pub fn is_healthy(&self, index: u32) -> bool {
        index < self.healthy()
    }

    /// The ListAndWatch message for this list.
    pub fn to_response(&self) -> api::ListAndWatchResponse {
        api::ListAndWatchResponse {
            devices: (0..self.total)
                .map(|i| api::Device {
                    id: device_id(i),
                    health: if self.is_healthy(i) {
                        api::HEALTHY
                    } else {
                        api::UNHEALTHY
                    }
                    .to_owned(),
                    topology: None,
                })
                .collect(),
        }
    }
}

/// Limits on what is advertised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Never advertise more devices than this (a guard against a bogus
    /// capacity; kubelet holds every device in memory and in its checkpoint).
    pub max_devices: u32,
    /// After this many failed agent polls in a row, every device turns
    /// unhealthy: without the agent, CNI ADD cannot hand out an IP.
    pub agent_down_after: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_devices: 4096,
            agent_down_after: 5,
        }
    }
}

/// What one poll of the agent saw.
#[derive(Clone, Copy, Debug)]
pub enum Observation<'a> {
    /// The agent answered `GET /v1/healthz`.
    Agent(&'a Health),
    /// The poll failed; `consecutive` counts the failures in a row, this one
    /// included.
    AgentDown {
        /// Failed polls in a row.
        consecutive: u32,
    },
}

/// The device list after `observation`, given the one published before.
pub fn plan(prev: DeviceList, observation: Observation<'_>, policy: Policy) -> DeviceList {
    match observation {
        Observation::Agent(h) if h.is_restoring() => prev,
        Observation::Agent(h) => {
            let total = clamp_u32(h.ipam.capacity).min(policy.max_devices);
            DeviceList {
                total,
                unhealthy: clamp_u32(h.ipam.unavailable).min(total),
            }
        }
        Observation::AgentDown { consecutive } if consecutive >= policy.agent_down_after => {
            DeviceList {
                total: prev.total,
                unhealthy: prev.total,
            }
        }
        Observation::AgentDown { .. } => prev,
    }
}

fn clamp_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// GetPreferredAllocation for one container: `must_include` first, then the
/// lowest-numbered available devices (so the high, first-to-turn-unhealthy
/// ones stay free), `size` in all, never an id twice.
pub fn preferred(available: &[String], must_include: &[String], size: i32) -> Vec<String> {
    let size = usize::try_from(size).unwrap_or(0);
    let mut out: Vec<String> = Vec::with_capacity(size);
    let mut seen = HashSet::new();
    for id in must_include {
        if out.len() < size && seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    let mut rest: Vec<&String> = available
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    // Ours sort by index; anything else after them, by name.
    rest.sort_by_key(|id| (parse_device_id(id).unwrap_or(u32::MAX), id.as_str()));
    for id in rest {
        if out.len() >= size {
            break;
        }
        if seen.insert(id.as_str()) {
            out.push(id.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_agent_api::{AgentState, IpamHealth};

    fn mk_healthz(state: AgentState, capacity: usize, unavailable: usize) -> Health {
        Health {
            state,
            ipam: IpamHealth {
                capacity,
                unavailable,
                ..IpamHealth::default()
            },
            ..Health::default()
        }
    }

    #[test]
    fn ids_are_stable_and_round_trip() {
        assert_eq!(device_id(0), "ip-00000");
        assert_eq!(device_id(233), "ip-00233");
        assert_eq!(parse_device_id("ip-00233"), Some(233));
        assert_eq!(parse_device_id("ip-233"), None);
        assert_eq!(parse_device_id("gpu-00001"), None);
        assert_eq!(parse_device_id("ip-0000x"), None);
    }

    #[test]
    fn capacity_becomes_devices_with_the_highest_unhealthy() {
        let h = mk_healthz(AgentState::Ready, 5, 2);
        let list = plan(
            DeviceList::default(),
            Observation::Agent(&h),
            Policy::default(),
        );
        assert_eq!(
            list,
            DeviceList {
                total: 5,
                unhealthy: 2
            }
        );
        let resp = list.to_response();
        let health: Vec<_> = resp.devices.iter().map(|d| d.health.as_str()).collect();
        assert_eq!(
            health,
            ["Healthy", "Healthy", "Healthy", "Unhealthy", "Unhealthy"]
        );
        assert_eq!(resp.devices[4].id, "ip-00004");
    }

    #[test]
    fn growing_capacity_keeps_existing_ids() {
        let small = plan(
            DeviceList::default(),
            Observation::Agent(&mk_healthz(AgentState::Ready, 3, 0)),
            Policy::default(),
        );
        let big = plan(
            small,
            Observation::Agent(&mk_healthz(AgentState::Ready, 6, 0)),
            Policy::default(),
        );
        let a = small.to_response().devices;
        let b = big.to_response().devices;
        assert_eq!(a[..], b[..3]);
    }

    #[test]
    fn restoring_agent_changes_nothing() {
        let prev = DeviceList {
            total: 10,
            unhealthy: 1,
        };
        let h = mk_healthz(AgentState::Restoring, 0, 0);
        assert_eq!(plan(prev, Observation::Agent(&h), Policy::default()), prev);
    }

    #[test]
    fn unavailable_and_capacity_are_clamped() {
        let policy = Policy {
            max_devices: 8,
            ..Policy::default()
        };
        let h = mk_healthz(AgentState::Degraded, 1_000_000, 2_000_000);
        let list = plan(DeviceList::default(), Observation::Agent(&h), policy);
        assert_eq!(
            list,
            DeviceList {
                total: 8,
                unhealthy: 8
            }
        );
        assert_eq!(list.healthy(), 0);
    }

    #[test]
    fn agent_down_turns_devices_unhealthy_only_after_the_threshold() {
        let policy = Policy {
            agent_down_after: 3,
            ..Policy::default()
        };
        let prev = DeviceList {
            total: 4,
            unhealthy: 0,
        };
        assert_eq!(
            plan(prev, Observation::AgentDown { consecutive: 2 }, policy),
            prev
        );
        assert_eq!(
            plan(prev, Observation::AgentDown { consecutive: 3 }, policy),
            DeviceList {
                total: 4,
                unhealthy: 4
            }
        );
    }

    #[test]
    fn preferred_takes_must_include_then_lowest() {
        let ids = |v: &[u32]| v.iter().map(|&i| device_id(i)).collect::<Vec<_>>();
        let available = ids(&[7, 3, 9, 1, 4]);
        assert_eq!(preferred(&available, &ids(&[9]), 3), ids(&[9, 1, 3]));
        assert_eq!(preferred(&available, &[], 10), ids(&[1, 3, 4, 7, 9]));
        assert_eq!(preferred(&available, &ids(&[4, 4]), 2), ids(&[4, 1]));
        assert!(preferred(&available, &[], -1).is_empty());
    }

    #[test]
    fn contains_only_advertised_ids() {
        let list = DeviceList {
            total: 3,
            unhealthy: 0,
        };
        assert!(list.contains("ip-00002"));
        assert!(!list.contains("ip-00003"));
        assert!(!list.contains("nvidia0"));
    }
}
