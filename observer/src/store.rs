//! The node's flow store: a bounded in-memory ring with two lanes, and the
//! exact account of every flow the node produced.
//!
//! Drops, denials (audit) and errors go to the priority lane, everything
//! else to the normal lane; each lane overwrites only its own oldest flow,
//! so a burst of forwarded flows never evicts a drop.
//!
//! Accounting, exact at every moment:
//! `seen = kept + lost`, where `seen` is every flow that reached the store
//! plus every flow known lost before it, and `lost` sums the stages: `ring`
//! and `queue` (reported by the producer), `sequence` (gaps in a CPU's
//! sequence numbers beyond what the producer reported for that CPU) and
//! `store` (overwritten, per lane). A report that arrives after the gap it
//! explains moves that count from `sequence` to its stage; the total does
//! not change. `export` losses are per client and outside this sum.
//!
//! Pure: no IO, no clock, no locks.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
};

use crate::{
    api::flow::{Flow, Verdict},
    source::LossStage,
};

/// Sizes of the store's lanes, in flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Forwarded and other normal flows.
    pub normal: usize,
    /// Drops, denials and errors.
    pub priority: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            normal: 65_536,
            priority: 16_384,
        }
    }
}

/// A lane of the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Lane {
    /// Forwarded and other normal flows.
    Normal,
    /// Drops, denials and errors.
    Priority,
}

impl Lane {
    /// The lane a flow belongs to.
    pub fn of(flow: &Flow) -> Lane {
        match Verdict::try_from(flow.verdict) {
            Ok(Verdict::Dropped | Verdict::Audit | Verdict::Error) => Lane::Priority,
            _ => Lane::Normal,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Normal => "normal",
            Lane::Priority => "priority",
        }
    }
}

/// Flows lost at one stage for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostCount {
    /// Where.
    pub stage: LossStage,
    /// Why.
    pub reason: &'static str,
    /// How many.
    pub count: u64,
}

/// The store's account at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Flows held now.
    pub kept: u64,
    /// Flows held now, normal lane.
    pub kept_normal: u64,
    /// Flows held now, priority lane.
    pub kept_priority: u64,
    /// Capacity, both lanes.
    pub capacity: u64,
    /// Every flow known: arrived or lost before arriving.
    pub seen: u64,
    /// Flows that reached the store.
    pub arrived: u64,
    /// Every flow lost up to and including the store (`seen - kept`).
    pub lost: u64,
    /// The same, by stage and reason (zero counts left out).
    pub lost_by: Vec<LostCount>,
    /// Flows clients lost because they read too slowly (not in `lost`).
    pub export_lost: u64,
    /// Times a CPU's sequence went backwards (the producer restarted).
    pub sequence_resets: u64,
}

/// Sequence bookkeeping of one CPU.
#[derive(Clone, Copy, Debug, Default)]
struct CpuSeq {
    /// The sequence number expected next; `None` before the first event.
    next: Option<u64>,
    /// Events missing from the sequence.
    gaps: u64,
    /// Events the producer reported lost for this CPU.
    reported: u64,
}

/// The store. See the module docs for what it promises.
#[derive(Debug)]
pub struct FlowStore {
    config: StoreConfig,
    normal: VecDeque<(u64, Arc<Flow>)>,
    priority: VecDeque<(u64, Arc<Flow>)>,
    next_id: u64,
    arrived: u64,
    reported: BTreeMap<(LossStage, &'static str), u64>,
    overwritten: [u64; 2],
    export_lost: u64,
    cpus: BTreeMap<u32, CpuSeq>,
    resets: u64,
}

impl FlowStore {
    /// An empty store with lanes of `config`'s sizes.
    pub fn new(config: StoreConfig) -> Self {
        FlowStore {
            config,
            normal: VecDeque::with_capacity(config.normal.min(1 << 16)),
            priority: VecDeque::with_capacity(config.priority.min(1 << 16)),
            next_id: 0,
            arrived: 0,
            reported: BTreeMap::new(),
            overwritten: [0; 2],
            export_lost: 0,
            cpus: BTreeMap::new(),
            resets: 0,
        }
    }

    /// The lane sizes.
    pub fn config(&self) -> StoreConfig {
        self.config
    }

    /// Notes that `cpu` emitted the event numbered `seq`; a jump counts the
    /// events in between as missing.
    pub fn observe_sequence(&mut self, cpu: u32, seq: u64) {
        let c = self.cpus.entry(cpu).or_default();
        match c.next {
            Some(next) if seq >= next => c.gaps += seq - next,
            Some(_) => self.resets += 1,
            None => {}
        }
        c.next = Some(seq.saturating_add(1));
    }

    /// Records that the producer lost `count` events of `cpu` at `stage`.
    pub fn record_lost(
        &mut self,
        cpu: Option<u32>,
        stage: LossStage,
        reason: &'static str,
        n: u64,
    ) {
        *self.reported.entry((stage, reason)).or_default() += n;
        if let Some(cpu) = cpu {
            self.cpus.entry(cpu).or_default().reported += n;
        }
    }

    /// Records that a client lost `n` flows it read too slowly for.
    pub fn record_export_lost(&mut self, n: u64) {
        self.export_lost += n;
    }

    /// Stores `flow` in its lane, overwriting that lane's oldest flow when
    /// full. Returns the lane.
    pub fn push(&mut self, flow: Arc<Flow>) -> Lane {
        self.arrived += 1;
        let lane = Lane::of(&flow);
        let (q, cap) = match lane {
            Lane::Normal => (&mut self.normal, self.config.normal),
            Lane::Priority => (&mut self.priority, self.config.priority),
        };
        let id = self.next_id;
        self.next_id += 1;
        if cap == 0 {
            self.overwritten[lane as usize] += 1;
            return lane;
        }
        if q.len() >= cap {
            q.pop_front();
            self.overwritten[lane as usize] += 1;
        }
        q.push_back((id, flow));
        lane
    }

    /// Flows held now.
    pub fn len(&self) -> usize {
        self.normal.len() + self.priority.len()
    }

    /// Whether no flow is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every flow held, in arrival order across both lanes.
    pub fn flows(&self) -> Vec<Arc<Flow>> {
        let mut out = Vec::with_capacity(self.len());
        let (mut a, mut b) = (
            self.normal.iter().peekable(),
            self.priority.iter().peekable(),
        );
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.0 < y.0 => a.next(),
                (Some(_), Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next(),
                (None, None) => break,
            };
            if let Some((_, f)) = next {
                out.push(f.clone());
            }
        }
        out
    }

    /// The account now.
    pub fn status(&self) -> StoreStatus {
        let mut lost_by: Vec<LostCount> = self
            .reported
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(&(stage, reason), &count)| LostCount {
                stage,
                reason,
                count,
            })
            .collect();
        let unexplained: u64 = self
            .cpus
            .values()
            .map(|c| c.gaps.saturating_sub(c.reported))
            .sum();
        if unexplained > 0 {
            lost_by.push(LostCount {
                stage: LossStage::Sequence,
                reason: "unexplained_gap",
                count: unexplained,
            });
        }
        for lane in [Lane::Normal, Lane::Priority] {
            let n = self.overwritten[lane as usize];
            if n > 0 {
                lost_by.push(LostCount {
                    stage: LossStage::Store,
                    reason: match lane {
                        Lane::Normal => "normal_lane_full",
                        Lane::Priority => "priority_lane_full",
                    },
                    count: n,
                });
            }
        }
        // Reports without a CPU, and reports beyond a CPU's gaps, are
        // losses the sequence could not show: they count too.
        let upstream: u64 = self.reported.values().sum::<u64>() + unexplained;
        let lost: u64 = lost_by.iter().map(|l| l.count).sum();
        let kept = self.len() as u64;
        StoreStatus {
            kept,
            kept_normal: self.normal.len() as u64,
            kept_priority: self.priority.len() as u64,
            capacity: (self.config.normal + self.config.priority) as u64,
            seen: self.arrived + upstream,
            arrived: self.arrived,
            lost,
            lost_by,
            export_lost: self.export_lost,
            sequence_resets: self.resets,
        }
    }
}

#[cfg(test)]
mod tests;
