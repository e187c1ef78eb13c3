//! The kube-scheduler extender protocol (`k8s.io/kube-scheduler/extender/v1`).
//!
//! The Go structs carry no `json` tags, so kube-scheduler writes the Go field
//! names (`{"Pod": …, "Nodes": null, "NodeNames": ["n1"]}`) and reads the
//! answer with Go's case-insensitive decoder. These types write exactly the
//! Go names and also accept the lower-case spellings that hand-written
//! clients (and extenders with their own tagged copies) use.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    List,
    api::core::v1::{Node, Pod},
};
use serde::{Deserialize, Serialize};

/// Highest score an extender may give (`MaxExtenderPriority`); kube-scheduler
/// multiplies it by the extender's `weight` and by 10.
pub const MAX_EXTENDER_PRIORITY: i64 = 10;

/// Lowest score an extender may give (`MinExtenderPriority`).
pub const MIN_EXTENDER_PRIORITY: i64 = 0;

/// `v1.NodeList` as kube-scheduler sends it when `nodeCacheCapable` is false.
pub type NodeList = List<Node>;

/// The body of a filter or prioritize call.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ExtenderArgs {
    /// The pod being scheduled.
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    /// Candidate nodes as full objects (`nodeCacheCapable: false`).
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
}

/// [`ExtenderArgs`] read without copying the node names out of the request
/// body (they stay borrowed unless JSON escapes force a copy): what the
/// HTTP handlers parse, since a 6,000-node call is mostly names.
#[derive(Deserialize, Debug, Default)]
pub struct ExtenderArgsRef<'a> {
    /// The pod being scheduled.
    #[serde(rename = "Pod", alias = "pod", default)]
    pub pod: Option<Pod>,
    /// Candidate nodes as full objects (`nodeCacheCapable: false`).
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Candidate node names (`nodeCacheCapable: true`).
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default,
        borrow
    )]
    pub node_names: Option<Vec<NodeName<'a>>>,
}

/// A node name borrowed from the request body, owned only when JSON
/// escapes made a copy necessary. (serde's `borrow` does not reach a `Cow`
/// inside a `Vec`, hence the newtype.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeName<'a>(pub Cow<'a, str>);

impl NodeName<'_> {
    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for NodeName<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = NodeName<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a node name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(NodeName(Cow::Owned(v)))
            }
        }
        d.deserialize_str(Visitor)
    }
}

/// Node name -> why the pod cannot go there (`FailedNodesMap`).
pub type FailedNodesMap = BTreeMap<String, String>;

/// The answer to a filter call.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct ExtenderFilterResult {
    /// Nodes that pass, as full objects (when the request sent `Nodes`).
    #[serde(rename = "Nodes", alias = "nodes", default)]
    pub nodes: Option<NodeList>,
    /// Nodes that pass, by name (when the request sent `NodeNames`).
    #[serde(
        rename = "NodeNames",
        alias = "nodenames",
        alias = "nodeNames",
        default
    )]
    pub node_names: Option<Vec<String>>,
    /// Filtered nodes that preempting pods could make fit, with the reason.
    #[serde(
        rename = "FailedNodes",
        alias = "failedNodes",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub failed_nodes: FailedNodesMap,
    /// Filtered nodes where preempting pods would not help, with the
    /// reason; kube-scheduler gives this map precedence over `FailedNodes`.
    #[serde(
        rename = "FailedAndUnresolvableNodes",
        alias = "failedAndUnresolvableNodes",
        default,
        deserialize_with = "null_as_empty"
    )]
    pub failed_and_unresolvable_nodes: FailedNodesMap,
    /// Set when the extender could not decide; kube-scheduler then fails
    /// this scheduling attempt with the message (unless `ignorable`).
    #[serde(rename = "Error", alias = "error", default)]
    pub error: String,
}

impl ExtenderFilterResult {
    /// A result that only carries an error message.
    pub fn error(message: impl Into<String>) -> Self {
        ExtenderFilterResult {
            error: message.into(),
            ..Default::default()
        }
    }
}

/// One node's score (`HostPriority`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct HostPriority {
    /// Node name.
    #[serde(rename = "Host", alias = "host")]
    pub host: String,
    /// 0..=[`MAX_EXTENDER_PRIORITY`], higher is better.
    #[serde(rename = "Score", alias = "score")]
    pub score: i64,
}

/// The answer to a prioritize call (`HostPriorityList`).
pub type HostPriorityList = Vec<HostPriority>;

fn null_as_empty<'de, D>(d: D) -> Result<FailedNodesMap, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Ok(Option::<FailedNodesMap>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests;
