//! What the API server does with a status write, as the models need it: a
//! JSON merge patch (RFC 7386) on the status subresource, refused with 409
//! Conflict when it carries a `metadata.resourceVersion` other than the
//! object's; a write that changes nothing makes no new version (as the real
//! API server skips no-op updates).

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// What a status write did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Applied; the object has a new version.
    Changed,
    /// Applied, nothing changed: no new version.
    Unchanged,
    /// Refused: the patch was decided on another version (409).
    Conflict,
}

/// The resourceVersion a patch is guarded by, if any.
pub fn guard(patch: &Value) -> Option<&str> {
    patch.get("metadata")?.get("resourceVersion")?.as_str()
}

/// Applies the `status` of merge `patch` to `status`, the status of an
/// object whose current version is `rv`; bumps `rv` when it changed.
pub fn patch_status<S: Serialize + DeserializeOwned>(
    status: &mut Option<S>,
    rv: &mut u64,
    patch: &Value,
) -> Written {
    if let Some(g) = guard(patch)
        && g != rv.to_string()
    {
        return Written::Conflict;
    }
    let Some(p) = patch.get("status") else {
        return Written::Unchanged;
    };
    let Ok(mut doc) = serde_json::to_value(&*status) else {
        return Written::Unchanged;
    };
    let before = doc.clone();
    json_patch::merge(&mut doc, p);
    let Ok(new) = serde_json::from_value::<Option<S>>(doc) else {
        return Written::Unchanged;
    };
    // Compared as stored (an empty map the schema omits is no change).
    if serde_json::to_value(&new).ok().as_ref() == Some(&before) {
        return Written::Unchanged;
    }
    *status = new;
    *rv += 1;
    Written::Changed
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;
    use sextant_crds::{NodeNetwork, NodeNetworkStatus, ReleaseState};

    use super::*;

    #[test]
    fn a_guarded_patch_applies_only_at_its_version_and_nulls_delete() {
        let mut nn = NodeNetwork::new("n", Default::default());
        nn.status = Some(NodeNetworkStatus {
            release: BTreeMap::from([("10.0.0.1".into(), ReleaseState::Marked)]),
            ..Default::default()
        });
        let mut rv = 3;
        let stale = json!({"metadata": {"resourceVersion": "2"}, "status": {"release": {"10.0.0.1": null}}});
        assert_eq!(
            patch_status(&mut nn.status, &mut rv, &stale),
            Written::Conflict
        );
        let ok = json!({"metadata": {"resourceVersion": "3"}, "status": {"release": {"10.0.0.1": null}}});
        assert_eq!(patch_status(&mut nn.status, &mut rv, &ok), Written::Changed);
        assert_eq!(rv, 4);
        assert!(nn.status.as_ref().is_some_and(|s| s.release.is_empty()));
        let again = json!({"status": {"release": {"10.0.0.1": null}}});
        assert_eq!(
            patch_status(&mut nn.status, &mut rv, &again),
            Written::Unchanged
        );
        assert_eq!(rv, 4);
    }
}
