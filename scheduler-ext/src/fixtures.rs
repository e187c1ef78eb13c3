//! Test builders of the extender's own inputs: pods as kube-scheduler sends
//! them and a synced index. NodeNetworks and FixedIPs come from
//! `sextant_crds::testing`.

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use sextant_crds::{FixedIP, NodeNetwork};

use crate::index::Index;

/// A pod `ns/name` as kube-scheduler sends it (metadata only matters).
pub fn mk_pod(ns: &str, name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..ObjectMeta::default()
        },
        ..Pod::default()
    }
}

/// A synced index holding `nodes` and `fixed`.
pub fn mk_index(nodes: &[NodeNetwork], fixed: &[FixedIP]) -> Index {
    let mut index = Index::default();
    index.reset_nodes(nodes);
    index.reset_fixed_ips(fixed);
    index
}
