//! Values: the schema refuses what it does not know, and cloud credentials
//! are only ever referenced.

use super::*;

#[test]
fn cloud_credentials_are_only_referenced_never_inlined() {
    for r in sets() {
        // The only Secrets are the webhook's and the extender's serving pairs.
        for s in r.all(|o| match o {
            Object::Secret(s) => Some(s.as_ref()),
            _ => None,
        }) {
            assert!(
                ["sextant-webhook-tls", "sextant-scheduler-ext-tls"]
                    .contains(&name_of(&s.metadata)),
                "{}: Secret {}",
                r.set,
                name_of(&s.metadata)
            );
        }
        for (file, text) in &r.text {
            for needle in [
                "AKIA",
                "LTAI",
                "aws_secret_access_key",
                "ACCESS_KEY_SECRET",
                "SECRET_ACCESS_KEY",
            ] {
                assert!(
                    !text.contains(needle),
                    "{}: {file} contains {needle}",
                    r.set
                );
            }
        }
        for d in deployments(&r) {
            for c in containers(pod_spec_of_deploy(d)) {
                for e in c.env.iter().flatten() {
                    let n = e.name.to_ascii_uppercase();
                    let secretish = ["SECRET", "ACCESS_KEY", "TOKEN", "PASSWORD"]
                        .iter()
                        .any(|w| n.contains(w));
                    assert!(
                        !(secretish && e.value.is_some()),
                        "{}: {} has {} inline",
                        r.set,
                        c.name,
                        e.name
                    );
                }
            }
        }
        let op = deployment(&r, "sextant-operator");
        let sa_annotations = |r: &Rendered| {
            r.all(|o| match o {
                Object::ServiceAccount(s) => Some(s.as_ref()),
                _ => None,
            })
            .into_iter()
            .find(|s| name_of(&s.metadata) == "sextant-operator")
            .and_then(|s| s.metadata.annotations.clone())
            .unwrap_or_default()
        };
        match r.set.as_str() {
            "aws" => {
                assert!(sa_annotations(&r).contains_key("eks.amazonaws.com/role-arn"));
            }
            "alibaba" => {
                // A static key only: with RRSA beside it the key would win
                // (as in Alibaba's SDKs), and the annotation would mislead.
                assert!(
                    !sa_annotations(&r).contains_key("pod-identity.alibabacloud.com/role-name")
                );
                let c = &pod_spec_of_deploy(op.expect("operator")).containers[0];
                let refs: Vec<&str> = c
                    .env_from
                    .iter()
                    .flatten()
                    .filter_map(|e| e.secret_ref.as_ref().map(|s| s.name.as_str()))
                    .collect();
                assert_eq!(refs, vec!["sextant-alibaba-credentials"]);
            }
            _ => {}
        }
    }
}

#[test]
fn values_schema_rejects_an_unknown_provider_and_unknown_keys() {
    let results = render_values(&[
        ("bad-provider", Some("provider: gcp\n".to_owned())),
        ("typo", Some("operater:\n  replicas: 3\n".to_owned())),
    ])
    .expect("helm ran");
    for (r, what) in results.into_iter().zip(["provider", "operater"]) {
        let err = r.expect_err("schema must reject it");
        assert!(format!("{err:#}").contains(what), "{err:#}");
    }
}
