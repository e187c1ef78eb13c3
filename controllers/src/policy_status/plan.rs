//! Pure decisions of the policy status controller: what a parse outcome
//! means for the policy's status, its Event and the gauges.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use sextant_crds::{SextantNetworkPolicyStatus, set_condition};
use sextant_policy::{Policy, Result};

/// Longest Event note the API server takes (`events.k8s.io/v1` rejects
/// longer ones); the full list stays in the status condition and the log.
pub(crate) const NOTE_LIMIT: usize = 1024;

/// Why a policy is not enforced, as its Warning Event says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `Unsupported` (a field Sextant does not enforce) or `Invalid`.
    pub(crate) reason: &'static str,
    /// Every problem, one per line, by field path; at most [`NOTE_LIMIT`] bytes.
    pub(crate) note: String,
}

/// What the parse of one policy means.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Verdict {
    /// The `Accepted` condition.
    pub(crate) condition: Condition,
    /// Set when the policy is refused.
    pub(crate) refusal: Option<Refusal>,
}

impl Verdict {
    /// Whether the agent enforces the policy.
    pub(crate) fn accepted(&self) -> bool {
        self.refusal.is_none()
    }
}

/// The verdict on a parse outcome of the object at `generation`.
pub(crate) fn judge(outcome: &Result<Policy>, generation: Option<i64>, now: Timestamp) -> Verdict {
    Verdict {
        condition: sextant_policy::accepted_condition(outcome, generation, now),
        refusal: outcome.as_ref().err().map(|e| Refusal {
            reason: e.reason(),
            note: clamp_note(&e.problems_text()),
        }),
    }
}

/// The status to write after `verdict`, or `None` when `old` already says
/// it (the condition's transition time is kept while its status holds).
pub(crate) fn next_status(
    old: Option<&SextantNetworkPolicyStatus>,
    verdict: &Verdict,
    generation: Option<i64>,
) -> Option<SextantNetworkPolicyStatus> {
    let old = old.cloned().unwrap_or_default();
    let mut new = old.clone();
    set_condition(&mut new.conditions, verdict.condition.clone());
    new.observed_generation = generation;
    (new != old).then_some(new)
}

/// `note` cut to [`NOTE_LIMIT`] bytes at a line (or, failing that, a
/// character) boundary, saying that more is in the status.
pub(crate) fn clamp_note(note: &str) -> String {
    const MORE: &str = "\n... (more in the policy's status and the operator's log)";
    if note.len() <= NOTE_LIMIT {
        return note.to_owned();
    }
    let budget = NOTE_LIMIT - MORE.len();
    let mut cut = budget;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    let head = &note[..cut];
    let head = head.rfind('\n').map_or(head, |i| &head[..i]);
    format!("{head}{MORE}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use serde_json::json;
    use sextant_crds::{
        POLICY_ACCEPTED, REASON_ENFORCED, REASON_INVALID, REASON_UNSUPPORTED, SextantNetworkPolicy,
    };

    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn snp(spec: serde_json::Value) -> SextantNetworkPolicy {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "shop", "generation": 3 },
            "spec": spec,
        }))
        .unwrap()
    }

    fn db_policy() -> SextantNetworkPolicy {
        snp(json!({
            "endpointSelector": { "matchLabels": { "app": "protected-db" } },
            "ingress": [{
                "fromEndpoints": [{ "matchLabels": { "app": "employee" } }],
                "toPorts": [{ "ports": [{ "port": "6379", "protocol": "TCP" }] }],
            }],
        }))
    }

    #[test]
    fn an_enforceable_policy_is_accepted_at_its_generation() {
        let p = db_policy();
        let v = judge(
            &sextant_policy::from_sextant(&p),
            Some(3),
            t("2026-01-01T00:00:00Z"),
        );
        assert!(v.accepted());
        assert_eq!(v.condition.type_, POLICY_ACCEPTED);
        assert_eq!(v.condition.status, "True");
        assert_eq!(v.condition.reason, REASON_ENFORCED);
        assert_eq!(v.condition.observed_generation, Some(3));
    }

    #[test]
    fn unsupported_wins_over_invalid_and_every_path_is_named() {
        let p = snp(json!({
            "endpointSelector": {},
            "ingress": [{
                "fromCIDR": ["10.0.0.0/33"],
                "toPorts": [{ "ports": [{ "port": "80" }], "rules": { "http": [{ "path": "/" }] } }],
            }],
        }));
        let v = judge(
            &sextant_policy::from_sextant(&p),
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        let r = v.refusal.unwrap();
        assert_eq!(r.reason, REASON_UNSUPPORTED);
        assert!(
            r.note.contains("spec.ingress[0].toPorts[0].rules"),
            "{}",
            r.note
        );
        assert!(r.note.contains("spec.ingress[0].fromCIDR[0]"), "{}", r.note);
        assert_eq!(v.condition.status, "False");
        assert_eq!(v.condition.message, r.note);

        let bad = snp(json!({ "endpointSelector": {}, "egress": [{ "toCIDR": ["nope"] }] }));
        let v = judge(
            &sextant_policy::from_sextant(&bad),
            Some(1),
            t("2026-01-01T00:00:00Z"),
        );
        assert_eq!(v.refusal.unwrap().reason, REASON_INVALID);
    }

    #[test]
    fn the_same_verdict_later_writes_nothing_and_a_new_generation_does() {
        let p = db_policy();
        let outcome = sextant_policy::from_sextant(&p);
        let first = judge(&outcome, Some(3), t("2026-01-01T00:00:00Z"));
        let status = next_status(None, &first, Some(3)).unwrap();
        assert_eq!(status.observed_generation, Some(3));
        let later = judge(&outcome, Some(3), t("2026-06-01T00:00:00Z"));
        assert_eq!(next_status(Some(&status), &later, Some(3)), None);
        let bumped = judge(&outcome, Some(4), t("2026-06-01T00:00:00Z"));
        let next = next_status(Some(&status), &bumped, Some(4)).unwrap();
        assert_eq!(next.observed_generation, Some(4));
        assert_eq!(
            next.conditions[0].last_transition_time, status.conditions[0].last_transition_time,
            "still True: the transition time stays"
        );
    }

    #[test]
    fn long_notes_are_cut_at_a_line_within_the_api_limit() {
        let note: String = (0..200)
            .map(|i| format!("spec.ingress[{i}].toPorts[0].rules: L7 rules are not supported é\n"))
            .collect();
        let c = clamp_note(&note);
        assert!(c.len() <= NOTE_LIMIT, "{}", c.len());
        assert!(c.starts_with("spec.ingress[0]."));
        assert!(c.ends_with("(more in the policy's status and the operator's log)"));
        assert!(
            c.lines().rev().nth(1).unwrap().ends_with('é'),
            "whole lines only"
        );
        assert_eq!(clamp_note("short"), "short");
    }
}
