use proptest::prelude::*;

use super::*;

fn mk_flow(verdict: Verdict, n: u64) -> Arc<Flow> {
    Arc::new(Flow {
        verdict: verdict as i32,
        uuid: n.to_string(),
        ..Default::default()
    })
}

fn invariant(s: &StoreStatus) {
    assert_eq!(s.seen, s.kept + s.lost, "seen = kept + lost: {s:?}");
    assert_eq!(
        s.lost,
        s.lost_by.iter().map(|l| l.count).sum::<u64>(),
        "lost is the sum of its stages: {s:?}"
    );
}

#[test]
fn a_burst_of_ten_times_capacity_forwarded_flows_evicts_no_drop() {
    let cap = 1_000;
    let every = 33u64;
    let mut store = FlowStore::new(StoreConfig {
        normal: cap,
        priority: 512,
    });
    let forwarded = 10 * cap as u64;
    let mut seq = 0;
    let mut drops = 0u64;
    for i in 0..forwarded {
        store.observe_sequence(0, seq);
        seq += 1;
        store.push(mk_flow(Verdict::Forwarded, i));
        if i % every == 0 {
            store.observe_sequence(0, seq);
            seq += 1;
            drops += 1;
            store.push(mk_flow(Verdict::Dropped, 1_000_000 + i));
        }
    }
    let s = store.status();
    invariant(&s);
    assert_eq!(s.seen, forwarded + drops);
    assert_eq!(s.kept_priority, drops, "every drop survived");
    assert_eq!(s.kept_normal, cap as u64);
    assert_eq!(
        s.lost_by,
        vec![LostCount {
            stage: LossStage::Store,
            reason: "normal_lane_full",
            count: forwarded - cap as u64,
        }]
    );
    let kept_drops = store
        .flows()
        .iter()
        .filter(|f| f.verdict == Verdict::Dropped as i32)
        .count();
    assert_eq!(kept_drops as u64, drops);
}

#[test]
fn flows_come_back_in_arrival_order_across_lanes() {
    let mut store = FlowStore::new(StoreConfig {
        normal: 10,
        priority: 10,
    });
    for (i, v) in [
        Verdict::Forwarded,
        Verdict::Dropped,
        Verdict::Forwarded,
        Verdict::Audit,
        Verdict::Forwarded,
    ]
    .into_iter()
    .enumerate()
    {
        store.push(mk_flow(v, i as u64));
    }
    let order: Vec<String> = store.flows().iter().map(|f| f.uuid.clone()).collect();
    assert_eq!(order, ["0", "1", "2", "3", "4"]);
}

#[test]
fn a_gap_counts_as_sequence_loss_until_a_late_report_explains_it() {
    let mut store = FlowStore::new(StoreConfig::default());
    store.observe_sequence(3, 10);
    store.push(mk_flow(Verdict::Forwarded, 0));
    store.observe_sequence(3, 16);
    store.push(mk_flow(Verdict::Forwarded, 1));
    let s = store.status();
    invariant(&s);
    assert_eq!(s.seen, 7);
    assert_eq!(
        s.lost_by,
        vec![LostCount {
            stage: LossStage::Sequence,
            reason: "unexplained_gap",
            count: 5
        }]
    );
    store.record_lost(Some(3), LossStage::Ring, "ring_full", 5);
    let s = store.status();
    invariant(&s);
    assert_eq!(s.seen, 7, "the report explained the gap, nothing new");
    assert_eq!(
        s.lost_by,
        vec![LostCount {
            stage: LossStage::Ring,
            reason: "ring_full",
            count: 5
        }]
    );
}

#[test]
fn a_sequence_going_backwards_is_a_reset_not_a_loss() {
    let mut store = FlowStore::new(StoreConfig::default());
    store.observe_sequence(0, 100);
    store.observe_sequence(0, 0);
    store.observe_sequence(0, 1);
    let s = store.status();
    assert_eq!(s.sequence_resets, 1);
    assert_eq!(s.lost, 0);
}

#[test]
fn a_lane_of_size_zero_counts_every_flow_lost() {
    let mut store = FlowStore::new(StoreConfig {
        normal: 0,
        priority: 1,
    });
    store.push(mk_flow(Verdict::Forwarded, 0));
    let s = store.status();
    invariant(&s);
    assert_eq!((s.seen, s.kept, s.lost), (1, 0, 1));
}

#[derive(Clone, Debug)]
enum Op {
    Flow {
        cpu: u32,
        skip: u64,
        drop: bool,
    },
    Report {
        cpu: Option<u32>,
        ring: bool,
        n: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u32..4, prop_oneof![6 => Just(0u64), 1 => 0u64..5], any::<bool>())
            .prop_map(|(cpu, skip, drop)| Op::Flow { cpu, skip, drop }),
        1 => (proptest::option::of(0u32..4), any::<bool>(), 0u64..6)
            .prop_map(|(cpu, ring, n)| Op::Report { cpu, ring, n }),
    ]
}

proptest! {
    /// Whatever the producer does, the account balances, matches what was
    /// produced when every loss is reported, and the newest drops survive.
    #[test]
    fn the_account_always_balances(
        ops in proptest::collection::vec(op(), 0..400),
        normal in 0usize..20,
        priority in 1usize..20,
    ) {
        let mut store = FlowStore::new(StoreConfig { normal, priority });
        let mut next = [0u64; 4];
        let mut produced = 0u64;
        let mut reported_for_gaps = 0u64;
        let mut extra_reports = 0u64;
        let mut drops = Vec::new();
        for (i, o) in ops.iter().enumerate() {
            match *o {
                Op::Flow { cpu, skip, drop } => {
                    let c = cpu as usize;
                    let seq = next[c] + skip;
                    // The first event of a CPU starts its count: events
                    // before it are unknowable.
                    if next[c] != 0 {
                        produced += skip;
                        // Report the skipped events as lost at the ring, so
                        // the account must equal what was produced.
                        store.record_lost(Some(cpu), LossStage::Ring, "ring_full", skip);
                        reported_for_gaps += skip;
                    }
                    next[c] = seq + 1;
                    produced += 1;
                    store.observe_sequence(cpu, seq);
                    let v = if drop { Verdict::Dropped } else { Verdict::Forwarded };
                    if drop {
                        drops.push(i.to_string());
                    }
                    store.push(mk_flow(v, i as u64));
                }
                Op::Report { cpu, ring, n } => {
                    let stage = if ring { LossStage::Ring } else { LossStage::Queue };
                    store.record_lost(cpu, stage, "test", n);
                    extra_reports += n;
                }
            }
            let s = store.status();
            prop_assert_eq!(s.seen, s.kept + s.lost);
        }
        let s = store.status();
        prop_assert_eq!(s.lost, s.lost_by.iter().map(|l| l.count).sum::<u64>());
        prop_assert!(reported_for_gaps <= produced);
        prop_assert_eq!(s.seen, produced + extra_reports);
        let kept: Vec<String> = store.flows().iter()
            .filter(|f| f.verdict == Verdict::Dropped as i32)
            .map(|f| f.uuid.clone()).collect();
        let newest: Vec<String> = drops.iter().rev().take(priority).rev().cloned().collect();
        prop_assert_eq!(kept, newest);
    }
}
