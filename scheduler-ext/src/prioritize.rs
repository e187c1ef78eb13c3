//! Prioritize: the node that already holds the pod's fixed address first,
//! the others by free pod-IP headroom. Pure, like the filter.

use crate::{
    error::{Error, Result},
    extender::{HostPriority, MAX_EXTENDER_PRIORITY, MIN_EXTENDER_PRIORITY},
    index::{Index, NodeEntry},
    pod::{FixedTarget, PodRef, fixed_target},
};

/// One node's score: [`MAX_EXTENDER_PRIORITY`] for the holder of the fixed
/// address; else the share of the capacity still free, scaled to
/// `0..MAX_EXTENDER_PRIORITY` so a holder always ranks strictly first.
/// Nodes of unknown capacity or without NodeNetwork score 0.
pub fn score(node: Option<&NodeEntry>, fixed: Option<&FixedTarget>) -> i64 {
    let Some(node) = node else {
        return MIN_EXTENDER_PRIORITY;
    };
    if fixed.is_some_and(|t| node.held.contains(&t.ip)) {
        return MAX_EXTENDER_PRIORITY;
    }
    if node.capacity == 0 {
        return MIN_EXTENDER_PRIORITY;
    }
    let top = MAX_EXTENDER_PRIORITY - 1;
    i64::from(node.headroom()) * top / i64::from(node.capacity)
}

/// Scores `nodes` for `pod` against an index snapshot, in the request's order.
pub fn prioritize(index: &Index, pod: &PodRef, nodes: &[&str]) -> Result<Vec<HostPriority>> {
    index
        .check_synced()
        .map_err(|pending| Error::NotSynced { pending })?;
    let fixed = fixed_target(index, pod)?;
    Ok(nodes
        .iter()
        .map(|name| HostPriority {
            host: (*name).to_owned(),
            score: score(index.node(name), fixed.as_ref()),
        })
        .collect())
}

#[cfg(test)]
mod tests;
