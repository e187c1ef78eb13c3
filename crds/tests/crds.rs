//! The CRDs as the API server sees them: committed YAML in step with the
//! types, CEL rules that accept and reject what they should, and the Rust
//! `validate` agreeing with CEL.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sextant_crds::*;

fn aws_spec() -> NodeNetworkSpec {
    NodeNetworkSpec {
        provider: Provider::Aws,
        instance_id: Some("i-0abc".into()),
        instance_type: Some("m5.large".into()),
        zone: Some("us-east-1a".into()),
        vpc_id: Some("vpc-1".into()),
        ipam: IpamSpec::default(),
        pod_cidrs: vec![],
    }
}

fn nn(spec: NodeNetworkSpec) -> NodeNetwork {
    NodeNetwork::new("node-a", spec)
}

#[test]
fn committed_chart_crds_match_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/sextant/crds");
    for (file, crd) in all_crds() {
        let want = crd_yaml(&crd).unwrap();
        let have = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            have == want,
            "charts/sextant/crds/{file} is stale: run `make crds` and commit the result"
        );
    }
}

#[test]
fn crds_have_status_subresource_printer_columns_and_scope() {
    let crds: BTreeMap<_, _> = all_crds().into_iter().collect();
    let nn = &crds["nodenetworks.sextant.io.yaml"];
    assert_eq!(nn.spec.scope, "Cluster");
    let v = &nn.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let cols: Vec<_> = v
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        cols,
        [
            "Provider", "Instance", "Type", "ENIs", "Pool", "Used", "Age"
        ]
    );
    let fip = &crds["fixedips.sextant.io.yaml"];
    assert_eq!(fip.spec.scope, "Namespaced");
    assert!(
        fip.spec.versions[0]
            .subresources
            .as_ref()
            .unwrap()
            .status
            .is_some()
    );
    // Conditions are the standard metav1.Condition shape.
    let yaml = crd_yaml(nn).unwrap();
    for field in [
        "lastTransitionTime",
        "observedGeneration",
        "reason",
        "message",
    ] {
        assert!(
            yaml.contains(field),
            "{field} missing from conditions schema"
        );
    }
}

#[test]
fn cel_accepts_a_plain_aws_node() {
    assert!(nn(aws_spec()).validate_cel().is_ok());
}

#[test]
fn cel_rejects_min_allocate_above_max_allocate() {
    let mut spec = aws_spec();
    spec.ipam.min_allocate = Some(20);
    spec.ipam.max_allocate = Some(10);
    let err = nn(spec.clone()).validate_cel().unwrap_err();
    assert!(
        format!("{err:?}").contains("minAllocate must not exceed maxAllocate"),
        "{err:?}"
    );
    assert_eq!(
        spec.validate(),
        Err(SpecError::Watermarks {
            low: "minAllocate",
            low_value: 20,
            max: 10
        })
    );
    // maxAllocate 0 means "instance limit": no conflict.
    spec.ipam.max_allocate = Some(0);
    assert!(nn(spec.clone()).validate_cel().is_ok());
    assert!(spec.validate().is_ok());
}

#[test]
fn cel_requires_an_instance_for_cloud_providers_and_cidrs_for_static() {
    let mut spec = aws_spec();
    spec.instance_id = None;
    assert!(nn(spec.clone()).validate_cel().is_err());
    assert_eq!(
        spec.validate(),
        Err(SpecError::MissingInstanceId(Provider::Aws))
    );

    let mut bare = NodeNetworkSpec {
        provider: Provider::Static,
        ..NodeNetworkSpec::default()
    };
    assert!(nn(bare.clone()).validate_cel().is_err());
    assert_eq!(bare.validate(), Err(SpecError::MissingPodCidrs));
    bare.pod_cidrs = vec!["10.244.1.0/24".into()];
    assert!(nn(bare.clone()).validate_cel().is_ok());
    assert!(bare.validate().is_ok());
    bare.pod_cidrs = vec!["10.244.1.0/33".into()];
    assert!(matches!(
        bare.validate(),
        Err(SpecError::BadPodCidr { index: 0, .. })
    ));
}

#[test]
fn fixed_ip_rules_reject_ttl_under_delete_and_ip_changes() {
    let spec = FixedIPSpec {
        ip: "10.0.3.7".into(),
        stateful_set: "web".into(),
        ordinal: 3,
        zone: None,
        subnet_id: None,
        reclaim_policy: ReclaimPolicy::Delete,
        ttl_seconds: Some(60),
    };
    let fip = FixedIP::new("web-3", spec.clone());
    assert!(fip.validate_cel().is_err());
    let ok = FixedIP::new(
        "web-3",
        FixedIPSpec {
            ttl_seconds: None,
            ..spec.clone()
        },
    );
    assert!(ok.validate_cel().is_ok());
    assert_eq!(ok.spec.retain_ttl_seconds(), 0);
    let moved = FixedIP::new(
        "web-3",
        FixedIPSpec {
            ip: "10.0.3.8".into(),
            ttl_seconds: None,
            ..spec
        },
    );
    let err = moved.validate_cel_update(&ok).unwrap_err();
    assert!(format!("{err:?}").contains("ip is immutable"), "{err:?}");
}

#[test]
fn malformed_objects_fail_to_parse_with_a_clear_error() {
    let bad_provider = serde_json::json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
        "metadata": {"name": "n"}, "spec": {"provider": "gcp"}
    });
    let err = serde_json::from_value::<NodeNetwork>(bad_provider).unwrap_err();
    assert!(err.to_string().contains("gcp"), "{err}");
    let bad_state = serde_json::json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
        "metadata": {"name": "n"}, "spec": {"provider": "aws", "instanceId": "i-1"},
        "status": {"release": {"10.0.0.5": "maybe"}}
    });
    assert!(serde_json::from_value::<NodeNetwork>(bad_state).is_err());
}

#[test]
fn release_states_use_the_handshake_names() {
    let s: BTreeMap<String, ReleaseState> = serde_json::from_value(serde_json::json!({
        "a": "marked", "b": "ready-for-release", "c": "do-not-release", "d": "released"
    }))
    .unwrap();
    assert_eq!(s["b"], ReleaseState::ReadyForRelease);
    assert_eq!(s["c"], ReleaseState::DoNotRelease);
}

#[test]
fn set_condition_keeps_transition_time_while_status_holds() {
    let t0 = "2026-01-01T00:00:00Z".parse().unwrap();
    let t1 = "2026-01-01T00:05:00Z".parse().unwrap();
    let mut conds = vec![];
    assert!(set_condition(
        &mut conds,
        condition("PoolReady", false, "Filling", "2/8", Some(1), t0)
    ));
    assert!(set_condition(
        &mut conds,
        condition("PoolReady", false, "Filling", "5/8", Some(1), t1)
    ));
    assert_eq!(conds[0].last_transition_time.0, t0);
    assert!(!set_condition(
        &mut conds,
        condition("PoolReady", false, "Filling", "5/8", Some(1), t1)
    ));
    assert!(set_condition(
        &mut conds,
        condition("PoolReady", true, "Ready", "8/8", Some(1), t1)
    ));
    assert_eq!(conds[0].last_transition_time.0, t1);
    assert_eq!(conds.len(), 1);
}

proptest! {
    /// The Rust validation and the CRD's CEL rules agree on every spec.
    #[test]
    fn rust_validation_agrees_with_cel(
        provider in prop_oneof![Just(Provider::Aws), Just(Provider::Alibaba), Just(Provider::Static)],
        has_instance in any::<bool>(),
        has_cidr in any::<bool>(),
        pre in proptest::option::of(0u32..64),
        min in proptest::option::of(0u32..64),
        max in proptest::option::of(0u32..64),
    ) {
        let spec = NodeNetworkSpec {
            provider,
            instance_id: has_instance.then(|| "i-1".to_string()),
            pod_cidrs: if has_cidr { vec!["10.1.0.0/24".into()] } else { vec![] },
            ipam: IpamSpec { pre_allocate: pre, min_allocate: min, max_allocate: max, ..IpamSpec::default() },
            ..NodeNetworkSpec::default()
        };
        let cel = nn(spec.clone()).validate_cel().is_ok();
        prop_assert_eq!(spec.validate().is_ok(), cel, "{:?}", spec);
    }
}
