use super::*;
use crate::fixtures::mk_pod;

#[test]
fn a_pod_without_namespace_is_in_default_and_one_without_name_is_an_error() {
    let mut pod = mk_pod("", "web-0");
    pod.metadata.namespace = None;
    let r = PodRef::from_pod(&pod).expect("named");
    assert_eq!(
        (r.namespace.as_str(), r.requires_fixed_ip),
        ("default", false)
    );
    pod.metadata.name = None;
    assert_eq!(
        PodRef::from_pod(&pod).map_err(|e| e.metric_label()),
        Err("pod_without_name")
    );
}

#[test]
fn the_annotation_asks_for_a_fixed_ip() {
    let mut pod = mk_pod("db", "web-0");
    pod.metadata.annotations = Some([(ANNOTATION_FIXED_IP.to_owned(), "True".to_owned())].into());
    assert!(PodRef::from_pod(&pod).expect("named").requires_fixed_ip);
}
