//! The operator's status writes as JSON merge patches: only the fields the
//! operator owns, maps diffed key by key (`null` deletes), so the agent's
//! concurrent writes to `usage` and to other handshake keys are never lost;
//! and guarded by the resourceVersion of the read they were decided from
//! ([`make_status_patch`]), so a decision made on a status that changed
//! meanwhile (a new usage report, a handshake answer, a full resync) is
//! refused with 409 Conflict instead of being written over it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value, json};
use sextant_crds::{NodeNetwork, NodeNetworkStatus};

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

/// `patch` guarded by `resource_version`, the version of the object the
/// patch was computed from: with `metadata.resourceVersion` in a merge patch
/// the API server applies it only while the object is still at that version
/// and answers 409 Conflict otherwise (someone wrote since; read again). No
/// guard without a version (an object that never came from the API server).
pub fn with_resource_version(mut patch: Value, resource_version: Option<&str>) -> Value {
    if let (Some(rv), Some(obj)) = (resource_version, patch.as_object_mut()) {
        let meta = obj.entry("metadata").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            meta.insert("resourceVersion".into(), json!(rv));
        }
    }
    patch
}

/// The operator's status merge patch for NodeNetwork `nn`, as it was read,
/// to `new`: [`status_patch`] from `nn`'s status, guarded by `nn`'s
/// resourceVersion, since every field of it is decided from that read (marks
/// from the agent's usage, unassigns from its answers, ENIs and pool from
/// the resync on top of it). `None` when nothing changed.
pub fn make_status_patch(nn: &NodeNetwork, new: &NodeNetworkStatus) -> Option<Value> {
    let old = nn.status.clone().unwrap_or_default();
    let patch = status_patch(&old, new)?;
    Some(with_resource_version(
        patch,
        nn.metadata.resource_version.as_deref(),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use sextant_crds::{NodeNetworkSpec, PoolEntry, ReleaseState};

    use super::*;

    fn read(rv: Option<&str>) -> NodeNetwork {
        let mut nn = NodeNetwork::new("node-a", NodeNetworkSpec::default());
        nn.metadata.resource_version = rv.map(str::to_owned);
        nn.status = Some(NodeNetworkStatus {
            pool: BTreeMap::from([
                (
                    "10.0.0.6".into(),
                    PoolEntry {
                        eni: "eni-1".into(),
                    },
                ),
                (
                    "10.0.0.7".into(),
                    PoolEntry {
                        eni: "eni-1".into(),
                    },
                ),
            ]),
            ..NodeNetworkStatus::default()
        });
        nn
    }

    #[test]
    fn a_patch_decided_from_a_read_carries_the_reads_resource_version() {
        let nn = read(Some("41"));
        let mut new = nn.status.clone().unwrap();
        new.release.insert("10.0.0.7".into(), ReleaseState::Marked);
        assert_eq!(
            make_status_patch(&nn, &new),
            Some(json!({
                "metadata": { "resourceVersion": "41" },
                "status": { "release": { "10.0.0.7": "marked" } },
            }))
        );
    }

    #[test]
    fn nothing_changed_is_no_patch_even_with_a_version() {
        let nn = read(Some("41"));
        assert_eq!(make_status_patch(&nn, &nn.status.clone().unwrap()), None);
    }

    #[test]
    fn an_object_without_a_version_gets_an_unguarded_patch() {
        let nn = read(None);
        let mut new = nn.status.clone().unwrap();
        new.pool.remove("10.0.0.6");
        assert_eq!(
            make_status_patch(&nn, &new),
            Some(json!({ "status": { "pool": { "10.0.0.6": null } } }))
        );
    }

    #[test]
    fn the_version_joins_metadata_already_in_the_patch() {
        let patch = json!({ "metadata": { "labels": { "a": "b" } }, "status": {} });
        assert_eq!(
            with_resource_version(patch, Some("7")),
            json!({ "metadata": { "labels": { "a": "b" }, "resourceVersion": "7" }, "status": {} })
        );
    }
}
