use serde_json::json;

use super::*;

const FILTER_NODE_NAMES: &str = include_str!("../../tests/fixtures/filter_node_names.json");
const FILTER_NODES: &str = include_str!("../../tests/fixtures/filter_nodes.json");

#[test]
fn kube_scheduler_bodies_parse_in_both_node_modes() {
    let cached: ExtenderArgs = serde_json::from_str(FILTER_NODE_NAMES).expect("NodeNames body");
    assert!(cached.nodes.is_none());
    assert_eq!(cached.node_names.as_ref().map(Vec::len), Some(4));
    assert_eq!(
        cached.pod.and_then(|p| p.metadata.name).as_deref(),
        Some("web-3")
    );

    let full: ExtenderArgs = serde_json::from_str(FILTER_NODES).expect("Nodes body");
    assert!(full.node_names.is_none());
    let items = full.nodes.map(|l| l.items).unwrap_or_default();
    assert_eq!(items.len(), 4);
    assert_eq!(
        items[3]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("topology.kubernetes.io/zone"))
            .map(String::as_str),
        Some("us-east-1b")
    );

    let borrowed: ExtenderArgsRef<'_> =
        serde_json::from_str(FILTER_NODE_NAMES).expect("NodeNames body, borrowed");
    assert!(
        borrowed
            .node_names
            .iter()
            .flatten()
            .all(|n| matches!(n.0, Cow::Borrowed(_))),
        "plain names are not copied"
    );
}

#[test]
fn an_escaped_node_name_is_copied_not_refused() {
    let args: ExtenderArgsRef<'_> =
        serde_json::from_str(r#"{"NodeNames": ["a\u002db", "plain"]}"#).expect("escaped name");
    let names: Vec<&str> = args
        .node_names
        .iter()
        .flatten()
        .map(NodeName::as_str)
        .collect();
    assert_eq!(names, ["a-b", "plain"]);
}

#[test]
fn args_are_written_with_the_go_field_names() {
    let args = ExtenderArgs {
        node_names: Some(vec!["n1".into()]),
        ..ExtenderArgs::default()
    };
    assert_eq!(
        serde_json::to_value(&args).expect("JSON"),
        json!({"Pod": null, "Nodes": null, "NodeNames": ["n1"]})
    );
}

#[test]
fn a_result_with_go_nil_maps_reads_as_empty() {
    let r: ExtenderFilterResult = serde_json::from_value(json!({
        "Nodes": null, "NodeNames": ["n1"], "FailedNodes": null,
        "FailedAndUnresolvableNodes": null, "Error": ""
    }))
    .expect("Go-shaped result");
    assert!(r.failed_nodes.is_empty() && r.failed_and_unresolvable_nodes.is_empty());
    assert_eq!(
        serde_json::to_value(ExtenderFilterResult::error("boom")).expect("JSON"),
        json!({"Nodes": null, "NodeNames": null, "FailedNodes": {},
               "FailedAndUnresolvableNodes": {}, "Error": "boom"})
    );
    let h: HostPriority =
        serde_json::from_value(json!({"Host": "n1", "Score": 10})).expect("HostPriority");
    assert_eq!(
        h,
        HostPriority {
            host: "n1".into(),
            score: MAX_EXTENDER_PRIORITY
        }
    );
}
