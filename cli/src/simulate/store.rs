//! The simulator's stand-in for the API server: NodeNetworks in memory,
//! status written with the same JSON merge patches the operator sends, and a
//! work queue with kube-runtime's guarantee that one object is never
//! reconciled twice at once.

use std::{
    collections::{BTreeMap, HashSet, VecDeque},
    sync::Mutex,
};

use sextant_crds::NodeNetwork;
use sextant_kit::sync::lock;
use tokio::sync::Notify;

/// NodeNetworks by name.
#[derive(Default)]
pub struct Store {
    objects: Mutex<BTreeMap<String, NodeNetwork>>,
}

impl Store {
    pub fn insert(&self, nn: NodeNetwork) {
        let name = nn.metadata.name.clone().unwrap_or_default();
        lock(&self.objects).insert(name, nn);
    }

    pub fn get(&self, name: &str) -> Option<NodeNetwork> {
        lock(&self.objects).get(name).cloned()
    }

    pub fn all(&self) -> Vec<NodeNetwork> {
        lock(&self.objects).values().cloned().collect()
    }

    /// Applies a JSON merge patch (`{"status": {...}}`) to one object, as
    /// `PATCH .../status` with `application/merge-patch+json` would.
    pub fn merge_patch(&self, name: &str, patch: &serde_json::Value) -> anyhow::Result<()> {
        let mut objects = lock(&self.objects);
        let nn = objects
            .get_mut(name)
            .ok_or_else(|| anyhow::anyhow!("NodeNetwork {name} not found"))?;
        let mut doc = serde_json::to_value(&*nn)?;
        json_patch::merge(&mut doc, patch);
        *nn = serde_json::from_value(doc)?;
        Ok(())
    }

    /// Changes one object in place (the agent's writes).
    pub fn update<R>(&self, name: &str, f: impl FnOnce(&mut NodeNetwork) -> R) -> Option<R> {
        lock(&self.objects).get_mut(name).map(f)
    }
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<String>,
    queued: HashSet<String>,
    running: HashSet<String>,
    dirty: HashSet<String>,
}

/// Reconcile queue: deduplicated, never two reconciles of one name at once.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    notify: Notify,
}

impl Queue {
    /// Asks for a reconcile of `name`.
    pub fn push(&self, name: &str) {
        let mut s = lock(&self.state);
        if s.running.contains(name) {
            s.dirty.insert(name.to_owned());
        } else if s.queued.insert(name.to_owned()) {
            s.pending.push_back(name.to_owned());
            drop(s);
            self.notify.notify_one();
        }
    }

    /// Waits for the next name to reconcile and marks it running.
    pub async fn pop(&self) -> String {
        loop {
            {
                let mut s = lock(&self.state);
                if let Some(name) = s.pending.pop_front() {
                    s.queued.remove(&name);
                    s.running.insert(name.clone());
                    return name;
                }
            }
            self.notify.notified().await;
        }
    }

    /// Marks `name` done; a push that came while it ran is honoured now.
    pub fn done(&self, name: &str) {
        let again = {
            let mut s = lock(&self.state);
            s.running.remove(name);
            s.dirty.remove(name)
        };
        if again {
            self.push(name);
        }
    }
}
