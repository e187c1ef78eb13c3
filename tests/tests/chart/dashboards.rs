//! Grafana dashboards as a ConfigMap the sidecar loads.

use super::*;

fn config_map<'a>(r: &'a Rendered, name: &str) -> Option<&'a ConfigMap> {
    r.all(|o| match o {
        Object::ConfigMap(c) => Some(c.as_ref()),
        _ => None,
    })
    .into_iter()
    .find(|c| name_of(&c.metadata) == name)
}

#[test]
fn dashboards_ship_as_a_configmap_the_grafana_sidecar_loads() {
    // The files the chart must carry, parsed.
    let dir = chart_dir().join("dashboards");
    let mut files: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("charts/sextant/dashboards") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path).expect("read dashboard");
        files.insert(
            name,
            serde_json::from_str(&text).expect("dashboard is JSON"),
        );
    }
    assert_eq!(files.len(), 2, "operator/IPAM and agent/datapath");

    for r in sets() {
        let cm = config_map(&r, "sextant-dashboards")
            .unwrap_or_else(|| panic!("{}: no dashboards ConfigMap", r.set));
        assert_eq!(cm.metadata.namespace.as_deref(), Some(NAMESPACE));
        let labels = cm.metadata.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get("grafana_dashboard").map(String::as_str),
            Some("1"),
            "{}: the sidecar's label",
            r.set
        );
        let data = cm.data.clone().unwrap_or_default();
        let shipped: BTreeMap<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                let json = serde_json::from_str(v)
                    .unwrap_or_else(|e| panic!("{}: {k} is not JSON: {e}", r.set));
                (k.clone(), json)
            })
            .collect();
        assert!(
            shipped == files,
            "{}: ConfigMap data differs from charts/sextant/dashboards",
            r.set
        );
    }

    let results = render_values(&[
        ("dashboards-off", Some("dashboards:\n  enabled: false\n".to_owned())),
        (
            "dashboards-elsewhere",
            Some(
                "dashboards:\n  namespace: monitoring\n  labels: {grafana_dashboard: null, sextant_dashboard: \"yes\"}\n  annotations: {grafana_folder: Sextant}\n"
                    .to_owned(),
            ),
        ),
    ])
    .expect("helm ran");
    let mut results = results.into_iter();
    let off = results.next().expect("off").expect("rendered");
    assert!(config_map(&off, "sextant-dashboards").is_none());
    let elsewhere = results.next().expect("elsewhere").expect("rendered");
    let cm = config_map(&elsewhere, "sextant-dashboards").expect("ConfigMap");
    assert_eq!(cm.metadata.namespace.as_deref(), Some("monitoring"));
    let labels = cm.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("sextant_dashboard").map(String::as_str),
        Some("yes")
    );
    assert!(
        !labels.contains_key("grafana_dashboard"),
        "null drops the default label"
    );
    assert_eq!(
        labels.get("app.kubernetes.io/part-of").map(String::as_str),
        Some("sextant")
    );
    let annotations = cm.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations.get("grafana_folder").map(String::as_str),
        Some("Sextant")
    );
}

/// Off by default (the CRDs may be absent); on, one PodMonitor per
/// component with a metrics port, selecting exactly that component's pods on
/// the port the pods name `metrics`, with the labels a Prometheus selects by.
#[test]
fn pod_monitors_scrape_the_agent_and_operator_when_asked() {
    let monitors = |r: &Rendered| -> Vec<serde_json::Value> {
        r.all(|o| match o {
            Object::PodMonitor(v) => Some(v),
            _ => None,
        })
        .into_iter()
        .cloned()
        .collect()
    };
    for r in sets() {
        assert!(monitors(&r).is_empty(), "{}: off by default", r.set);
    }
    let values = "podMonitor:\n  enabled: true\n  labels:\n    release: kube-prometheus-stack\n";
    let r = render_values(&[("pod-monitor", Some(values.to_owned()))])
        .expect("helm ran")
        .remove(0)
        .expect("rendered");
    let got = monitors(&r);
    let names: Vec<&str> = got
        .iter()
        .filter_map(|m| m["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["sextant-agent", "sextant-operator"]);
    for m in &got {
        let component = m["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("sextant-")
            .to_owned();
        assert_eq!(m["metadata"]["labels"]["release"], "kube-prometheus-stack");
        assert_eq!(
            m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            format!("sextant-{component}")
        );
        assert_eq!(m["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    }
}
