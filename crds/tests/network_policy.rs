//! SextantNetworkPolicy and SextantIdentity as the API server sees them: a
//! CiliumNetworkPolicy body parses unchanged, unsupported fields survive the
//! round trip so they can be rejected, and the CRDs have the right scope.

use std::collections::BTreeMap;

use kube::CustomResourceExt;
use sextant_crds::*;

const L7_POLICY: &str = r#"
apiVersion: sextant.io/v1alpha1
kind: SextantNetworkPolicy
metadata:
  name: l7
  namespace: shop
spec:
  endpointSelector:
    matchLabels:
      k8s:app: api
  ingress:
  - fromEndpoints:
    - matchLabels:
        app: web
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
        - method: GET
specs:
- endpointSelector: {}
  egress:
  - toFQDNs:
    - matchName: example.com
"#;

#[test]
fn cilium_shaped_policy_parses_and_keeps_unsupported_fields_for_rejection() {
    let p: SextantNetworkPolicy = serde_yaml::from_str(L7_POLICY).unwrap();
    let rules = p.rules();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[1].0, "specs[0]");
    let spec = p.spec.as_ref().unwrap();
    let port_rule = &spec.ingress.as_ref().unwrap()[0].to_ports.as_ref().unwrap()[0];
    assert!(port_rule.extra.contains_key("rules"), "L7 rules kept");
    let egress = &p.specs.as_ref().unwrap()[0].egress.as_ref().unwrap()[0];
    assert!(egress.extra.contains_key("toFQDNs"), "toFQDNs kept");
    // Serializing writes them back, with Sextant's apiVersion and kind.
    let back = serde_json::to_value(&p).unwrap();
    assert_eq!(back["apiVersion"], "sextant.io/v1alpha1");
    assert_eq!(back["kind"], "SextantNetworkPolicy");
    assert_eq!(
        back["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"][0]["method"],
        "GET"
    );
    assert_eq!(
        back["specs"][0]["egress"][0]["toFQDNs"][0]["matchName"],
        "example.com"
    );
    let again: SextantNetworkPolicy = serde_json::from_value(back).unwrap();
    assert_eq!(again, p);
}

#[test]
fn policy_crd_is_namespaced_with_status_and_preserves_unknown_rule_fields() {
    let crd = SextantNetworkPolicy::crd();
    assert_eq!(crd.spec.scope, "Namespaced");
    let v = &crd.spec.versions[0];
    assert!(v.subresources.as_ref().unwrap().status.is_some());
    let yaml = crd_yaml(&crd).unwrap();
    assert!(yaml.contains("x-kubernetes-preserve-unknown-fields: true"));
    assert!(yaml.contains("fromCIDRSet"));
    assert!(yaml.contains("x-kubernetes-int-or-string: true"));
    let props = v
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .as_ref()
        .unwrap()
        .properties
        .as_ref()
        .unwrap();
    assert!(props.contains_key("spec") && props.contains_key("specs"));
}

#[test]
fn identity_crd_is_cluster_scoped_and_named_by_number() {
    let crd = SextantIdentity::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    let labels = BTreeMap::from([("app".to_owned(), "db".to_owned())]);
    let id = SextantIdentity::bind(70012, labels.clone());
    assert_eq!(id.metadata.name.as_deref(), Some("70012"));
    assert_eq!(id.id(), Some(70012));
    let mut prefixed = id.clone();
    prefixed.metadata.name = Some("id-70012".into());
    assert_eq!(prefixed.id(), Some(70012));
    // The number never changes meaning.
    let relabelled = SextantIdentity::bind(70012, BTreeMap::new());
    assert!(relabelled.validate_cel_update(&id).is_err());
    assert!(id.validate_cel_update(&id).is_ok());
}
