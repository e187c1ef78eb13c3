//! The fixed-IP decision of a CNI ADD. The FixedIP controller moves a
//! StatefulSet pod's address to an ENI of the node the pod runs on and lists
//! it in that node's NodeNetwork `status.fixedIps` (address -> `ns/name`).
//! The agent hands such an address to its pod only, and a CNI ADD for a pod
//! that has a `FixedIP` waits, bounded, until the address shows up there.
//!
//! ```text
//!  CNI ADD ns/name ─▶ decide(pod, fixedIps, lookup, now, deadline)
//!                       ├─ named in fixedIps          ─▶ Fixed(ip)   allocate exactly ip
//!                       ├─ not yet looked up          ─▶ Lookup      ask for FixedIP ns/name
//!                       ├─ FixedIP 404                ─▶ Any         any free IP (never a fixed one)
//!                       ├─ FixedIP found, before end  ─▶ Wait(ip)    until the NodeNetwork changes
//!                       └─ FixedIP found, deadline    ─▶ TimedOut    CNI error, kubelet retries
//! ```
//!
//! Pure: the lookup's answer and the time come in (any ordered clock: the
//! agent passes tokio's, the simulator its own).

use std::{collections::BTreeMap, net::Ipv4Addr, time::Duration};

use crate::pool::Pool;

/// Default bound on how long a CNI ADD waits for its fixed IP to reach the node.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Parses NodeNetwork `status.fixedIps` into address -> `namespace/name`;
/// keys that are not IPv4 addresses cannot be handed out and are skipped.
pub fn parse_fixed_ips(raw: &BTreeMap<String, String>) -> BTreeMap<Ipv4Addr, String> {
    raw.iter()
        .filter_map(|(ip, pod)| Some((ip.parse().ok()?, pod.clone())))
        .collect()
}

/// What the API server said about the pod's `FixedIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No `FixedIP` of that name (or no API to ask): an ordinary pod.
    NotFound,
    /// The pod's fixed address (`spec.ip`).
    Found(Ipv4Addr),
}

/// What a CNI ADD does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An ordinary pod: any free IP of the pool.
    Any,
    /// The pod's fixed IP is on this node: hand out exactly this address.
    Fixed(Ipv4Addr),
    /// Not named in `fixedIps`: ask whether the pod has a `FixedIP`.
    Lookup,
    /// The pod's fixed IP is not on this node yet: wait for the NodeNetwork.
    Wait(Ipv4Addr),
    /// The deadline passed and the address is still not here.
    TimedOut(Ipv4Addr),
}

/// Decides the ADD of pod `pod` (`namespace/name`; empty when the runtime
/// did not say) from this node's `pool` (its addresses and `fixedIps`), the
/// `FixedIP` lookup made so far, and the time against the ADD's deadline.
///
/// A pod named in `fixedIps` gets its address only once the address is in
/// the pool too: the operator names the pod on its new node before the
/// cloud moves the address there, and until it has moved, traffic to it
/// would still go to the old node.
pub fn decide<T: PartialOrd>(
    pod: &str,
    pool: &Pool,
    lookup: Option<Lookup>,
    now: T,
    deadline: T,
) -> Decision {
    if pod.is_empty() || pod.starts_with('/') || pod.ends_with('/') {
        // Without a pod name no FixedIP can be named after it.
        return Decision::Any;
    }
    if let Some((ip, _)) = pool.fixed().iter().find(|(_, owner)| owner.as_str() == pod) {
        if pool.ips().contains(ip) {
            return Decision::Fixed(*ip);
        }
        return if now >= deadline {
            Decision::TimedOut(*ip)
        } else {
            Decision::Wait(*ip)
        };
    }
    match lookup {
        None => Decision::Lookup,
        Some(Lookup::NotFound) => Decision::Any,
        Some(Lookup::Found(ip)) if now >= deadline => Decision::TimedOut(ip),
        Some(Lookup::Found(ip)) => Decision::Wait(ip),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::pool::DEFAULT_COOLDOWN_MS;

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    /// A pool holding `entries`' addresses, each a fixed IP of its pod.
    fn mk_fixed(entries: &[(u8, &str)]) -> Pool {
        let mut pool = Pool::new(DEFAULT_COOLDOWN_MS);
        pool.set_pool(entries.iter().map(|(i, _)| ip(*i)));
        pool.set_fixed(
            entries
                .iter()
                .map(|(i, p)| (ip(*i), p.to_string()))
                .collect(),
        );
        pool
    }

    #[test]
    fn a_pod_named_before_its_address_reached_the_pool_waits_for_the_move() {
        let now = Instant::now();
        let deadline = now + DEFAULT_WAIT;
        // Named on this node, the cloud move not landed yet.
        let mut pool = Pool::new(DEFAULT_COOLDOWN_MS);
        pool.set_fixed([(ip(9), "db/web-0".to_string())].into());
        assert_eq!(
            decide("db/web-0", &pool, None, now, deadline),
            Decision::Wait(ip(9))
        );
        assert_eq!(
            decide("db/web-0", &pool, None, deadline, deadline),
            Decision::TimedOut(ip(9))
        );
        pool.set_pool([ip(9)]);
        assert_eq!(
            decide("db/web-0", &pool, None, now, deadline),
            Decision::Fixed(ip(9))
        );
    }

    #[test]
    fn pod_named_in_fixed_ips_gets_exactly_its_address_without_a_lookup() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0"), (8, "db/web-1")]);
        assert_eq!(
            decide("db/web-1", &fixed, None, now, now),
            Decision::Fixed(ip(8)),
            "even past the deadline"
        );
    }

    #[test]
    fn pod_not_named_is_looked_up_first() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0")]);
        assert_eq!(
            decide("db/web-1", &fixed, None, now, now + DEFAULT_WAIT),
            Decision::Lookup
        );
    }

    #[test]
    fn pod_without_fixed_ip_takes_any_free_address() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0")]);
        let d = decide(
            "db/other",
            &fixed,
            Some(Lookup::NotFound),
            now,
            now + DEFAULT_WAIT,
        );
        assert_eq!(d, Decision::Any);
        assert_eq!(
            decide("", &fixed, None, now, now),
            Decision::Any,
            "no pod name: nothing to look up"
        );
    }

    #[test]
    fn pod_whose_fixed_ip_is_elsewhere_waits_until_the_deadline() {
        let now = Instant::now();
        let deadline = now + DEFAULT_WAIT;
        // Listed here for another pod: not this pod's to take.
        let fixed = mk_fixed(&[(9, "db/web-2")]);
        let found = Some(Lookup::Found(ip(9)));
        assert_eq!(
            decide("db/web-0", &fixed, found, now, deadline),
            Decision::Wait(ip(9))
        );
        assert_eq!(
            decide(
                "db/web-0",
                &fixed,
                found,
                deadline - Duration::from_millis(1),
                deadline
            ),
            Decision::Wait(ip(9))
        );
        assert_eq!(
            decide("db/web-0", &fixed, found, deadline, deadline),
            Decision::TimedOut(ip(9))
        );
        let arrived = mk_fixed(&[(9, "db/web-0")]);
        assert_eq!(
            decide("db/web-0", &arrived, found, deadline, deadline),
            Decision::Fixed(ip(9)),
            "arrival wins over the deadline"
        );
    }

    #[test]
    fn status_keys_that_are_not_addresses_are_skipped() {
        let raw = [
            ("10.0.0.7".to_string(), "db/web-0".to_string()),
            ("fe80::1".to_string(), "db/web-1".to_string()),
        ]
        .into();
        assert_eq!(
            parse_fixed_ips(&raw),
            mk_fixed(&[(7, "db/web-0")]).fixed().clone()
        );
    }
}
