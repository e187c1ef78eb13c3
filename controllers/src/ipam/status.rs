//! The operator's status writes as JSON merge patches: only the fields the
//! operator owns, maps diffed key by key (`null` deletes), so the agent's
//! concurrent writes to `usage` and to other handshake keys are never lost.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};
use sextant_crds::NodeNetworkStatus;

fn map_diff<V: Serialize + PartialEq>(
    old: &BTreeMap<String, V>,
    new: &BTreeMap<String, V>,
) -> Value {
    let mut m = Map::new();
    for (k, v) in new {
        if old.get(k) != Some(v) {
            m.insert(k.clone(), serde_json::to_value(v).unwrap_or(Value::Null));
        }
    }
    for k in old.keys() {
        if !new.contains_key(k) {
            m.insert(k.clone(), Value::Null);
        }
    }
    Value::Object(m)
}

/// The merge patch taking `old` to `new` on the operator's fields: `enis`,
/// `pool`, `release`, `summary`, `conditions`, `observedGeneration`,
/// `lastResync`. Returns `None` when nothing changed.
pub fn status_patch(old: &NodeNetworkStatus, new: &NodeNetworkStatus) -> Option<Value> {
    let mut s = Map::new();
    if old.enis != new.enis {
        s.insert("enis".into(), json!(new.enis));
    }
    let pool = map_diff(&old.pool, &new.pool);
    if pool.as_object().is_some_and(|m| !m.is_empty()) {
        s.insert("pool".into(), pool);
    }
    let release = map_diff(&old.release, &new.release);
    if release.as_object().is_some_and(|m| !m.is_empty()) {
        s.insert("release".into(), release);
    }
    if old.summary != new.summary {
        s.insert("summary".into(), json!(new.summary));
    }
    if old.conditions != new.conditions {
        s.insert("conditions".into(), json!(new.conditions));
    }
    if old.observed_generation != new.observed_generation {
        s.insert("observedGeneration".into(), json!(new.observed_generation));
    }
    if old.last_resync != new.last_resync {
        s.insert("lastResync".into(), json!(new.last_resync));
    }
    (!s.is_empty()).then(|| json!({ "status": Value::Object(s) }))
}
