//! The interface the kernel side feeds: a bounded channel of decoded flow
//! records, each with its CPU and that CPU's sequence number, and loss
//! reports; and the enrichment the agent provides from its endpoint state.
//!
//! Contract for the producer: number every event it *tries* to emit, per
//! CPU, consecutively, so an event lost anywhere shows as a gap; report
//! every loss it knows of ([`FlowSender::kernel_lost`]) so the gap is
//! explained. A gap nobody explained is still counted, as stage `sequence`.

use std::{collections::BTreeMap, net::IpAddr};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::record::FlowRecord;

/// Where in the pipeline flows were lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LossStage {
    /// The kernel could not write the event (ring buffer full, per CPU).
    Ring,
    /// The user-space queue from the reader thread to the store was full.
    Queue,
    /// A gap in a CPU's sequence numbers that no loss report explained.
    Sequence,
    /// A store lane was full and overwrote its oldest flow.
    Store,
    /// A client read too slowly and its bounded buffer was full.
    Export,
}

impl LossStage {
    /// The metric and API label.
    pub fn as_str(self) -> &'static str {
        match self {
            LossStage::Ring => "ring",
            LossStage::Queue => "queue",
            LossStage::Sequence => "sequence",
            LossStage::Store => "store",
            LossStage::Export => "export",
        }
    }
}

/// One flow event from the datapath.
#[derive(Clone, Debug, PartialEq)]
pub struct FlowEvent {
    /// The CPU that emitted it.
    pub cpu: u32,
    /// That CPU's sequence number for it.
    pub seq: u64,
    /// What was seen.
    pub record: FlowRecord,
}

/// What travels from the reader thread to the store.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceMsg {
    /// A flow.
    Flow(FlowEvent),
    /// `count` events of `cpu` were lost at `stage` (ring or queue).
    Lost {
        /// The CPU whose events were lost.
        cpu: u32,
        /// Where.
        stage: LossStage,
        /// Why, as a metric label (`ring_full`, `queue_full`).
        reason: &'static str,
        /// How many.
        count: u64,
    },
}

/// The store's end of the channel.
#[derive(Debug)]
pub struct FlowSource {
    pub(crate) rx: mpsc::Receiver<SourceMsg>,
}

/// The reader thread's end: never blocks; a full queue is counted, per CPU,
/// and reported to the store ahead of that CPU's next flow.
#[derive(Debug)]
pub struct FlowSender {
    tx: mpsc::Sender<SourceMsg>,
    /// Queue losses not yet reported, by CPU.
    pending: BTreeMap<u32, u64>,
    /// The kernel's cumulative lost counter last seen, by CPU.
    kernel_seen: BTreeMap<u32, u64>,
}

/// A channel of `capacity` messages between the reader and the store.
pub fn channel(capacity: usize) -> (FlowSender, FlowSource) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        FlowSender {
            tx,
            pending: BTreeMap::new(),
            kernel_seen: BTreeMap::new(),
        },
        FlowSource { rx },
    )
}

/// Whether the store's end is still there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// Queued for the store.
    Queued,
    /// The queue was full: counted as lost at stage `queue`.
    Lost,
    /// The store is gone; nothing will read again.
    Closed,
}

impl FlowSender {
    /// Offers `event` to the store without waiting.
    pub fn send(&mut self, event: FlowEvent) -> Sent {
        let cpu = event.cpu;
        if !self.flush() {
            *self.pending.entry(cpu).or_default() += 1;
            return Sent::Lost;
        }
        match self.tx.try_send(SourceMsg::Flow(event)) {
            Ok(()) => Sent::Queued,
            Err(TrySendError::Full(_)) => {
                *self.pending.entry(cpu).or_default() += 1;
                Sent::Lost
            }
            Err(TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Reports the kernel's cumulative lost counter of `cpu` (ring full);
    /// the increase since the last report is passed on.
    pub fn kernel_lost(&mut self, cpu: u32, total: u64) -> Sent {
        let last = self.kernel_seen.insert(cpu, total).unwrap_or(0);
        let delta = total.saturating_sub(last);
        if delta == 0 {
            return Sent::Queued;
        }
        let msg = SourceMsg::Lost {
            cpu,
            stage: LossStage::Ring,
            reason: "ring_full",
            count: delta,
        };
        match self.tx.try_send(msg) {
            Ok(()) => Sent::Queued,
            // Not reported now: undo, so the next report carries it.
            Err(TrySendError::Full(_)) => {
                self.kernel_seen.insert(cpu, last);
                Sent::Lost
            }
            Err(TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Queue losses not yet reported to the store.
    pub fn pending_lost(&self) -> u64 {
        self.pending.values().sum()
    }

    /// Reports pending queue losses; false while some could not be sent.
    pub fn flush(&mut self) -> bool {
        while let Some((&cpu, &count)) = self.pending.iter().next() {
            let msg = SourceMsg::Lost {
                cpu,
                stage: LossStage::Queue,
                reason: "queue_full",
                count,
            };
            if self.tx.try_send(msg).is_err() {
                return false;
            }
            self.pending.remove(&cpu);
        }
        true
    }
}

/// A pod or other endpoint the agent knows by address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointInfo {
    /// The agent's endpoint ID.
    pub id: u32,
    /// Security identity.
    pub identity: u32,
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub pod_name: String,
    /// Labels as `source:key=value` (`k8s:app=db`).
    pub labels: Vec<String>,
}

/// A Kubernetes Service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRef {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
}

/// Names for addresses, from the agent's own endpoint and service state.
/// Called on the ingest task for every flow: answer from memory, never
/// block.
pub trait Enricher: Send + Sync {
    /// The endpoint with address `ip`, if it is one the agent knows.
    fn endpoint(&self, ip: IpAddr) -> Option<EndpointInfo>;
    /// The service with address `ip` and `port`, if any.
    fn service(&self, _ip: IpAddr, _port: u16) -> Option<ServiceRef> {
        None
    }
}

/// An enricher that knows nothing (flows carry addresses and identities
/// only).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoEnrichment;

impl Enricher for NoEnrichment {
    fn endpoint(&self, _ip: IpAddr) -> Option<EndpointInfo> {
        None
    }
}

/// An enricher over a fixed table, for tests and the lab.
#[derive(Clone, Debug, Default)]
pub struct StaticEnricher {
    /// Endpoints by address.
    pub endpoints: std::collections::HashMap<IpAddr, EndpointInfo>,
}

impl Enricher for StaticEnricher {
    fn endpoint(&self, ip: IpAddr) -> Option<EndpointInfo> {
        self.endpoints.get(&ip).cloned()
    }
}
