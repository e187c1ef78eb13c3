//! The watch shell: two kube-runtime watchers (NodeNetworks cluster-wide,
//! FixedIPs in all namespaces) feeding the index. A watcher (re)list is
//! buffered from `Init` to `InitDone` and then replaces the kind's entries
//! at once, as a reflector store does, so a relist never shows the filter a
//! half-empty index and objects deleted while the watch was down disappear.

use std::{sync::PoisonError, time::Duration};

use futures::StreamExt;
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, watcher},
};
use sextant_crds::{FixedIP, NodeNetwork};
use tracing::{info, warn};

use sextant_kit::ErrorChain;

use crate::{index::SharedIndex, metrics::Metrics};

/// What one watcher event does to the index.
#[derive(Debug, PartialEq)]
pub enum Change<K> {
    /// Add or replace one object.
    Apply(K),
    /// Remove one object.
    Delete(K),
    /// Replace every object of the kind with a full list.
    Reset(Vec<K>),
}

/// Turns watcher events into index changes, buffering a (re)list.
#[derive(Debug)]
pub struct Relist<K> {
    buffer: Option<Vec<K>>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist { buffer: None }
    }
}

impl<K> Relist<K> {
    /// The change for one event, if any (list pages only fill the buffer).
    pub fn step(&mut self, event: watcher::Event<K>) -> Option<Change<K>> {
        match event {
            watcher::Event::Apply(k) => Some(Change::Apply(k)),
            watcher::Event::Delete(k) => Some(Change::Delete(k)),
            watcher::Event::Init => {
                self.buffer = Some(Vec::new());
                None
            }
            watcher::Event::InitApply(k) => {
                match &mut self.buffer {
                    Some(b) => b.push(k),
                    // A page without its `Init`: start the buffer here.
                    None => self.buffer = Some(vec![k]),
                }
                None
            }
            watcher::Event::InitDone => Some(Change::Reset(self.buffer.take().unwrap_or_default())),
        }
    }
}

/// Applies a NodeNetwork change to the index.
pub fn apply_node_change(index: &SharedIndex, change: Change<NodeNetwork>) {
    let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
    match change {
        Change::Apply(nn) => index.apply_node(&nn),
        Change::Delete(nn) => {
            if let Some(name) = nn.meta().name.as_deref() {
                index.delete_node(name);
            }
        }
        Change::Reset(all) => index.reset_nodes(&all),
    }
}

/// Applies a FixedIP change to the index.
pub fn apply_fixed_ip_change(index: &SharedIndex, change: Change<FixedIP>) {
    let mut index = index.write().unwrap_or_else(PoisonError::into_inner);
    match change {
        Change::Apply(f) => index.apply_fixed_ip(&f),
        Change::Delete(f) => {
            if let (Some(ns), Some(name)) =
                (f.meta().namespace.as_deref(), f.meta().name.as_deref())
            {
                index.delete_fixed_ip(ns, name);
            }
        }
        Change::Reset(all) => index.reset_fixed_ips(&all),
    }
}

fn record_sizes(index: &SharedIndex, metrics: &Metrics) {
    let index = index.read().unwrap_or_else(PoisonError::into_inner);
    metrics.index_sizes(index.node_count(), index.fixed_ip_count());
}

/// Runs both watches until the process ends; errors are logged and the
/// watcher retries with kube-runtime's default backoff.
pub async fn run(client: Client, index: SharedIndex, metrics: Metrics) {
    let nodes = {
        let index = index.clone();
        let metrics = metrics.clone();
        let mut relist = Relist::default();
        watcher(
            Api::<NodeNetwork>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(event) => {
                    if let Some(change) = relist.step(event) {
                        let reset = matches!(change, Change::Reset(_));
                        apply_node_change(&index, change);
                        record_sizes(&index, &metrics);
                        if reset {
                            info!("NodeNetworks listed");
                        }
                    }
                }
                Err(e) => warn!(error = %ErrorChain(&e), "NodeNetwork watch failed, retrying"),
            }
            futures::future::ready(())
        })
    };
    let fixed = {
        let index = index.clone();
        let metrics = metrics.clone();
        let mut relist = Relist::default();
        watcher(Api::<FixedIP>::all(client), watcher::Config::default())
            .default_backoff()
            .for_each(move |event| {
                match event {
                    Ok(event) => {
                        if let Some(change) = relist.step(event) {
                            let reset = matches!(change, Change::Reset(_));
                            apply_fixed_ip_change(&index, change);
                            record_sizes(&index, &metrics);
                            if reset {
                                info!("FixedIPs listed");
                            }
                        }
                    }
                    Err(e) => warn!(error = %ErrorChain(&e), "FixedIP watch failed, retrying"),
                }
                futures::future::ready(())
            })
    };
    futures::future::join(nodes, fixed).await;
    // Watcher streams do not end; if they ever do, do not spin.
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests;
