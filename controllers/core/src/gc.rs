//! ENI garbage collection: Sextant-tagged ENIs of this cluster seen
//! unattached for longer than a grace period are deleted, a few per round.
//! The grace counts from when the collector first saw the ENI unattached
//! ([`GcState`]), never from its creation; an ENI holding an address a
//! FixedIP names is never deleted (its address waits to be parked or
//! moved). Untagged ENIs, parking ENIs, and those of other clusters are
//! never touched, nor are ENIs the operator made and is still attaching
//! ([`Attaching`]): at scale an attach can wait in the client's rate limiter
//! for longer than the grace, and a collector that took such an ENI turned
//! the attach into a NotFound and the node's creation into a wasted pair of
//! mutations.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::Duration,
};

use jiff::Timestamp;
use sextant_cloud::{Eni, EniState, EniTags, ROLE_PARKING, TAG_ROLE};
use sextant_kit::sync::lock;

/// ENIs this process created and has not yet attached (or rolled back):
/// shared by node IPAM, which registers each between its create and the
/// end of its attach, and the collector, which never takes them. Clones
/// share one set.
#[derive(Clone, Debug, Default)]
pub struct Attaching {
    ids: Arc<Mutex<BTreeSet<String>>>,
}

impl Attaching {
    /// Registers `eni_id` until the returned guard is dropped (also when
    /// the reconcile holding it is cancelled: then nobody attaches the ENI
    /// any more and the collector may take it after its grace).
    pub fn begin(&self, eni_id: &str) -> AttachingGuard {
        lock(&self.ids).insert(eni_id.to_owned());
        AttachingGuard {
            attaching: self.clone(),
            eni_id: eni_id.to_owned(),
        }
    }

    /// The ENIs being attached now.
    pub fn ids(&self) -> BTreeSet<String> {
        lock(&self.ids).clone()
    }

    /// How many ENIs are being attached now.
    pub fn len(&self) -> usize {
        lock(&self.ids).len()
    }

    /// Whether no ENI is being attached.
    pub fn is_empty(&self) -> bool {
        lock(&self.ids).is_empty()
    }
}

/// Keeps one ENI in [`Attaching`] while it lives.
#[derive(Debug)]
pub struct AttachingGuard {
    attaching: Attaching,
    eni_id: String,
}

impl Drop for AttachingGuard {
    fn drop(&mut self) {
        lock(&self.attaching.ids).remove(&self.eni_id);
    }
}

/// Settings of the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcPolicy {
    /// How long an ENI may stay unattached (AWS VPC CNI: 5 minutes).
    pub grace: Duration,
    /// Most deletions per round, so a large leak drains without a burst.
    pub per_round: usize,
}

impl Default for GcPolicy {
    fn default() -> Self {
        GcPolicy {
            grace: Duration::from_secs(300),
            per_round: 20,
        }
    }
}

/// What the collector remembers between rounds: when it first saw each
/// candidate ENI unattached. The grace runs from there, not from the ENI's
/// creation tag: a dead node's ENIs are years old when their instance goes,
/// and must still wait out the grace (time for the fixed-IP controller to
/// park their addresses). After an operator restart the grace starts over,
/// which only delays a deletion.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcState {
    detached_since: BTreeMap<String, Timestamp>,
}

/// One round's decision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcRound {
    /// ENIs to delete, longest unattached first.
    pub delete: Vec<String>,
    /// ENIs past the grace kept because they hold an address a FixedIP names.
    pub held: Vec<String>,
    /// ENIs unattached but still within the grace.
    pub waiting: usize,
}

impl GcState {
    /// Decides this round over a VPC listing `enis` at `now`: Sextant ENIs
    /// of `cluster` (never parking ENIs) seen unattached for at least the
    /// grace, at most `per_round`, never one holding an address of
    /// `fixed_ips` (primary or secondary) nor one in `attaching` (created
    /// by this process and on its way to an instance: its grace starts
    /// over once it leaves the set still unattached). Remembers first
    /// sightings and forgets ENIs that are attached again or gone.
    pub fn plan(
        &mut self,
        enis: &[Eni],
        cluster: &str,
        now: Timestamp,
        policy: GcPolicy,
        fixed_ips: &BTreeSet<Ipv4Addr>,
        attaching: &BTreeSet<String>,
    ) -> GcRound {
        let grace =
            jiff::SignedDuration::try_from(policy.grace).unwrap_or(jiff::SignedDuration::MAX);
        let candidates: Vec<&Eni> = enis
            .iter()
            .filter(|e| e.state == EniState::Available && e.attachment.is_none())
            .filter(|e| e.tags.get(TAG_ROLE).map(String::as_str) != Some(ROLE_PARKING))
            .filter(|e| EniTags::parse(&e.tags).is_some_and(|t| t.cluster == cluster))
            .filter(|e| !attaching.contains(&e.id))
            .collect();
        let ids: BTreeSet<&str> = candidates.iter().map(|e| e.id.as_str()).collect();
        self.detached_since
            .retain(|id, _| ids.contains(id.as_str()));
        let mut out = GcRound::default();
        let mut due: Vec<(Timestamp, &str)> = Vec::new();
        for e in candidates {
            let since = *self.detached_since.entry(e.id.clone()).or_insert(now);
            if now.duration_since(since) < grace {
                out.waiting += 1;
            } else if std::iter::once(&e.primary_ip)
                .chain(&e.secondary_ips)
                .any(|ip| fixed_ips.contains(ip))
            {
                out.held.push(e.id.clone());
            } else {
                due.push((since, e.id.as_str()));
            }
        }
        due.sort();
        out.delete = due
            .into_iter()
            .take(policy.per_round)
            .map(|(_, id)| id.to_owned())
            .collect();
        out
    }

    /// ENIs being timed.
    pub fn tracked(&self) -> usize {
        self.detached_since.len()
    }
}

/// The ENIs to delete this round, oldest first, judged by the creation tag
/// alone. Stateless, for simulations that create and leak ENIs themselves;
/// it cannot tell when a live ENI was detached nor which addresses FixedIPs
/// name, so the operator uses [`GcState::plan`].
pub fn plan_gc(enis: &[Eni], cluster: &str, now: Timestamp, policy: GcPolicy) -> Vec<String> {
    let grace = jiff::SignedDuration::try_from(policy.grace).unwrap_or(jiff::SignedDuration::MAX);
    let mut candidates: Vec<(Timestamp, &str)> = enis
        .iter()
        .filter(|e| e.state == EniState::Available && e.attachment.is_none())
        // Parking ENIs hold reserved fixed IPs while no node has them.
        .filter(|e| e.tags.get(TAG_ROLE).map(String::as_str) != Some(ROLE_PARKING))
        .filter_map(|e| {
            let tags = EniTags::parse(&e.tags)?;
            (tags.cluster == cluster && now.duration_since(tags.created_at) >= grace)
                .then_some((tags.created_at, e.id.as_str()))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .take(policy.per_round)
        .map(|(_, id)| id.to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_cloud::{Attachment, Tags};

    fn eni(id: &str, tags: Tags, attached: bool) -> Eni {
        Eni {
            id: id.into(),
            subnet_id: "s".into(),
            vpc_id: "v".into(),
            zone: "z".into(),
            mac: String::new(),
            primary_ip: Ipv4Addr::new(10, 0, 0, 1),
            secondary_ips: vec![],
            security_groups: vec![],
            tags,
            state: if attached {
                EniState::InUse
            } else {
                EniState::Available
            },
            attachment: attached.then(|| Attachment {
                id: String::new(),
                instance_id: "i".into(),
                device_index: 1,
            }),
        }
    }

    fn ours(cluster: &str, at: &str) -> Tags {
        EniTags {
            cluster: cluster.into(),
            node: "n".into(),
            created_at: at.parse().unwrap(),
        }
        .to_tags()
    }

    #[test]
    fn deletes_only_our_unattached_enis_past_the_grace_period() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let enis = vec![
            eni("old-ours", ours("prod", "2026-11-25T11:50:00Z"), false),
            eni("young-ours", ours("prod", "2026-11-25T11:58:00Z"), false),
            eni("attached-ours", ours("prod", "2026-11-25T10:00:00Z"), true),
            eni(
                "other-cluster",
                ours("staging", "2026-11-25T10:00:00Z"),
                false,
            ),
            eni("untagged", Tags::new(), false),
            eni(
                "parking",
                {
                    let mut t = ours("prod", "2026-11-25T10:00:00Z");
                    t.insert(TAG_ROLE.into(), ROLE_PARKING.into());
                    t
                },
                false,
            ),
            eni(
                "hand-made",
                Tags::from([("sextant.io/cluster".into(), "prod".into())]),
                false,
            ),
        ];
        assert_eq!(
            plan_gc(&enis, "prod", now, GcPolicy::default()),
            vec!["old-ours".to_string()]
        );
    }

    #[test]
    fn a_large_leak_drains_oldest_first_a_batch_per_round() {
        let now: Timestamp = "2026-11-25T12:00:00Z".parse().unwrap();
        let enis: Vec<_> = (0..50)
            .map(|i| {
                eni(
                    &format!("e{i:02}"),
                    ours("prod", &format!("2026-11-25T10:{:02}:00Z", 59 - i)),
                    false,
                )
            })
            .collect();
        let round = plan_gc(
            &enis,
            "prod",
            now,
            GcPolicy {
                per_round: 5,
                ..GcPolicy::default()
            },
        );
        assert_eq!(round, ["e49", "e48", "e47", "e46", "e45"]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod state_tests {
    use super::*;
    use sextant_cloud::Attachment;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    /// A pod ENI of `prod` created a year ago, holding 10.0.0.`ips`.
    fn old_eni(id: &str, attached: bool, ips: &[u8]) -> Eni {
        Eni {
            id: id.into(),
            subnet_id: "s".into(),
            vpc_id: "v".into(),
            zone: "z".into(),
            mac: String::new(),
            primary_ip: Ipv4Addr::new(10, 0, 1, 1),
            secondary_ips: ips.iter().map(|i| Ipv4Addr::new(10, 0, 0, *i)).collect(),
            security_groups: vec![],
            tags: EniTags {
                cluster: "prod".into(),
                node: "dead".into(),
                created_at: ts("2025-11-25T12:00:00Z"),
            }
            .to_tags(),
            state: if attached {
                EniState::InUse
            } else {
                EniState::Available
            },
            attachment: attached.then(|| Attachment {
                id: "a".into(),
                instance_id: "i-dead".into(),
                device_index: 1,
            }),
        }
    }

    #[test]
    fn a_dead_nodes_old_eni_waits_out_the_grace_from_its_detachment() {
        let mut gc = GcState::default();
        let policy = GcPolicy::default();
        let none = BTreeSet::new();
        // Attached while the node lives.
        let r = gc.plan(
            &[old_eni("eni-1", true, &[5])],
            "prod",
            ts("2026-11-25T12:00:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert!(r.delete.is_empty());
        // The instance is terminated: the ENI is unattached, a year after
        // its creation. The first round must not delete it.
        let detached = [old_eni("eni-1", false, &[5])];
        let r = gc.plan(
            &detached,
            "prod",
            ts("2026-11-25T12:01:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert!(
            r.delete.is_empty(),
            "deleted in the first round after detachment: {r:?}"
        );
        let r = gc.plan(
            &detached,
            "prod",
            ts("2026-11-25T12:05:59Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert!(r.delete.is_empty(), "within the grace: {r:?}");
        let r = gc.plan(
            &detached,
            "prod",
            ts("2026-11-25T12:06:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert_eq!(r.delete, ["eni-1"]);
    }

    #[test]
    fn an_eni_holding_a_fixed_ip_is_never_deleted() {
        let mut gc = GcState::default();
        let policy = GcPolicy::default();
        let fixed = BTreeSet::from([Ipv4Addr::new(10, 0, 0, 7)]);
        let enis = [
            old_eni("eni-fixed", false, &[6, 7]),
            old_eni("eni-plain", false, &[8]),
        ];
        gc.plan(
            &enis,
            "prod",
            ts("2026-11-25T12:00:00Z"),
            policy,
            &fixed,
            &BTreeSet::new(),
        );
        let r = gc.plan(
            &enis,
            "prod",
            ts("2026-11-25T13:00:00Z"),
            policy,
            &fixed,
            &BTreeSet::new(),
        );
        assert_eq!(r.delete, ["eni-plain"], "{r:?}");
        assert_eq!(r.held, ["eni-fixed"]);
        // Once the address is parked elsewhere, the ENI goes.
        let r = gc.plan(
            &enis[..1],
            "prod",
            ts("2026-11-25T13:05:00Z"),
            policy,
            &BTreeSet::new(),
            &BTreeSet::new(),
        );
        assert_eq!(r.delete, ["eni-fixed"]);
    }

    #[test]
    fn an_eni_attached_again_starts_its_grace_over() {
        let mut gc = GcState::default();
        let policy = GcPolicy::default();
        let none = BTreeSet::new();
        gc.plan(
            &[old_eni("eni-1", false, &[])],
            "prod",
            ts("2026-11-25T12:00:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        gc.plan(
            &[old_eni("eni-1", true, &[])],
            "prod",
            ts("2026-11-25T12:04:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert_eq!(gc.tracked(), 0);
        let r = gc.plan(
            &[old_eni("eni-1", false, &[])],
            "prod",
            ts("2026-11-25T12:06:00Z"),
            policy,
            &none,
            &BTreeSet::new(),
        );
        assert!(r.delete.is_empty(), "{r:?}");
        assert_eq!(r.waiting, 1);
    }

    #[test]
    fn an_eni_being_attached_is_never_collected_and_its_grace_starts_over_after() {
        let mut gc = GcState::default();
        let policy = GcPolicy::default();
        let none = BTreeSet::new();
        let attaching = Attaching::default();
        let unattached = [old_eni("eni-new", false, &[5])];
        // Created, its attach queued behind the rate limiter for longer
        // than the grace: before, the second round deleted it and the
        // attach failed with NotFound.
        let guard = attaching.begin("eni-new");
        for at in [
            "2026-11-25T12:00:00Z",
            "2026-11-25T12:10:00Z",
            "2026-11-25T12:20:00Z",
        ] {
            let r = gc.plan(&unattached, "prod", ts(at), policy, &none, &attaching.ids());
            assert!(r.delete.is_empty(), "collected while attaching: {r:?}");
            assert_eq!(r.waiting, 0);
        }
        assert_eq!(gc.tracked(), 0);
        // The attach was given up (the reconcile was cancelled): the ENI is
        // a leftover now, collected a grace after it left the set.
        drop(guard);
        assert!(attaching.is_empty());
        let r = gc.plan(
            &unattached,
            "prod",
            ts("2026-11-25T12:25:00Z"),
            policy,
            &none,
            &attaching.ids(),
        );
        assert!(r.delete.is_empty(), "{r:?}");
        let r = gc.plan(
            &unattached,
            "prod",
            ts("2026-11-25T12:30:00Z"),
            policy,
            &none,
            &attaching.ids(),
        );
        assert_eq!(r.delete, ["eni-new"]);
    }
}
