//! The chart as a whole: it lints clean, every object is named and
//! labelled, its CRDs are crdgen's, and the Helm engine is there.

use super::*;

#[test]
fn chart_lints_clean_with_strict_for_every_value_set() {
    for r in sets() {
        let problems: Vec<_> = r.lint.iter().filter(|(sev, _, _)| *sev >= 2).collect();
        assert!(problems.is_empty(), "{}: lint: {problems:?}", r.set);
        assert!(!r.objects.is_empty(), "{}: nothing rendered", r.set);
    }
}

#[test]
fn every_object_has_a_name_and_sextant_labels() {
    for r in sets() {
        for (file, obj) in &r.objects {
            let meta = match obj {
                Object::Deployment(o) => &o.metadata,
                Object::DaemonSet(o) => &o.metadata,
                Object::Service(o) => &o.metadata,
                Object::ServiceAccount(o) => &o.metadata,
                Object::ConfigMap(o) => &o.metadata,
                Object::Secret(o) => &o.metadata,
                Object::ClusterRole(o) => &o.metadata,
                Object::ClusterRoleBinding(o) => &o.metadata,
                Object::Role(o) => &o.metadata,
                Object::RoleBinding(o) => &o.metadata,
                Object::MutatingWebhookConfiguration(o) => &o.metadata,
                Object::ValidatingAdmissionPolicy(o) => &o.metadata,
                Object::ValidatingAdmissionPolicyBinding(o) => &o.metadata,
                Object::CertManager(_) | Object::PodMonitor(_) => continue,
            };
            assert!(
                !name_of(meta).is_empty(),
                "{}: {file}: unnamed object",
                r.set
            );
            let labels = meta.labels.clone().unwrap_or_default();
            assert_eq!(
                labels.get("app.kubernetes.io/part-of").map(String::as_str),
                Some("sextant"),
                "{}: {file}: {}",
                r.set,
                name_of(meta)
            );
        }
        // Every pod template carries the label the webhook's objectSelector skips.
        let templates = deployments(&r)
            .into_iter()
            .map(|d| (name_of(&d.metadata), d.spec.as_ref().map(|s| &s.template)))
            .chain(
                daemonsets(&r)
                    .into_iter()
                    .map(|d| (name_of(&d.metadata), d.spec.as_ref().map(|s| &s.template))),
            );
        for (name, template) in templates {
            let labels = template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .unwrap_or_default();
            assert_eq!(
                labels.get("app.kubernetes.io/part-of").map(String::as_str),
                Some("sextant"),
                "{}: pods of {name}",
                r.set
            );
        }
    }
}

#[test]
fn chart_crds_equal_crdgen_output() {
    let dir = chart_dir().join("crds");
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (file, crd) in sextant_crds::all_crds() {
        want.insert(
            file.to_owned(),
            sextant_crds::crd_yaml(&crd).expect("crd yaml"),
        );
    }
    let mut have: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("charts/sextant/crds") {
        let path = entry.expect("dir entry").path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        have.insert(name, std::fs::read_to_string(&path).expect("read CRD"));
    }
    assert_eq!(
        have.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "chart CRD files differ from crdgen's; run `make crds`"
    );
    for (file, text) in &want {
        assert!(
            have[file] == *text,
            "charts/sextant/crds/{file} drifted from crdgen; run `make crds`"
        );
    }
}

#[test]
fn a_missing_venv_fails_with_a_message_saying_how_to_fix_it() {
    let err = sextant_e2e::chart::python_in(std::path::Path::new("/nonexistent/sextant-venv"))
        .expect_err("no venv there");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("helm-python-sdk") && msg.contains("make setup"),
        "{msg}"
    );
    // And the real one is there: its absence must fail this suite, never skip it.
    if let Err(e) = sextant_e2e::chart::venv_python() {
        panic!("{e:#}");
    }
}
