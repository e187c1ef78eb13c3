//! The agent's usage report into NodeNetwork status, as data: which IPs
//! the node holds, what it can hold, and the status merge patch (usage and
//! handshake answers). Sending it is the agent's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sextant_crds::{NodeNetwork, ReleaseState};

use crate::pool::Pool;

/// Most addresses a node's pod CIDRs put in its pool (a /16); a larger
/// CIDR serves only its first this many hosts.
pub const MAX_CIDR_POOL: usize = 1 << 16;

/// Node IPs: the NodeNetwork status pool keys that parse as IPv4 (ENI
/// addresses, fixed IPs moved in) and, on bare metal (`static`), every host
/// address of `spec.podCIDRs` (no network or broadcast address, except in a
/// /31 or /32), at most [`MAX_CIDR_POOL`] of them. Sorted, no duplicates.
pub fn pool_ips(nn: &NodeNetwork) -> Vec<std::net::Ipv4Addr> {
    let mut ips: BTreeSet<std::net::Ipv4Addr> = nn
        .status
        .as_ref()
        .map(|s| s.pool.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default();
    if nn.spec.provider == sextant_crds::Provider::Static {
        let mut room = MAX_CIDR_POOL;
        for (base, len) in nn
            .spec
            .pod_cidrs
            .iter()
            .filter_map(|c| sextant_crds::parse_ipv4_cidr(c))
        {
            let (first, count) = cidr_hosts(base, len);
            let take = room.min(count);
            ips.extend((0..take).map(|i| std::net::Ipv4Addr::from(first.wrapping_add(i as u32))));
            room -= take;
        }
    }
    ips.into_iter().collect()
}

/// The host addresses of `base/len`: the first and how many. All but the
/// network and broadcast addresses, or both addresses of a /31 and the one
/// of a /32.
fn cidr_hosts(base: std::net::Ipv4Addr, len: u8) -> (u32, usize) {
    let len = u32::from(len.min(32));
    let size = 1u64 << (32 - len);
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    let network = u32::from(base) & mask;
    let count = if size > 2 { size - 2 } else { size };
    let first = if size > 2 { network + 1 } else { network };
    (first, usize::try_from(count).unwrap_or(usize::MAX))
}

/// `(capacity, unavailable)` for the agent API: `maxAllocate` when set, else
/// the addresses of the static pod CIDRs (as [`pool_ips`] serves them),
/// else the pool itself.
pub fn capacity(nn: &NodeNetwork, pool_len: usize) -> (usize, usize) {
    let from_cidrs: usize = nn
        .spec
        .pod_cidrs
        .iter()
        .filter_map(|c| sextant_crds::parse_ipv4_cidr(c))
        .map(|(base, len)| cidr_hosts(base, len).1)
        .sum::<usize>()
        .min(MAX_CIDR_POOL);
    let cap = match nn.spec.ipam.max_allocate() {
        Some(m) => m as usize,
        None if from_cidrs > 0 => from_cidrs,
        None => pool_len,
    };
    let limited = nn.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "LimitReached" && c.status == "True")
    });
    let unavailable = if limited {
        cap.saturating_sub(pool_len)
    } else {
        0
    };
    (cap.max(pool_len), unavailable)
}

/// The status merge patch: usage (in use, cooling, pods waiting) and
/// handshake answers (`None` deletes an entry); the addresses in `gone`
/// (listed as used before, not in use now) are removed from `used`
/// (`null`). `pending` is always written, 0 included: a merge patch that
/// left it out would keep the last count.
pub fn status_patch(
    pool: &Pool,
    answers: &BTreeMap<String, Option<ReleaseState>>,
    now_ms: u64,
    pending: u32,
    reported_at: &str,
    gone: &BTreeSet<String>,
) -> Value {
    let mut used: BTreeMap<String, Value> =
        gone.iter().map(|ip| (ip.clone(), Value::Null)).collect();
    used.extend(
        pool.allocations()
            .map(|a| (a.ip.to_string(), Value::String(a.owner()))),
    );
    let cooling: Vec<String> = pool.cooling(now_ms).map(|(ip, _)| ip.to_string()).collect();
    let mut status = json!({
        "usage": { "used": used, "cooling": cooling, "pending": pending, "reportedAt": reported_at },
    });
    if !answers.is_empty() {
        status["release"] = json!(answers);
    }
    json!({ "status": status })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{mk_pool, mk_req};

    fn static_node(cidrs: &[&str], pooled: &[&str]) -> NodeNetwork {
        let mut nn = NodeNetwork::new(
            "metal-1",
            sextant_crds::NodeNetworkSpec {
                provider: sextant_crds::Provider::Static,
                pod_cidrs: cidrs.iter().map(|c| (*c).to_owned()).collect(),
                ..Default::default()
            },
        );
        let mut status = sextant_crds::NodeNetworkStatus::default();
        for ip in pooled {
            status.pool.insert((*ip).to_owned(), Default::default());
        }
        nn.status = Some(status);
        nn
    }

    /// Bare metal: the pool is the pod CIDRs' hosts (before, only
    /// `status.pool`, which nothing fills for static nodes: every ADD failed
    /// with PoolExhausted while the device plugin advertised the CIDR).
    #[test]
    fn a_static_nodes_pool_is_its_pod_cidrs_hosts_and_matches_its_capacity() {
        let nn = static_node(&["10.244.1.0/25", "10.244.9.4/31"], &["10.9.9.9"]);
        let ips = pool_ips(&nn);
        assert_eq!(ips.len(), 126 + 2 + 1);
        assert!(ips.contains(&"10.244.1.1".parse().expect("ip")));
        assert!(ips.contains(&"10.244.1.126".parse().expect("ip")));
        assert!(!ips.contains(&"10.244.1.0".parse().expect("ip")), "network");
        assert!(
            !ips.contains(&"10.244.1.127".parse().expect("ip")),
            "broadcast"
        );
        assert!(
            ips.contains(&"10.244.9.4".parse().expect("ip")),
            "/31: both"
        );
        assert!(
            ips.contains(&"10.9.9.9".parse().expect("ip")),
            "a fixed IP moved in"
        );
        // What the device plugin advertises is what the pool can serve.
        let (cap, unavailable) = capacity(&nn, ips.len());
        assert_eq!((cap, unavailable), (ips.len(), 0));
        let only_cidr = static_node(&["10.244.1.0/25"], &[]);
        assert_eq!(capacity(&only_cidr, pool_ips(&only_cidr).len()).0, 126);
        // A CIDR that is not the network address is taken as its network.
        let sloppy = static_node(&["10.244.1.77/25"], &[]);
        assert_eq!(
            pool_ips(&sloppy).first(),
            Some(&"10.244.1.1".parse().expect("ip"))
        );
        // A huge CIDR is capped, and so is its capacity.
        let huge = static_node(&["10.0.0.0/8"], &[]);
        assert_eq!(pool_ips(&huge).len(), MAX_CIDR_POOL);
        assert_eq!(capacity(&huge, MAX_CIDR_POOL).0, MAX_CIDR_POOL);
        // A cloud node's pod CIDRs (not its provider's source) are ignored.
        let mut cloud = static_node(&["10.244.1.0/25"], &["10.0.0.5"]);
        cloud.spec.provider = sextant_crds::Provider::Aws;
        assert_eq!(
            pool_ips(&cloud),
            vec!["10.0.0.5".parse::<std::net::Ipv4Addr>().expect("ip")]
        );
    }

    #[test]
    fn patch_reports_used_cooling_and_answers() {
        let mut p = mk_pool(4);
        p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip");
        p.free(&b.key(), 0);
        let answers = [("10.0.0.4".to_string(), Some(ReleaseState::ReadyForRelease))].into();
        let v = status_patch(&p, &answers, 1, 0, "2026-11-25T23:00:00Z", &BTreeSet::new());
        assert_eq!(v["status"]["usage"]["used"]["10.0.0.1"], "default/pod-a");
        assert_eq!(v["status"]["usage"]["cooling"][0], "10.0.0.2");
        assert_eq!(v["status"]["release"]["10.0.0.4"], "ready-for-release");
    }

    #[test]
    fn patch_removes_gone_addresses_and_keeps_used_ones() {
        let mut p = mk_pool(4);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let gone: BTreeSet<String> = ["10.0.0.3".to_string(), a.ip.to_string()].into();
        let v = status_patch(&p, &BTreeMap::new(), 0, 0, "x", &gone);
        assert_eq!(v["status"]["usage"]["used"]["10.0.0.3"], Value::Null);
        assert!(
            v["status"]["usage"]["used"]
                .as_object()
                .is_some_and(|m| m.contains_key("10.0.0.3")),
            "an explicit null deletes the key"
        );
        assert_eq!(
            v["status"]["usage"]["used"][a.ip.to_string()],
            "default/pod-a",
            "in use wins over gone"
        );
    }

    #[test]
    fn patch_without_answers_leaves_release_alone() {
        let p = mk_pool(1);
        let v = status_patch(&p, &BTreeMap::new(), 0, 0, "x", &BTreeSet::new());
        assert!(v["status"].get("release").is_none());
    }
}
