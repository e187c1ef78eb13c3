//! The verdict on every policy the operator has seen: feeds the
//! `sextant_operator_policies{state}` gauge and remembers which refusals of
//! NetworkPolicies (which have no status to remember them) were reported.
//!
//! Synchronous `apply` / `delete` / `retain` behind a lock that is never
//! held across an `.await`: reconciles apply, the watches delete and, after
//! a relist, retain what is still there.

use std::{
    collections::BTreeMap,
    sync::{Mutex, MutexGuard, PoisonError},
};

use super::plan::Verdict;

/// Which policy source an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Source {
    /// `sextant.io/v1alpha1` SextantNetworkPolicy.
    Sextant,
    /// `networking.k8s.io/v1` NetworkPolicy.
    Kubernetes,
}

/// One policy object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct PolicyKey {
    /// Its source.
    pub(crate) source: Source,
    /// Namespace.
    pub(crate) namespace: String,
    /// Name.
    pub(crate) name: String,
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.source {
            Source::Sextant => "SextantNetworkPolicy",
            Source::Kubernetes => "NetworkPolicy",
        };
        write!(f, "{kind}/{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug)]
struct Entry {
    accepted: bool,
    /// The refusal last reported: generation, reason and note.
    reported: Option<(Option<i64>, &'static str, String)>,
}

/// Accepted and rejected policies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Policies the agent enforces.
    pub(crate) accepted: usize,
    /// Policies refused.
    pub(crate) rejected: usize,
}

/// Verdicts by policy.
#[derive(Debug, Default)]
pub(crate) struct PolicyIndex {
    entries: Mutex<BTreeMap<PolicyKey, Entry>>,
}

impl PolicyIndex {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<PolicyKey, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the verdict on `key` at `generation`; returns whether its
    /// refusal is news, i.e. not the one last reported (and notes it as
    /// reported). An accepted policy forgets its old refusal, so refusing
    /// it again is news again.
    pub(crate) fn apply(
        &self,
        key: &PolicyKey,
        verdict: &Verdict,
        generation: Option<i64>,
    ) -> bool {
        let mut entries = self.lock();
        let entry = entries.entry(key.clone()).or_insert(Entry {
            accepted: true,
            reported: None,
        });
        entry.accepted = verdict.accepted();
        let now = verdict
            .refusal
            .as_ref()
            .map(|r| (generation, r.reason, r.note.clone()));
        let news = now.is_some() && now != entry.reported;
        entry.reported = now;
        news
    }

    /// Forgets a deleted policy (the controller forgets through
    /// [`PolicyIndex::retain`] after relists).
    #[cfg(test)]
    pub(crate) fn delete(&self, key: &PolicyKey) {
        self.lock().remove(key);
    }

    /// Keeps, of `source`, only the policies `present` says still exist
    /// (after a relist, which does not report what was deleted meanwhile).
    pub(crate) fn retain(&self, source: Source, present: impl Fn(&PolicyKey) -> bool) {
        self.lock().retain(|k, _| k.source != source || present(k));
    }

    /// How many policies are accepted and rejected.
    pub(crate) fn counts(&self) -> Counts {
        let entries = self.lock();
        let accepted = entries.values().filter(|e| e.accepted).count();
        Counts {
            accepted,
            rejected: entries.len() - accepted,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::{super::plan::Refusal, *};

    fn key(source: Source, name: &str) -> PolicyKey {
        PolicyKey {
            source,
            namespace: "shop".into(),
            name: name.into(),
        }
    }

    fn verdict(refused: Option<&str>) -> Verdict {
        Verdict {
            condition: sextant_crds::condition(
                "Accepted",
                refused.is_none(),
                "R",
                "",
                None,
                jiff::Timestamp::UNIX_EPOCH,
            ),
            refusal: refused.map(|note| Refusal {
                reason: "Unsupported",
                note: note.into(),
            }),
        }
    }

    #[test]
    fn a_refusal_is_news_once_per_generation_and_problem_list() {
        let idx = PolicyIndex::default();
        let k = key(Source::Kubernetes, "np");
        assert!(idx.apply(&k, &verdict(Some("a")), Some(1)));
        assert!(
            !idx.apply(&k, &verdict(Some("a")), Some(1)),
            "periodic requeue"
        );
        assert!(
            idx.apply(&k, &verdict(Some("a")), Some(2)),
            "new generation"
        );
        assert!(
            idx.apply(&k, &verdict(Some("b")), Some(2)),
            "other problems"
        );
        assert!(!idx.apply(&k, &verdict(None), Some(3)));
        assert!(idx.apply(&k, &verdict(Some("b")), Some(2)), "refused again");
    }

    #[test]
    fn counts_follow_applies_deletes_and_relists() {
        let idx = PolicyIndex::default();
        idx.apply(&key(Source::Sextant, "a"), &verdict(None), Some(1));
        idx.apply(&key(Source::Sextant, "b"), &verdict(Some("x")), Some(1));
        idx.apply(&key(Source::Kubernetes, "a"), &verdict(Some("y")), Some(1));
        assert_eq!(
            idx.counts(),
            Counts {
                accepted: 1,
                rejected: 2
            }
        );
        idx.apply(&key(Source::Sextant, "b"), &verdict(None), Some(2));
        assert_eq!(
            idx.counts(),
            Counts {
                accepted: 2,
                rejected: 1
            }
        );
        idx.delete(&key(Source::Sextant, "a"));
        assert_eq!(
            idx.counts(),
            Counts {
                accepted: 1,
                rejected: 1
            }
        );
        // A relist of SextantNetworkPolicies that no longer has `b` leaves
        // the NetworkPolicy of the same name alone.
        idx.retain(Source::Sextant, |_| false);
        assert_eq!(
            idx.counts(),
            Counts {
                accepted: 0,
                rejected: 1
            }
        );
    }
}
