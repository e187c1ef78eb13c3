//! Watch events in batches: every event already delivered is drained at
//! once and coalesced into the latest state per object key, so a loop
//! recomputes once per batch however many events arrived, and what waits
//! is bounded by the number of distinct objects, not of events.
//!
//! ```text
//!  watch streams ─▶ drain (first event, then all ready ones) ─▶ Pending<K> per kind
//!                                                                  │ key ─▶ latest object or deleted
//!                                                                  ▼
//!                                             Objects<K> (the loop's own store) ─▶ recompute once
//! ```
//!
//! A relist (`Init`, `InitApply`..., `InitDone`) replaces the kind's store
//! as a whole once it is complete, as kube's reflector does; changes pending
//! from before it are superseded by it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures::{FutureExt, Stream, StreamExt};
use kube::{Resource, ResourceExt, runtime::watcher};

/// Most events taken into one batch: a stream that never pauses still gets
/// its recomputes.
pub(crate) const MAX_BATCH_EVENTS: usize = 100_000;

/// What one drain took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Events handed to the loop.
    pub events: usize,
    /// The stream has ended (the loop stops after this batch).
    pub ended: bool,
    /// The deadline passed before any event came.
    pub timed_out: bool,
}

/// Waits for one event (or `until`), then hands every event that is already
/// ready to `push`, yielding to the runtime between rounds so that events in
/// flight land too; stops at the first round that finds nothing new or at
/// [`MAX_BATCH_EVENTS`].
pub(crate) async fn drain<S, T>(
    events: &mut S,
    until: Option<tokio::time::Instant>,
    mut push: impl FnMut(T),
) -> Drained
where
    S: Stream<Item = T> + Unpin,
{
    let mut d = Drained::default();
    let first = match until {
        Some(at) => match tokio::time::timeout_at(at, events.next()).await {
            Ok(e) => e,
            Err(_) => {
                d.timed_out = true;
                return d;
            }
        },
        None => events.next().await,
    };
    let Some(first) = first else {
        d.ended = true;
        return d;
    };
    push(first);
    d.events = 1;
    loop {
        let before = d.events;
        while d.events < MAX_BATCH_EVENTS {
            match events.next().now_or_never() {
                Some(Some(e)) => {
                    push(e);
                    d.events += 1;
                }
                Some(None) => {
                    d.ended = true;
                    return d;
                }
                None => break,
            }
        }
        if d.events == before || d.events >= MAX_BATCH_EVENTS {
            return d;
        }
        tokio::task::yield_now().await;
    }
}

/// The key of an object: `namespace/name` (`/name` when cluster-scoped).
pub(crate) fn key_of<K: Resource>(o: &K) -> String {
    format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())
}

/// Changes of one kind waiting for the next recompute, latest per key.
pub(crate) struct Pending<K> {
    /// Key -> the object's latest state (`None`: deleted).
    changes: BTreeMap<String, Option<Arc<K>>>,
    /// A relist under way: what it listed so far.
    relist: Option<BTreeMap<String, Arc<K>>>,
    /// A completed relist not yet applied: the kind's whole new store.
    replace: Option<BTreeMap<String, Arc<K>>>,
}

impl<K> Default for Pending<K> {
    fn default() -> Self {
        Pending {
            changes: BTreeMap::new(),
            relist: None,
            replace: None,
        }
    }
}

impl<K: Resource> Pending<K> {
    /// Takes one event. Returns whether it was folded into a change already
    /// pending for its object (coalesced).
    pub(crate) fn push(&mut self, ev: watcher::Event<K>) -> bool {
        match ev {
            watcher::Event::Apply(o) => {
                self.changes.insert(key_of(&o), Some(Arc::new(o))).is_some()
            }
            watcher::Event::Delete(o) => self.changes.insert(key_of(&o), None).is_some(),
            watcher::Event::Init => {
                // The relist will say everything; what waits is superseded.
                let coalesced = !self.changes.is_empty() || self.replace.is_some();
                self.changes.clear();
                self.replace = None;
                self.relist = Some(BTreeMap::new());
                coalesced
            }
            watcher::Event::InitApply(o) => self
                .relist
                .get_or_insert_with(BTreeMap::new)
                .insert(key_of(&o), Arc::new(o))
                .is_some(),
            watcher::Event::InitDone => {
                self.replace = Some(self.relist.take().unwrap_or_default());
                self.changes.clear();
                false
            }
        }
    }

    /// Objects waiting: bounded by the distinct objects of the kind (a
    /// relist under way counts what it listed so far).
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
            + self.relist.as_ref().map_or(0, BTreeMap::len)
            + self.replace.as_ref().map_or(0, BTreeMap::len)
    }

    /// Whether anything waits to be applied (a relist under way does not
    /// count until it is complete).
    pub(crate) fn is_ready(&self) -> bool {
        !self.changes.is_empty() || self.replace.is_some()
    }

    /// Applies what waits to `store`; returns the objects applied.
    pub(crate) fn apply(&mut self, store: &mut BTreeMap<String, Arc<K>>) -> usize {
        let mut n = 0;
        if let Some(all) = self.replace.take() {
            n += all.len();
            *store = all;
        }
        n += self.changes.len();
        for (key, o) in std::mem::take(&mut self.changes) {
            match o {
                Some(o) => {
                    store.insert(key, o);
                }
                None => {
                    store.remove(&key);
                }
            }
        }
        n
    }
}

/// One kind's objects as a loop sees them: its store and what waits for it.
pub(crate) struct Objects<K> {
    pub(crate) store: BTreeMap<String, Arc<K>>,
    pub(crate) pending: Pending<K>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Objects {
            store: BTreeMap::new(),
            pending: Pending::default(),
        }
    }
}

impl<K: Resource> Objects<K> {
    /// The store's objects, for the pure functions that take slices.
    pub(crate) fn values(&self) -> Vec<Arc<K>> {
        self.store.values().cloned().collect()
    }

    /// Applies what waits; returns the objects applied.
    pub(crate) fn apply(&mut self) -> usize {
        self.pending.apply(&mut self.store)
    }
}

/// The watch stream of `api` for a batch loop: errors (the watcher retries
/// with [`crate::watch::WatchBackoff`]) are logged and dropped, events are
/// wrapped by `wrap` into the loop's event type.
pub(crate) fn events<K, T>(
    api: kube::Api<K>,
    wrap: fn(watcher::Event<K>) -> T,
) -> impl Stream<Item = T> + Send + 'static
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
    T: Send + 'static,
{
    use kube::runtime::WatchStreamExt;
    watcher(api, watcher::Config::default())
        .backoff(crate::watch::WatchBackoff::new())
        .filter_map(move |r| {
            futures::future::ready(match r {
                Ok(e) => Some(wrap(e)),
                Err(e) => {
                    tracing::debug!(error = %e, kind = %K::kind(&K::DynamicType::default()), "watch error; retrying");
                    None
                }
            })
        })
}

/// Retries of failed datapath writes: full jitter from 100 ms up to 30 s,
/// never giving up (the next batch retries too).
pub(crate) fn write_retries() -> sextant_kit::backoff::Retries {
    sextant_kit::backoff::Retries::new(sextant_kit::backoff::Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(30),
        max_attempts: u32::MAX,
        kind: sextant_kit::backoff::BackoffKind::FullJitter,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::ObjectMeta;

    use super::*;

    fn ns(name: &str, rev: &str) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                resource_version: Some(rev.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn events_of_one_object_coalesce_to_its_latest_state() {
        let mut o = Objects::<Namespace>::default();
        assert!(!o.pending.push(watcher::Event::Apply(ns("a", "1"))));
        assert!(o.pending.push(watcher::Event::Apply(ns("a", "2"))));
        assert!(!o.pending.push(watcher::Event::Apply(ns("b", "1"))));
        assert!(o.pending.push(watcher::Event::Delete(ns("b", "1"))));
        assert_eq!(o.pending.len(), 2);
        assert_eq!(o.apply(), 2);
        assert_eq!(o.store.len(), 1);
        assert_eq!(
            o.store["/a"].metadata.resource_version.as_deref(),
            Some("2")
        );
        assert_eq!(o.pending.len(), 0);
    }

    #[test]
    fn a_relist_replaces_the_store_once_complete() {
        let mut o = Objects::<Namespace>::default();
        o.pending.push(watcher::Event::Apply(ns("old", "1")));
        o.apply();
        o.pending.push(watcher::Event::Apply(ns("lost", "1")));
        o.pending.push(watcher::Event::Init);
        o.pending.push(watcher::Event::InitApply(ns("new", "1")));
        assert!(!o.pending.is_ready(), "half a relist is not applied");
        assert_eq!(o.apply(), 0);
        assert_eq!(o.store.keys().collect::<Vec<_>>(), ["/old"]);
        o.pending.push(watcher::Event::InitDone);
        o.pending.push(watcher::Event::Apply(ns("after", "1")));
        o.apply();
        assert_eq!(o.store.keys().collect::<Vec<_>>(), ["/after", "/new"]);
    }

    #[tokio::test]
    async fn drain_takes_every_ready_event_in_one_batch() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..1000 {
            tx.send(i).expect("send");
        }
        let mut s = tokio_stream_of(rx);
        let mut got = Vec::new();
        let d = drain(&mut s, None, |e| got.push(e)).await;
        assert_eq!(d.events, 1000, "{d:?}");
        assert!(!d.ended);
        let d = drain(
            &mut s,
            Some(tokio::time::Instant::now() + Duration::from_millis(10)),
            |e| got.push(e),
        )
        .await;
        assert!(d.timed_out);
        drop(tx);
        assert!(drain(&mut s, None, |e| got.push(e)).await.ended);
        assert_eq!(got.len(), 1000);
    }

    fn tokio_stream_of<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::UnboundedReceiver<T>,
    ) -> impl Stream<Item = T> + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
