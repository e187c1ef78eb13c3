//! Network policy on this node: control-plane snapshots into the datapath,
//! re-applied when local pods change, and the last-resort fail-open mode
//! (decided in [`sextant_agent_core::fail_open`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use sextant_kit::sync::lock;
use tracing::warn;

use super::{Agent, now_rfc3339};
use crate::{
    error::Result,
    policy::{self, NodePolicy, PolicyReport, PolicySnapshot},
};

/// The last-resort fail-open mode's settings and decision (pure, in core).
pub use sextant_agent_core::fail_open::PolicyFailOpen;

pub(super) struct PolicyState {
    pub(super) node: NodePolicy,
    /// The last snapshot from the control plane, re-applied when local pods change.
    pub(super) last: Option<PolicySnapshot>,
    pub(super) control_plane_seen: std::time::Instant,
    pub(super) fail_open: Option<PolicyFailOpen>,
    /// Whether the fail-open mode has lifted enforcement.
    pub(super) engaged: bool,
    /// Kubernetes Events to post once the API server can be reached.
    pub(super) events: Vec<PolicyEvent>,
    /// A map write failed: the engine moved on but the maps may lag, so
    /// the next sync loads the engine's whole contents.
    pub(super) rewrite: bool,
}

/// An Event about this node's policy enforcement (fail-open engaged or lifted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEvent {
    /// Warning (engaged) or Normal (restored).
    pub warning: bool,
    /// `PolicyFailOpen` or `PolicyRestored`.
    pub reason: &'static str,
    /// What happened, when.
    pub note: String,
}

impl Agent {
    /// Brings network policy to `snap`, the control plane's whole desired
    /// state (the kube watches or `PUT /v1/policy` send it), and writes the
    /// map changes into the datapath.
    pub fn sync_policy(&self, snap: PolicySnapshot) -> Result<PolicyReport> {
        let mut ps = lock(&self.policy);
        ps.control_plane_seen = std::time::Instant::now();
        ps.last = Some(snap);
        let report = self.apply_policy(&mut ps)?;
        self.restore_enforcement(&mut ps)?;
        Ok(report)
    }

    /// Puts back the enforcement the fail-open mode lifted (nothing when it
    /// is not engaged); stays engaged, to be tried again, if the maps refuse.
    fn restore_enforcement(&self, ps: &mut PolicyState) -> Result<()> {
        if !ps.engaged {
            return Ok(());
        }
        if let Some(dp) = lock(&self.datapath).as_mut() {
            policy::write_all(dp, ps.node.engine())?;
        }
        ps.engaged = false;
        self.metrics.policy_fail_open.set(0);
        warn!("control plane back: policy enforcement restored");
        ps.events.push(PolicyEvent {
            warning: false,
            reason: "PolicyRestored",
            note: format!("policy enforcement restored at {}", now_rfc3339()),
        });
        Ok(())
    }

    /// Takes the policy Events waiting to be posted.
    pub fn take_policy_events(&self) -> Vec<PolicyEvent> {
        std::mem::take(&mut lock(&self.policy).events)
    }

    /// Puts back Events that could not be posted (oldest first, at most 16 kept).
    pub fn requeue_policy_events(&self, mut events: Vec<PolicyEvent>) {
        let mut ps = lock(&self.policy);
        events.append(&mut ps.events);
        let skip = events.len().saturating_sub(16);
        ps.events = events.into_iter().skip(skip).collect();
    }

    /// Identities local pods use that `given` does not bind yet.
    pub fn unpublished_identities(
        &self,
        given: &BTreeMap<u32, BTreeMap<String, String>>,
    ) -> Vec<(u32, BTreeMap<String, String>)> {
        lock(&self.policy).node.unpublished(given)
    }

    /// The last sync's outcome, with current counts.
    pub fn policy_report(&self) -> PolicyReport {
        let ps = lock(&self.policy);
        let c = ps.node.engine().contents();
        PolicyReport {
            enforced: c.policy_names.values().cloned().collect(),
            rejected: ps.node.rejected().to_vec(),
            identities: BTreeMap::new(),
            changes: 0,
            policy_entries: c.policy.len(),
        }
    }

    /// Re-applies the last snapshot after local pods changed.
    pub(super) fn resync_policy(&self) {
        let mut ps = lock(&self.policy);
        if ps.last.is_none() {
            return;
        }
        if let Err(e) = self.apply_policy(&mut ps) {
            self.metrics.error(&e);
            warn!(error = %sextant_kit::ErrorChain(&e), "policy resync failed");
        }
    }

    fn apply_policy(&self, ps: &mut PolicyState) -> Result<PolicyReport> {
        let Some(mut snap) = ps.last.clone() else {
            return Ok(PolicyReport::default());
        };
        // Local pods carry the IPs this node handed them, whatever the snapshot says.
        let local: BTreeMap<(String, String), Ipv4Addr> = lock(&self.state)
            .node
            .pool()
            .allocations()
            .map(|a| ((a.pod_namespace.clone(), a.pod_name.clone()), a.ip))
            .collect();
        for p in &mut snap.pods {
            if let Some(ip) = local.get(&(p.namespace.clone(), p.name.clone())) {
                p.ip = Some(*ip);
            }
        }
        let local_ips: BTreeSet<Ipv4Addr> = local.values().copied().collect();
        let names_before = ps.node.engine().contents().policy_names.clone();
        let (diffs, report) = ps.node.sync(&snap, &local_ips);
        for (policy, entries) in ps.node.newly_over_budget().to_vec() {
            warn!(%policy, entries, "policy refused: over the per-policy entry budget");
            ps.events.push(PolicyEvent {
                warning: true,
                reason: "PolicyTooLarge",
                note: format!(
                    "{policy} expands to {entries} policy map entries on this node, over the per-policy budget; refused, other policies unaffected"
                ),
            });
        }
        // A deleted policy's verdict series goes with it, and a slot it
        // freed starts from zero for the next policy given it.
        let names = &ps.node.engine().contents().policy_names;
        let now: BTreeSet<&String> = names.values().collect();
        for gone in names_before.values().filter(|n| !now.contains(n)) {
            self.metrics.forget_policy(gone);
        }
        let freed: Vec<u32> = names_before
            .iter()
            .filter(|(slot, name)| names.get(slot) != Some(*name))
            .map(|(slot, _)| *slot)
            .collect();
        let mut dp = lock(&self.datapath);
        if let Some(dp) = dp.as_mut() {
            let written = (|| -> Result<()> {
                for slot in &freed {
                    dp.reset_verdicts(*slot)?;
                }
                for d in &diffs {
                    policy::write_diff(dp, d)?;
                }
                if ps.rewrite {
                    let stale = policy::write_all(dp, ps.node.engine())?;
                    if stale > 0 {
                        tracing::info!(stale, "stale policy map entries removed");
                    }
                }
                for ((ns, name), ip) in &local {
                    if let Some(id) = ps.node.identity_of_pod(ns, name) {
                        dp.set_endpoint_identity(*ip, id)?;
                    }
                }
                Ok(())
            })();
            // Written or not, the engine has moved on: only a full load
            // brings maps that missed a diff back (the watch loop retries).
            ps.rewrite = written.is_err();
            written?;
        }
        self.metrics
            .policy_sync(&report, ps.node.engine().contents());
        Ok(report)
    }

    /// Caps the policy map entries one policy may expand to (0: no cap).
    pub fn set_policy_entry_budget(&self, max: usize) {
        lock(&self.policy).node.set_entry_budget(max);
    }

    /// Turns on the last-resort fail-open mode.
    pub fn enable_policy_fail_open(&self, cfg: PolicyFailOpen) {
        lock(&self.policy).fail_open = Some(cfg);
    }

    /// Records contact with the control plane (a usage report written, a
    /// read answered, a policy sync): the fail-open clock starts over, and
    /// enforcement the fail-open mode lifted comes back (a quiet cluster may
    /// send no watch event for a long time after it returns).
    pub fn control_plane_seen(&self) {
        let mut ps = lock(&self.policy);
        ps.control_plane_seen = std::time::Instant::now();
        if let Err(e) = self.restore_enforcement(&mut ps) {
            self.metrics.error(&e);
            warn!(error = %sextant_kit::ErrorChain(&e), "restoring policy enforcement failed");
        }
    }

    /// Checks every `every` whether the control plane has been away longer
    /// than the fail-open delay. Quiet is not away: before lifting anything
    /// it asks `probe` (one read from the API server; `true` when it was
    /// answered), and an answer counts as contact. Only when the probe fails
    /// too are the selected local pods opened (their allow entries stay, so
    /// the next contact restores them).
    pub async fn watch_policy_fail_open<P, F>(self: Arc<Self>, every: Duration, probe: P)
    where
        P: Fn() -> F,
        F: std::future::Future<Output = bool>,
    {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.fail_open_tick(&probe).await {
                self.metrics.error(&e);
                warn!(error = %sextant_kit::ErrorChain(&e), "fail-open check failed");
            }
        }
    }

    /// One check of [`Agent::watch_policy_fail_open`].
    pub(super) async fn fail_open_tick<P, F>(&self, probe: &P) -> Result<()>
    where
        P: Fn() -> F,
        F: std::future::Future<Output = bool>,
    {
        if !self.fail_open_due() {
            return Ok(());
        }
        if probe().await {
            self.control_plane_seen();
            return Ok(());
        }
        self.check_fail_open()
    }

    /// Armed, not engaged, a snapshot to open, and no contact for the delay.
    fn fail_open_due(&self) -> bool {
        let ps = lock(&self.policy);
        ps.fail_open.as_ref().is_some_and(|cfg| {
            cfg.due(
                ps.engaged,
                ps.last.is_some(),
                ps.control_plane_seen.elapsed(),
            )
        })
    }

    pub(super) fn check_fail_open(&self) -> Result<()> {
        let mut ps = lock(&self.policy);
        let Some(cfg) = ps.fail_open.clone() else {
            return Ok(());
        };
        if !cfg.due(
            ps.engaged,
            ps.last.is_some(),
            ps.control_plane_seen.elapsed(),
        ) {
            return Ok(());
        }
        let Some(snap) = ps.last.clone() else {
            return Ok(());
        };
        let selected: BTreeSet<u32> = snap
            .pods
            .iter()
            .filter(|p| cfg.selects(&p.labels))
            .filter_map(|p| ps.node.identity_of_pod(&p.namespace, &p.name))
            .collect();
        let mut opened = 0usize;
        if let Some(dp) = lock(&self.datapath).as_mut() {
            for (id, _) in dp.enforced() {
                if selected.contains(&id) {
                    dp.set_enforced(id, 0)?;
                    opened += 1;
                }
            }
        }
        ps.engaged = true;
        self.metrics.policy_fail_open.set(1);
        self.metrics.policy_fail_open_engaged.inc();
        let away = ps.control_plane_seen.elapsed().as_secs();
        ps.events.push(PolicyEvent {
            warning: true,
            reason: "PolicyFailOpen",
            note: format!(
                "no control plane for {away} s (fail-open after {} s): enforcement lifted for {opened} identities at {}",
                cfg.after.as_secs(),
                now_rfc3339()
            ),
        });
        warn!(
            away_s = ps.control_plane_seen.elapsed().as_secs(),
            identities = opened,
            "control plane unreachable past the fail-open delay: policy opened for selected pods"
        );
        Ok(())
    }
}
