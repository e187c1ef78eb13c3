//! The agent's usage report into NodeNetwork status, as data: which IPs
//! the node holds, what it can hold, and the status merge patch (usage and
//! handshake answers). Sending it is the agent's.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use sextant_crds::{NodeNetwork, ReleaseState};

use crate::pool::Pool;

/// Node IPs from NodeNetwork status: the pool keys that parse as IPv4.
pub fn pool_ips(nn: &NodeNetwork) -> Vec<std::net::Ipv4Addr> {
    nn.status
        .as_ref()
        .map(|s| s.pool.keys().filter_map(|k| k.parse().ok()).collect())
        .unwrap_or_default()
}

/// `(capacity, unavailable)` for the agent API: `maxAllocate` when set, else
/// the addresses of the static pod CIDRs, else the pool itself.
pub fn capacity(nn: &NodeNetwork, pool_len: usize) -> (usize, usize) {
    let from_cidrs: usize = nn
        .spec
        .pod_cidrs
        .iter()
        .filter_map(|c| sextant_crds::parse_ipv4_cidr(c))
        .map(|(_, len)| (1usize << (32 - u32::from(len))).saturating_sub(2))
        .sum();
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
