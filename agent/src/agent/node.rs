//! NodeNetwork in (pool IPs, fixed IPs, release marks) and the usage report
//! with the handshake answers out.

use std::collections::{BTreeMap, BTreeSet};

use sextant_agent_core::{fixed_ip, handshake, usage};
use sextant_crds::{NodeNetwork, ReleaseState};
use sextant_kit::sync::lock;

use super::{Agent, Phase, now_ms, now_rfc3339};

impl Agent {
    /// Applies a NodeNetwork: pool IPs, fixed IPs (waking ADDs that wait for
    /// one), capacity, and the handshake answers to write back (empty when
    /// nothing changed).
    pub fn apply_node(&self, nn: &NodeNetwork) -> BTreeMap<String, ReleaseState> {
        let mut st = lock(&self.state);
        let ips = usage::pool_ips(nn);
        let n = ips.len();
        st.pool.set_pool(ips);
        st.status_used = nn
            .status
            .as_ref()
            .and_then(|s| s.usage.as_ref())
            .map(|u| u.used.keys().cloned().collect())
            .unwrap_or_default();
        let fixed = nn
            .status
            .as_ref()
            .map(|s| fixed_ip::parse_fixed_ips(&s.fixed_ips))
            .unwrap_or_default();
        st.pool.set_fixed(fixed);
        let (cap, unavailable) = usage::capacity(nn, n);
        st.capacity = cap;
        st.unavailable = unavailable;
        let release = nn
            .status
            .as_ref()
            .map(|s| s.release.clone())
            .unwrap_or_default();
        let answers = handshake::plan(&st.pool, &release, now_ms());
        st.pool.set_releasing(answers.releasing);
        drop(st);
        self.node_changed.send_replace(());
        answers.patch
    }

    /// The usage report with `answers`, `used` whole (a file consumer
    /// replaces it); `None` while restoring.
    pub fn usage_patch(
        &self,
        answers: &BTreeMap<String, ReleaseState>,
    ) -> Option<serde_json::Value> {
        let st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        Some(usage::status_patch(
            &st.pool,
            answers,
            now_ms(),
            &now_rfc3339(),
            &BTreeSet::new(),
        ))
    }

    /// The usage report with `answers` as a JSON merge patch of NodeNetwork
    /// status. A merge patch only adds and changes map keys, so addresses
    /// the status may still list as used (the watch showed them, or the
    /// last patch sent them) and that are no longer in use go as `null`:
    /// otherwise an address once used would stay used there for good.
    /// `None` while restoring.
    pub fn usage_merge_patch(
        &self,
        answers: &BTreeMap<String, ReleaseState>,
    ) -> Option<serde_json::Value> {
        let mut st = lock(&self.state);
        if st.phase == Phase::Restoring {
            return None;
        }
        let in_use: BTreeSet<String> = st.pool.allocations().map(|a| a.ip.to_string()).collect();
        let gone: BTreeSet<String> = st
            .status_used
            .union(&st.sent_used)
            .filter(|ip| !in_use.contains(*ip))
            .cloned()
            .collect();
        let patch = usage::status_patch(&st.pool, answers, now_ms(), &now_rfc3339(), &gone);
        st.sent_used = in_use;
        Some(patch)
    }
}
