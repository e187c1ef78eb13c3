//! NodeNetwork in (pool IPs, fixed IPs, release marks) and the usage report
//! with the handshake answers out; both decided in
//! [`sextant_agent_core::node::LocalIpam`].

use std::time::Duration;

use sextant_agent_core::node::Answers;
use sextant_crds::NodeNetwork;
use sextant_kit::sync::lock;

use super::{Agent, Phase, now_ms, now_rfc3339};

impl Agent {
    /// Applies a NodeNetwork: pool IPs, fixed IPs (waking ADDs that wait for
    /// one), capacity, and the handshake answers to write back (empty when
    /// nothing changed).
    pub fn apply_node(&self, nn: &NodeNetwork) -> Answers {
        let answers = lock(&self.state).node.apply(nn, now_ms());
        self.node_changed.send_replace(());
        answers
    }

    /// The usage report with `answers`, `used` whole (a file consumer
    /// replaces it); `None` while restoring.
    pub fn usage_patch(&self, answers: &Answers) -> Option<serde_json::Value> {
        let mut st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        Some(st.node.full_report(answers, now_ms(), &now_rfc3339()))
    }

    /// The usage report with `answers` as a JSON merge patch of NodeNetwork
    /// status, when one is due with reports every `interval`: at once for
    /// answers or more pods waiting on an empty pool, otherwise only when
    /// the usage changed and the interval passed. `None` when nothing is
    /// due, and while restoring.
    pub fn usage_merge_patch(
        &self,
        answers: &Answers,
        interval: Duration,
    ) -> Option<serde_json::Value> {
        let mut st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        let interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        st.node
            .report(answers, now_ms(), interval_ms, &now_rfc3339())
    }

    /// Waits until an ADD found the pool empty (the report is due at once).
    pub async fn pool_starved(&self) {
        self.report_now.notified().await;
    }
}
