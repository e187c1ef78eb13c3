//! The chart and the CRDs against a real kube-apiserver: every rendered
//! object of every documented value set passes server-side apply (dry run
//! and for real), the docs' examples are accepted, invalid objects are
//! refused by the API server with the message docs/crds.md promises, and
//! `kubectl explain` shows the field docs.

use sextant_e2e::{
    chart::{self, repo_root},
    cluster::{
        Cluster, Options,
        install::{self, apply},
    },
};

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

fn crds_installed(c: &Cluster) {
    install::apply_crds(c).expect("CRDs applied and established");
}

#[test]
fn every_documented_value_set_is_accepted_by_server_side_apply() {
    let Some(c) = cluster() else { return };
    crds_installed(c);
    apply(
        c,
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n",
            chart::NAMESPACE
        ),
        false,
    )
    .expect("namespace");
    let sets = chart::render_documented_sets().expect("render");
    assert_eq!(sets.len(), chart::VALUE_SETS.len());
    for rendered in &sets {
        let yaml = install::manifests(rendered);
        assert!(yaml.contains("kind:"), "{}: nothing rendered", rendered.set);
        apply(c, &yaml, true)
            .unwrap_or_else(|e| panic!("value set {}: dry run refused: {e:#}", rendered.set));
        apply(c, &yaml, false)
            .unwrap_or_else(|e| panic!("value set {}: apply refused: {e:#}", rendered.set));
    }
    // What was applied is there: the operator's ClusterRole of the last
    // set that has one, read back from the API server.
    let roles = c
        .kubectl_ok(&["get", "clusterroles", "-o", "name"], None)
        .expect("list roles");
    assert!(
        roles.contains("clusterrole.rbac.authorization.k8s.io/sextant-agent"),
        "{roles}"
    );
}

#[test]
fn docs_examples_are_accepted() {
    let Some(c) = cluster() else { return };
    crds_installed(c);
    let dir = repo_root().join("docs/examples");
    let mut applied = 0;
    for entry in std::fs::read_dir(&dir).expect("docs/examples") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        // The Cilium-shaped example is for `sextantctl policy convert`.
        if !text.contains("apiVersion: sextant.io/") {
            continue;
        }
        apply(c, &text, true).unwrap_or_else(|e| panic!("{}: refused: {e:#}", path.display()));
        applied += 1;
    }
    assert!(
        applied >= 4,
        "only {applied} sextant.io examples in docs/examples"
    );
}

/// `(what, object YAML, message the API server must give)`; each message is
/// also in docs/crds.md.
fn invalid_objects() -> Vec<(&'static str, String, &'static str)> {
    let nn = |spec: &str| {
        format!(
            "apiVersion: sextant.io/v1alpha1\nkind: NodeNetwork\nmetadata:\n  name: bad-node\nspec:\n{spec}"
        )
    };
    let fip = |spec: &str| {
        format!(
            "apiVersion: sextant.io/v1alpha1\nkind: FixedIP\nmetadata:\n  name: web-0\n  namespace: default\nspec:\n  statefulSet: web\n  ordinal: 0\n{spec}"
        )
    };
    vec![
        (
            "minAllocate above maxAllocate",
            nn("  provider: aws\n  instanceId: i-1\n  ipam:\n    minAllocate: 10\n    maxAllocate: 5\n"),
            "minAllocate must not exceed maxAllocate",
        ),
        (
            "preAllocate above maxAllocate",
            nn("  provider: aws\n  instanceId: i-1\n  ipam:\n    preAllocate: 10\n    maxAllocate: 5\n"),
            "preAllocate must not exceed maxAllocate",
        ),
        (
            "cloud provider without instanceId",
            nn("  provider: aws\n"),
            "instanceId is required for cloud providers",
        ),
        (
            "static without podCIDRs",
            nn("  provider: static\n"),
            "podCIDRs is required for the static provider",
        ),
        (
            "prefix length 33",
            nn("  provider: static\n  podCIDRs: [10.0.0.0/33]\n"),
            "podCIDRs must be IPv4 CIDRs",
        ),
        (
            "three-octet CIDR",
            nn("  provider: static\n  podCIDRs: [10.0.0/24]\n"),
            "podCIDRs must be IPv4 CIDRs",
        ),
        (
            "unknown provider",
            nn("  provider: gcp\n  instanceId: i-1\n"),
            "Unsupported value: \"gcp\"",
        ),
        (
            "bad reclaim policy",
            fip("  ip: 10.0.1.5\n  reclaimPolicy: Keep\n"),
            "Unsupported value: \"Keep\"",
        ),
        (
            "ttl under Delete",
            fip("  ip: 10.0.1.5\n  reclaimPolicy: Delete\n  ttlSeconds: 60\n"),
            "ttlSeconds applies only to reclaimPolicy Retain",
        ),
        (
            "three-octet ip",
            fip("  ip: 10.0.1\n"),
            "ip must be an IPv4 address",
        ),
        (
            "octet above 255",
            fip("  ip: 10.0.1.300\n"),
            "ip must be an IPv4 address",
        ),
        (
            "policy without spec",
            "apiVersion: sextant.io/v1alpha1\nkind: SextantNetworkPolicy\nmetadata:\n  name: empty\n  namespace: default\n"
                .to_owned(),
            "one of spec or specs is required",
        ),
    ]
}

#[test]
fn invalid_objects_are_refused_by_the_api_server_with_the_documented_message() {
    let Some(c) = cluster() else { return };
    crds_installed(c);
    let docs = std::fs::read_to_string(repo_root().join("docs/crds.md")).expect("docs/crds.md");
    let mut failures = Vec::new();
    for (what, yaml, message) in invalid_objects() {
        assert!(
            docs.contains(
                message
                    .trim_start_matches("Unsupported value: ")
                    .trim_matches('"')
            ) || docs.contains(message),
            "docs/crds.md does not promise {message:?} ({what})"
        );
        match apply(c, &yaml, true) {
            Ok(out) => failures.push(format!("{what}: accepted ({out})")),
            Err(e) => {
                let e = format!("{e:#}");
                if !e.contains(message) {
                    failures.push(format!("{what}: refused, but without {message:?}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fixed_ip_address_is_immutable_on_the_api_server() {
    let Some(c) = cluster() else { return };
    crds_installed(c);
    let obj = |ip: &str| {
        format!(
            "apiVersion: sextant.io/v1alpha1\nkind: FixedIP\nmetadata:\n  name: db-1\n  namespace: default\nspec:\n  ip: {ip}\n  statefulSet: db\n  ordinal: 1\n"
        )
    };
    apply(c, &obj("10.0.1.8"), false).expect("create");
    let err = apply(c, &obj("10.0.1.9"), false).expect_err("changing ip must be refused");
    assert!(format!("{err:#}").contains("ip is immutable"), "{err:#}");
}

#[test]
fn kubectl_explain_shows_the_field_docs() {
    let Some(c) = cluster() else { return };
    crds_installed(c);
    let out = c
        .kubectl_ok(&["explain", "nodenetwork.spec.ipam.preAllocate"], None)
        .expect("explain");
    assert!(out.contains("Free IPs to keep ready"), "{out}");
    let out = c
        .kubectl_ok(&["explain", "fixedip.spec.reclaimPolicy"], None)
        .expect("explain");
    assert!(out.contains("Retain"), "{out}");
}
