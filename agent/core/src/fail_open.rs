//! The policy fail-open decision, pure: whether the last-resort mode lifts
//! enforcement now, and which pods it opens. The agent measures how long
//! the control plane has been away and passes it in; it does the probe, the
//! map writes, the metrics and the events.
//!
//! ```text
//!  armed (PolicyFailOpen) ─┐
//!  not engaged yet ────────┤
//!  a snapshot to open ─────┼─▶ due(away) ─▶ probe fails ─▶ open the pods `selects` matches
//!  away >= after ──────────┘
//! ```

use std::{collections::BTreeMap, time::Duration};

/// Last-resort opening of policy-selected pods while the control plane is
/// unreachable (off unless configured; docs/network-policy.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyFailOpen {
    /// How long without the control plane before it engages.
    pub after: Duration,
    /// Pod labels (all must match) of the pods it opens; empty opens every local pod.
    pub selector: BTreeMap<String, String>,
}

impl PolicyFailOpen {
    /// Whether the mode engages now: not engaged already, a snapshot to
    /// open, and no contact with the control plane for `away` >= `after`.
    pub fn due(&self, engaged: bool, has_snapshot: bool, away: Duration) -> bool {
        !engaged && has_snapshot && away >= self.after
    }

    /// Whether it opens a pod with these labels (every selector label matches).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(after_s: u64, selector: &[(&str, &str)]) -> PolicyFailOpen {
        PolicyFailOpen {
            after: Duration::from_secs(after_s),
            selector: selector
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn due_only_past_the_delay_with_a_snapshot_and_once() {
        let c = cfg(60, &[]);
        assert!(!c.due(false, true, Duration::from_secs(59)));
        assert!(c.due(false, true, Duration::from_secs(60)));
        assert!(c.due(false, true, Duration::from_secs(3600)));
        assert!(
            !c.due(true, true, Duration::from_secs(3600)),
            "engaged already"
        );
        assert!(
            !c.due(false, false, Duration::from_secs(3600)),
            "nothing to open"
        );
    }

    #[test]
    fn selector_needs_every_label_and_empty_selects_all() {
        let labels: BTreeMap<String, String> = [("app", "db"), ("tier", "data")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(cfg(1, &[]).selects(&labels));
        assert!(cfg(1, &[]).selects(&BTreeMap::new()));
        assert!(cfg(1, &[("app", "db")]).selects(&labels));
        assert!(cfg(1, &[("app", "db"), ("tier", "data")]).selects(&labels));
        assert!(!cfg(1, &[("app", "db"), ("tier", "web")]).selects(&labels));
        assert!(!cfg(1, &[("app", "web")]).selects(&labels));
    }
}
