//! Orphaned parking addresses: a Reserve parks an address on its subnet's
//! parking ENI *before* the FixedIP naming it exists (the cloud picks the
//! address), so a crash or a refused create in between leaves an address on
//! an ENI that garbage collection never touches. The sweep gives back every
//! address on the cluster's parking ENIs that no FixedIP has named for a
//! grace period; an address a FixedIP names is never given back.
//!
//! ```text
//!  cloud listing ─▶ parked_addresses (this cluster's parking ENIs) ─┐
//!  every FixedIP's spec.ip (a fresh list, read after the cloud) ────┼─▶ plan_sweep (pure)
//!  orphans of the last sweep, with when each was first seen ────────┘     │
//!        release: orphaned since at least the grace ─▶ release_orphans (unassign)
//!        waiting: orphans still in their grace ─▶ the next sweep's input
//! ```
//!
//! Reading the cloud before the FixedIPs matters: an address parked after
//! the cloud read is not looked at, one parked before it whose FixedIP is
//! created after the FixedIP read is an orphan for one sweep only, which the
//! grace covers. Nothing is given back on a first sighting.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    time::Duration,
};

use jiff::{SignedDuration, Timestamp};
use sextant_cloud::{Eni, EniCloud, EniTags, Error as CloudError, ROLE_PARKING, TAG_ROLE};

use super::execute::Parking;

/// One address on one of the cluster's parking ENIs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedAddress {
    /// The address.
    pub ip: Ipv4Addr,
    /// The parking ENI holding it.
    pub eni: String,
}

/// Whether `e` is one of `cluster`'s parking ENIs.
pub fn is_parking(e: &Eni, cluster: &str) -> bool {
    EniTags::parse(&e.tags).is_some_and(|t| t.cluster == cluster)
        && e.tags.get(TAG_ROLE).map(String::as_str) == Some(ROLE_PARKING)
}

/// The addresses on `cluster`'s parking ENIs in a cloud listing.
pub fn parked_addresses(enis: &[Eni], cluster: &str) -> Vec<ParkedAddress> {
    enis.iter()
        .filter(|e| is_parking(e, cluster))
        .flat_map(|e| {
            e.secondary_ips.iter().map(|ip| ParkedAddress {
                ip: *ip,
                eni: e.id.clone(),
            })
        })
        .collect()
}

/// Orphaned parked addresses and when a sweep first saw each one orphaned.
pub type FirstSeen = BTreeMap<Ipv4Addr, Timestamp>;

/// What one sweep does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepPlan {
    /// Addresses to give back, by the parking ENI holding them.
    pub release: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Orphans still within their grace, with when each was first seen:
    /// the next sweep's `seen`.
    pub waiting: FirstSeen,
}

impl SweepPlan {
    /// How many addresses it gives back.
    pub fn releases(&self) -> usize {
        self.release.values().map(Vec::len).sum()
    }
}

/// Decides one sweep. `parked`: the parking ENIs' addresses as listed;
/// `named`: every address a FixedIP of the cluster names (`spec.ip`), listed
/// after `parked`; `seen`: the orphans of the previous sweep. An address is
/// given back only when no FixedIP names it, an earlier sweep saw it orphaned
/// too, and that was at least `grace` before `now`. Pure: no clock, no IO.
pub fn plan_sweep(
    parked: &[ParkedAddress],
    named: &BTreeSet<Ipv4Addr>,
    seen: &FirstSeen,
    now: Timestamp,
    grace: Duration,
) -> SweepPlan {
    let grace = SignedDuration::try_from(grace).unwrap_or(SignedDuration::MAX);
    let mut plan = SweepPlan::default();
    for p in parked {
        if named.contains(&p.ip) {
            continue;
        }
        match seen.get(&p.ip) {
            Some(first) if now.duration_since(*first) >= grace => {
                plan.release.entry(p.eni.clone()).or_default().push(p.ip);
            }
            Some(first) => {
                plan.waiting.insert(p.ip, *first);
            }
            None => {
                plan.waiting.insert(p.ip, now);
            }
        }
    }
    plan
}

/// Gives the planned addresses back to their subnets, ENI by ENI; an ENI
/// already gone took its addresses with it. Stops at the first failure and
/// returns what was given back with it.
pub async fn release_orphans(
    cloud: &dyn EniCloud,
    parking: &Parking,
    plan: &SweepPlan,
) -> (Vec<(String, Ipv4Addr)>, Option<CloudError>) {
    let mut done = Vec::new();
    for (eni, ips) in &plan.release {
        match cloud.unassign_ips(eni, ips).await {
            Ok(()) | Err(CloudError::NotFound { .. }) => {
                parking.forget(eni, ips.len());
                done.extend(ips.iter().map(|ip| (eni.clone(), *ip)));
            }
            Err(e) => return (done, Some(e)),
        }
    }
    (done, None)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use sextant_cloud::Tags;

    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    fn parked(ips: &[(u8, &str)]) -> Vec<ParkedAddress> {
        ips.iter()
            .map(|(i, eni)| ParkedAddress {
                ip: ip(*i),
                eni: (*eni).to_owned(),
            })
            .collect()
    }

    const GRACE: Duration = Duration::from_secs(300);

    #[test]
    fn an_orphan_is_given_back_only_after_two_sightings_a_grace_apart() {
        let p = parked(&[(5, "eni-p"), (6, "eni-p"), (7, "eni-q")]);
        let named = BTreeSet::from([ip(6)]);
        let first = plan_sweep(
            &p,
            &named,
            &FirstSeen::new(),
            at("2026-11-25T12:00:00Z"),
            GRACE,
        );
        assert_eq!(first.releases(), 0, "nothing goes on a first sighting");
        assert_eq!(
            first.waiting,
            FirstSeen::from([
                (ip(5), at("2026-11-25T12:00:00Z")),
                (ip(7), at("2026-11-25T12:00:00Z")),
            ]),
            "the named address is no orphan"
        );
        let early = plan_sweep(
            &p,
            &named,
            &first.waiting,
            at("2026-11-25T12:04:59Z"),
            GRACE,
        );
        assert_eq!(early.releases(), 0);
        assert_eq!(early.waiting, first.waiting, "first sightings are kept");
        let due = plan_sweep(
            &p,
            &named,
            &early.waiting,
            at("2026-11-25T12:05:00Z"),
            GRACE,
        );
        assert_eq!(
            due.release,
            BTreeMap::from([("eni-p".into(), vec![ip(5)]), ("eni-q".into(), vec![ip(7)])])
        );
        assert!(due.waiting.is_empty());
    }

    #[test]
    fn an_orphan_a_fixed_ip_names_by_the_next_sweep_is_kept_and_forgotten() {
        let p = parked(&[(5, "eni-p")]);
        let first = plan_sweep(
            &p,
            &BTreeSet::new(),
            &FirstSeen::new(),
            at("2026-11-25T12:00:00Z"),
            GRACE,
        );
        // The FixedIP's create was only late: it names the address now.
        let later = plan_sweep(
            &p,
            &BTreeSet::from([ip(5)]),
            &first.waiting,
            at("2026-11-25T13:00:00Z"),
            GRACE,
        );
        assert_eq!(later, SweepPlan::default());
        // An orphan that left parking (moved to a node) is forgotten too.
        let gone = plan_sweep(
            &[],
            &BTreeSet::new(),
            &first.waiting,
            at("2026-11-25T13:00:00Z"),
            GRACE,
        );
        assert_eq!(gone, SweepPlan::default());
    }

    #[test]
    fn a_clock_that_went_back_gives_nothing_back() {
        let p = parked(&[(5, "eni-p")]);
        let seen = FirstSeen::from([(ip(5), at("2026-11-25T12:00:00Z"))]);
        let plan = plan_sweep(
            &p,
            &BTreeSet::new(),
            &seen,
            at("2026-11-25T11:00:00Z"),
            GRACE,
        );
        assert_eq!(plan.releases(), 0);
        assert_eq!(plan.waiting, seen);
    }

    #[test]
    fn only_this_clusters_parking_enis_are_swept() {
        let mk = |id: &str, cluster: &str, parking: bool, ips: &[u8]| {
            let mut tags = EniTags {
                cluster: cluster.into(),
                node: String::new(),
                created_at: at("2026-11-25T12:00:00Z"),
            }
            .to_tags();
            if parking {
                tags.insert(TAG_ROLE.into(), ROLE_PARKING.into());
            }
            Eni {
                id: id.into(),
                subnet_id: "s".into(),
                vpc_id: "v".into(),
                zone: "z".into(),
                mac: String::new(),
                primary_ip: ip(1),
                secondary_ips: ips.iter().map(|i| ip(*i)).collect(),
                security_groups: vec![],
                tags,
                state: sextant_cloud::EniState::Available,
                attachment: None,
            }
        };
        let mut untagged = mk("eni-untagged", "c1", true, &[9]);
        untagged.tags = Tags::from([(TAG_ROLE.to_owned(), ROLE_PARKING.to_owned())]);
        let enis = [
            mk("eni-ours", "c1", true, &[5, 6]),
            mk("eni-node", "c1", false, &[7]),
            mk("eni-theirs", "c2", true, &[8]),
            untagged,
        ];
        assert_eq!(
            parked_addresses(&enis, "c1"),
            parked(&[(5, "eni-ours"), (6, "eni-ours")])
        );
    }

    proptest! {
        /// Over any sequence of sweeps: no address a FixedIP names is ever
        /// given back, and none before it was seen orphaned a grace earlier.
        #[test]
        fn a_sweep_never_gives_back_a_named_address_nor_one_within_its_grace(
            rounds in proptest::collection::vec(
                (
                    proptest::collection::btree_set(0u8..16, 0..12),
                    proptest::collection::btree_set(0u8..16, 0..12),
                    0i64..400,
                ),
                1..12,
            )
        ) {
            let mut seen = FirstSeen::new();
            let mut now = at("2026-11-25T12:00:00Z");
            let grace = Duration::from_secs(300);
            for (on_parking, named, step) in rounds {
                now = now.checked_add(SignedDuration::from_secs(step)).unwrap();
                let p: Vec<ParkedAddress> = on_parking
                    .iter()
                    .map(|i| ParkedAddress { ip: ip(*i), eni: format!("eni-{}", i % 3) })
                    .collect();
                let named: BTreeSet<Ipv4Addr> = named.iter().map(|i| ip(*i)).collect();
                let plan = plan_sweep(&p, &named, &seen, now, grace);
                for (eni, ips) in &plan.release {
                    for a in ips {
                        prop_assert!(!named.contains(a), "{a} is named");
                        let first = seen.get(a).copied();
                        prop_assert!(
                            first.is_some_and(|f| now.duration_since(f) >= SignedDuration::from_secs(300)),
                            "{a} given back before its grace: first seen {first:?}, now {now}"
                        );
                        prop_assert!(p.iter().any(|x| x.ip == *a && x.eni == *eni));
                    }
                }
                for x in &p {
                    let released = plan.release.values().flatten().any(|a| *a == x.ip);
                    prop_assert_eq!(
                        named.contains(&x.ip) || released,
                        !plan.waiting.contains_key(&x.ip),
                        "every orphan is either given back or waits"
                    );
                }
                seen = plan.waiting;
            }
        }
    }
}
