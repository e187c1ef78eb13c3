//! The agent's side of the per-IP release handshake in NodeNetwork
//! `status.release`: the operator marks an IP, the agent answers
//! `ready-for-release` only when the IP is free and out of cooldown (and then
//! never hands it out), `do-not-release` otherwise; once the operator wrote
//! `released` and the address left the pool, the agent deletes the entry. A fixed IP (NodeNetwork
//! `status.fixedIps`) belongs to its pod wherever it is: always `do-not-release`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use sextant_crds::ReleaseState;

use crate::pool::Pool;

/// What the agent writes back and which IPs it now keeps back for release.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// `status.release` entries to write (only changes); `None` deletes the
    /// entry (JSON merge patch `null`).
    pub patch: BTreeMap<String, Option<ReleaseState>>,
    /// IPs the pool must not hand out, as they are promised to the operator.
    pub releasing: BTreeSet<Ipv4Addr>,
}

/// Answers the handshake for `release` (NodeNetwork `status.release`) at `now_ms`.
pub fn plan(pool: &Pool, release: &BTreeMap<String, ReleaseState>, now_ms: u64) -> Answers {
    let mut out = Answers::default();
    for (key, state) in release {
        let Ok(ip) = key.parse::<Ipv4Addr>() else {
            // Not an address we could ever hand out: nothing to hold back.
            if *state == ReleaseState::Marked {
                out.patch
                    .insert(key.clone(), Some(ReleaseState::ReadyForRelease));
            }
            continue;
        };
        if pool.is_fixed(ip) {
            if matches!(state, ReleaseState::Marked | ReleaseState::ReadyForRelease) {
                out.patch
                    .insert(key.clone(), Some(ReleaseState::DoNotRelease));
            }
            continue;
        }
        match state {
            ReleaseState::Marked => {
                if pool.is_free(ip, now_ms)
                    || pool.releasing().contains(&ip) && !pool.is_allocated(ip)
                {
                    out.patch
                        .insert(key.clone(), Some(ReleaseState::ReadyForRelease));
                    out.releasing.insert(ip);
                } else {
                    out.patch
                        .insert(key.clone(), Some(ReleaseState::DoNotRelease));
                }
            }
            ReleaseState::ReadyForRelease => {
                if pool.is_allocated(ip) {
                    // Cannot happen through this agent; a stale promise must not cost a pod its IP.
                    out.patch
                        .insert(key.clone(), Some(ReleaseState::DoNotRelease));
                } else {
                    out.releasing.insert(ip);
                }
            }
            ReleaseState::Released if pool.ips().contains(&ip) => {
                // The pool still lists it (the operator's pool change comes
                // next, or it gives the address back and clears the entry):
                // held back until then.
                out.releasing.insert(ip);
            }
            ReleaseState::Released => {
                // Gone from the node: the handshake for it is over. Dropping
                // the entry keeps `status.release` bounded and lets the
                // address be used at once if the cloud gives it back.
                out.patch.insert(key.clone(), None);
            }
            ReleaseState::DoNotRelease => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{
        pool::DEFAULT_COOLDOWN_MS,
        testing::{mk_pool, mk_req},
    };

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    #[test]
    fn ready_for_release_only_for_free_ips_out_of_cooldown() {
        let mut p = mk_pool(4);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip"); // .1
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip"); // .2
        p.free(&b.key(), 0); // .2 cooling
        let release: BTreeMap<_, _> = [ip(1), ip(2), ip(3)]
            .iter()
            .map(|i| (i.to_string(), ReleaseState::Marked))
            .collect();
        let ans = plan(&p, &release, 1);
        assert_eq!(
            ans.patch[&a.ip.to_string()],
            Some(ReleaseState::DoNotRelease)
        );
        assert_eq!(
            ans.patch[&ip(2).to_string()],
            Some(ReleaseState::DoNotRelease)
        );
        assert_eq!(
            ans.patch[&ip(3).to_string()],
            Some(ReleaseState::ReadyForRelease)
        );
        assert_eq!(ans.releasing, [ip(3)].into());

        let later = plan(&p, &release, DEFAULT_COOLDOWN_MS + 1);
        assert_eq!(
            later.patch[&ip(2).to_string()],
            Some(ReleaseState::ReadyForRelease)
        );
    }

    #[test]
    fn ips_promised_for_release_are_not_handed_out() {
        let mut p = mk_pool(1);
        let release = [(ip(1).to_string(), ReleaseState::Marked)].into();
        let ans = plan(&p, &release, 0);
        p.set_releasing(ans.releasing);
        assert!(p.allocate(&mk_req("a"), 0, "t").is_err());
        // The operator cancels (drops the entry): the IP is usable again.
        let ans = plan(&p, &BTreeMap::new(), 0);
        p.set_releasing(ans.releasing);
        assert!(p.allocate(&mk_req("a"), 0, "t").is_ok());
    }

    #[test]
    fn released_entry_is_dropped_once_the_address_left_the_pool() {
        // The operator released 10.0.0.3 in the cloud and took it out of the pool.
        let mut p = mk_pool(2);
        let release = [(ip(3).to_string(), ReleaseState::Released)].into();
        let ans = plan(&p, &release, 0);
        assert_eq!(
            ans.patch.get(&ip(3).to_string()),
            Some(&None),
            "the agent deletes a released entry (merge patch null)"
        );
        assert!(ans.releasing.is_empty(), "nothing left to hold back");
        // The cloud hands the same address to this node again: usable at once.
        p.set_pool([ip(1), ip(2), ip(3)]);
        let ans = plan(&p, &BTreeMap::new(), 0);
        p.set_releasing(ans.releasing);
        for id in ["a", "b", "c"] {
            p.allocate(&mk_req(id), 0, "t")
                .expect("every pool address can be handed out");
        }
    }

    #[test]
    fn released_entry_still_in_the_pool_stays_held_back() {
        // Released in the status while the pool still lists it (the operator
        // writes the pool change next): not handed out, the entry kept.
        let p = mk_pool(2);
        let release = [(ip(2).to_string(), ReleaseState::Released)].into();
        let ans = plan(&p, &release, 0);
        assert!(ans.patch.is_empty(), "{:?}", ans.patch);
        assert_eq!(ans.releasing, [ip(2)].into());
    }

    #[test]
    fn fixed_ips_are_never_ready_for_release() {
        let mut p = mk_pool(2);
        p.set_fixed([(ip(2), "db/web-0".to_string())].into());
        let release = [
            (ip(1).to_string(), ReleaseState::Marked),
            (ip(2).to_string(), ReleaseState::Marked),
        ]
        .into();
        let ans = plan(&p, &release, 0);
        assert_eq!(
            ans.patch[&ip(1).to_string()],
            Some(ReleaseState::ReadyForRelease)
        );
        assert_eq!(
            ans.patch[&ip(2).to_string()],
            Some(ReleaseState::DoNotRelease)
        );
        assert_eq!(ans.releasing, [ip(1)].into());
        // A promise given before the address became fixed is withdrawn.
        let release = [(ip(2).to_string(), ReleaseState::ReadyForRelease)].into();
        let ans = plan(&p, &release, 0);
        assert_eq!(
            ans.patch[&ip(2).to_string()],
            Some(ReleaseState::DoNotRelease)
        );
        assert!(ans.releasing.is_empty());
    }

    proptest! {
        /// The handshake never agrees to release an IP in use or in cooldown.
        #[test]
        fn never_releases_a_used_ip(used in proptest::collection::btree_set(1u8..=8, 0..8),
                                    cooling in proptest::collection::btree_set(1u8..=8, 0..8),
                                    marked in proptest::collection::btree_set(1u8..=8, 0..8)) {
            let mut p = mk_pool(8);
            let mut now = 0;
            for i in &cooling {
                let r = mk_req(&format!("c{i}"));
                if let Ok(a) = p.allocate(&r, now, "t") { p.free(&a.key(), now); }
            }
            now += 1;
            for i in &used {
                let _ = p.allocate(&mk_req(&format!("u{i}")), now, "t");
            }
            let release = marked.iter().map(|i| (ip(*i).to_string(), ReleaseState::Marked)).collect();
            let ans = plan(&p, &release, now);
            for (k, st) in &ans.patch {
                if *st == Some(ReleaseState::ReadyForRelease) {
                    let a: Ipv4Addr = k.parse().expect("ip key");
                    prop_assert!(!p.is_allocated(a));
                    prop_assert!(!p.is_cooling(a, now));
                }
            }
        }
    }
}
