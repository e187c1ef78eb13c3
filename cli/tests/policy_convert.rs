//! `sextantctl policy convert` on real files: the protected-db example
//! converts with its spec unchanged; an L7 policy is refused with its
//! problems listed and a non-zero exit.

use std::{
    io::Write,
    process::{Command, Stdio},
};

fn sextantctl(args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sextantctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sextantctl runs");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(stdin.as_bytes())
        .expect("stdin written");
    child.wait_with_output().expect("sextantctl finishes")
}

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/examples/protected-db-policy.yaml"
);

#[test]
fn converts_the_protected_db_example_keeping_metadata_and_spec() {
    let out = sextantctl(&["policy", "convert", EXAMPLE], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(EXAMPLE).unwrap()).unwrap();
    assert_eq!(got["apiVersion"], "sextant.io/v1alpha1");
    assert_eq!(got["kind"], "SextantNetworkPolicy");
    assert_eq!(got["metadata"], want["metadata"]);
    assert_eq!(got["spec"], want["spec"]);
    // And the result is a valid SextantNetworkPolicy.
    let typed: sextant_crds::SextantNetworkPolicy = serde_json::from_value(got).unwrap();
    assert!(typed.spec.is_some());
}

#[test]
fn converts_lists_and_multiple_documents_from_stdin_to_a_file() {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let second = example.replace("name: protected-db", "name: protected-db-2");
    let input = format!("{example}\n---\n{second}");
    let dir = std::env::temp_dir().join(format!("sextantctl-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("out.yaml");
    let out = sextantctl(
        &["policy", "convert", "-", "-o", file.to_str().unwrap()],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let written = std::fs::read_to_string(&file).unwrap();
    let names: Vec<String> = serde_yaml::Deserializer::from_str(&written)
        .map(|d| {
            let v = <serde_json::Value as serde::Deserialize>::deserialize(d).unwrap();
            v["metadata"]["name"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(names, ["protected-db", "protected-db-2"]);
    let _ = std::fs::remove_dir_all(&dir);

    let list = serde_json::json!({
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicyList",
        "items": [serde_yaml::from_str::<serde_json::Value>(&example).unwrap()],
    });
    let out = sextantctl(&["policy", "convert"], &list.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn refuses_an_l7_policy_listing_every_problem() {
    let l7 = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: api-l7
  namespace: shop
spec:
  endpointSelector:
    matchLabels: {app: api}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/public"}]
  egress:
  - toFQDNs: [{matchName: api.example.com}]
"#;
    let out = sextantctl(&["policy", "convert", "-"], l7);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing converted");
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "document 1 (CiliumNetworkPolicy shop/api-l7): spec.ingress[0].toPorts[0].rules: L7 rules are not supported",
        "document 1 (CiliumNetworkPolicy shop/api-l7): spec.egress[0].toFQDNs: DNS-based rules (toFQDNs) are not supported",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
