//! What the agent watches outside the policy: the Kubernetes objects and
//! files that tell it its node's addresses, fixed IPs and services.
//!
//! ```text
//!  NodeNetwork (API) ─watch─▶ node_network ─▶ Agent::apply_node, usage report into status
//!  NodeNetwork file ─poll─▶ node_file ─▶ Agent::apply_node        (labs, sextantctl lab)
//!  FixedIP (cluster) ─watch─▶ fixed_ip::FixedIpCache ─▶ CNI ADD's fixed-IP decision
//!  Services + EndpointSlices ─watch─▶ batch ─▶ services::desired / diff ─▶ datapath service maps
//! ```
//!
//! The service loop and the policy loop (`crate::policy::watch`) take their
//! events through [`batch`]: drained at once, coalesced per object,
//! recomputed once per batch.

pub(crate) mod batch;
pub(crate) mod fixed_ip;
pub mod node_file;
pub(crate) mod node_network;
pub(crate) mod services;

/// How every agent watch reconnects: [`sextant_kit::backoff::WATCH`] (full
/// jitter, 1 s to 60 s), reset by the watcher after each event. kube's
/// default (800 ms to 30 s, jitter only on top of the doubling) brings
/// thousands of agents that lost the API server back in waves; the
/// thundering-herd figure of `make bench` draws from this same policy.
pub(crate) struct WatchBackoff(sextant_kit::backoff::Retries);

impl WatchBackoff {
    pub(crate) fn new() -> Self {
        WatchBackoff(sextant_kit::backoff::Retries::new(
            sextant_kit::backoff::WATCH,
        ))
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<std::time::Duration> {
        self.0.next()
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.0.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_reconnect_with_full_jitter_up_to_a_minute_and_never_give_up() {
        let mut b = WatchBackoff::new();
        let delays: Vec<_> = b.by_ref().take(40).collect();
        assert_eq!(delays.len(), 40, "a watch never stops retrying");
        assert!(
            delays
                .iter()
                .all(|d| *d <= std::time::Duration::from_secs(60))
        );
        assert!(
            delays[10..]
                .iter()
                .any(|d| *d > std::time::Duration::from_secs(30)),
            "the cap is a minute, not kube's 30 s: {delays:?}"
        );
        kube::runtime::utils::Backoff::reset(&mut b);
        assert!(
            b.next()
                .is_some_and(|d| d <= std::time::Duration::from_secs(1))
        );
    }
}
