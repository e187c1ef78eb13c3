//! The connection cap. At most `cap` connections are open at once; when one
//! more arrives, the connection that has been **waiting on its peer the
//! longest** is closed to make room, once it has waited at least `grace`
//! (until then the newcomer waits in the accept queue). The grace bounds the
//! churn a reconnecting flood can cause (`cap / grace` evictions a second)
//! and gives every admitted connection that long to send its request.
//!
//! A connection waits on its peer from its accept (TLS handshake, request
//! head), from its request head (the body) and from each answer (the next
//! request on a keep-alive connection). A slow-loris peer that trickles a
//! head or a body is therefore always older than kube-scheduler's request in
//! flight, which has sent its head and body within milliseconds: a flood of
//! slow connections evicts its own oldest members and never holds
//! kube-scheduler in the accept queue. A request is evicted only if `cap`
//! newer connections arrived while it was itself waiting on its peer, and
//! never before it waited `grace`. A flood of `A` connections beyond the cap
//! that reconnect at once holds a newcomer in the accept queue for about
//! `A x grace / cap`.
//!
//! Memory stays bounded by `cap` x (`--max-body-bytes` + buffers), whatever
//! the peers do; the header and body deadlines still close each connection
//! that stalls when no newcomer pushes it out.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rustc_hash::FxHashMap;
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One open connection as the cap sees it.
#[derive(Debug)]
pub struct Slot {
    epoch: Instant,
    /// Microseconds since the cap's epoch at which the connection last
    /// started waiting on its peer.
    waiting_since: AtomicU64,
    evict: Notify,
}

impl Slot {
    /// The connection starts waiting on its peer again (a request head
    /// arrived and its body is next, or an answer went out).
    pub fn waiting(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.waiting_since.store(now, Ordering::Relaxed);
    }

    /// Resolves once the cap closed this connection for a newer one.
    pub async fn evicted(&self) {
        self.evict.notified().await;
    }
}

/// Holds a place under the cap; dropping it frees the place.
#[derive(Debug)]
pub struct Admitted {
    conns: Arc<Conns>,
    id: u64,
    /// The connection's slot: mark progress on it, await its eviction.
    pub slot: Arc<Slot>,
}

impl Admitted {
    /// Marks that the connection waits on its peer from now on.
    pub fn waiting(&self) {
        self.slot.waiting();
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut live = self.conns.lock();
        live.remove(&self.id);
        self.conns.metrics.connections(live.len());
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Conns {
    cap: usize,
    grace: Duration,
    epoch: Instant,
    live: Mutex<Live>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct Live {
    next: u64,
    slots: FxHashMap<u64, Arc<Slot>>,
}

impl Live {
    fn remove(&mut self, id: &u64) {
        self.slots.remove(id);
    }

    fn len(&self) -> usize {
        self.slots.len()
    }
}

impl Conns {
    /// At most `cap` (at least 1) connections at once, each evictable once
    /// it waited `grace` on its peer.
    pub fn new(cap: usize, grace: Duration, metrics: Metrics) -> Arc<Conns> {
        Arc::new(Conns {
            cap: cap.max(1),
            grace,
            epoch: Instant::now(),
            live: Mutex::new(Live::default()),
            metrics,
        })
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Live> {
        // Each critical section is one insert or remove: a panic elsewhere
        // leaves the map consistent.
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a new connection, waiting on its peer from now; at the cap,
    /// first evicts the connection that has waited on its peer the longest,
    /// waiting until it has waited `grace`.
    pub async fn admit(self: &Arc<Self>) -> Admitted {
        let grace = u64::try_from(self.grace.as_micros()).unwrap_or(u64::MAX);
        loop {
            let now = self.now();
            let wait = {
                let mut live = self.lock();
                let oldest = live
                    .slots
                    .iter()
                    .map(|(id, s)| (s.waiting_since.load(Ordering::Relaxed), *id))
                    .min();
                match oldest {
                    _ if live.len() < self.cap => return self.insert(&mut live, now),
                    Some((since, id)) if now.saturating_sub(since) >= grace => {
                        if let Some(victim) = live.slots.remove(&id) {
                            // `notify_one` keeps the wake-up if the task is
                            // not awaiting it yet.
                            victim.evict.notify_one();
                            self.metrics.connection_evicted();
                        }
                        continue;
                    }
                    Some((since, _)) => grace - now.saturating_sub(since),
                    // A cap of 0 is raised to 1 in `new`: a full map has an entry.
                    None => grace,
                }
            };
            tokio::time::sleep(Duration::from_micros(wait.max(100))).await;
        }
    }

    fn insert(self: &Arc<Self>, live: &mut Live, now: u64) -> Admitted {
        let id = live.next;
        live.next += 1;
        let slot = Arc::new(Slot {
            epoch: self.epoch,
            waiting_since: AtomicU64::new(now),
            evict: Notify::new(),
        });
        live.slots.insert(id, slot.clone());
        self.metrics.connections(live.len());
        Admitted {
            conns: self.clone(),
            id,
            slot,
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_longest_waiting_connection_is_evicted_not_the_newcomer() {
        let conns = Conns::new(3, Duration::from_millis(1), Metrics::default());
        let a = conns.admit().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let b = conns.admit().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let c = conns.admit().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        // `a` made progress (its head arrived): now `b` waited longest.
        a.waiting();
        assert_eq!(conns.open(), 3);
        let d = conns.admit().await;
        assert_eq!(conns.open(), 3);
        tokio::time::timeout(Duration::from_secs(1), b.slot.evicted())
            .await
            .expect("b evicted");
        for kept in [&a, &c, &d] {
            let not_evicted =
                tokio::time::timeout(Duration::from_millis(20), kept.slot.evicted()).await;
            assert!(not_evicted.is_err(), "only the oldest waiter is evicted");
        }
        drop(b);
        assert_eq!(
            conns.open(),
            3,
            "an evicted slot is already out of the count"
        );
        drop(d);
        assert_eq!(conns.open(), 2);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod grace_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn nobody_is_evicted_before_the_grace_so_a_newcomer_waits_for_it() {
        let conns = Conns::new(2, Duration::from_millis(300), Metrics::default());
        let a = conns.admit().await;
        let _b = conns.admit().await;
        let start = Instant::now();
        let _c = conns.admit().await;
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(250),
            "evicted after {waited:?}, before the grace"
        );
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        tokio::time::timeout(Duration::from_millis(100), a.slot.evicted())
            .await
            .expect("the oldest went");
        assert_eq!(conns.open(), 2);
    }
}
