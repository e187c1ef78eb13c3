//! The Grafana dashboards in the chart reference only metrics the components
//! really register: every `sextant_*` name in a panel's PromQL must be one
//! that a component's `metrics.rs` registers under its prefix (counters read
//! with `_total`, histograms with `_bucket`/`_sum`/`_count`).
//!
//! The names come from the `register("name", ...)` calls in the sources,
//! because prometheus-client leaves label families out of its exposition
//! until they have a sample, so an idle registry cannot list them.

use std::{collections::BTreeSet, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

/// Each component's metrics source and the prefix its registry carries.
const SOURCES: [(&str, &str); 7] = [
    ("controllers/src/metrics.rs", "sextant_operator"),
    ("controllers/core/src/metrics.rs", "sextant_operator"),
    ("cloud/src/metrics.rs", "sextant_cloud"),
    ("agent/src/metrics.rs", "sextant_agent"),
    ("controllers/webhook/src/metrics.rs", "sextant_webhook"),
    ("device-plugin/src/metrics.rs", "sextant_device_plugin"),
    ("scheduler-ext/src/metrics.rs", "sextant_scheduler_ext"),
];

/// Every series name a registered metric can show as.
fn exposed(root: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    for (file, prefix) in SOURCES {
        let text =
            std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {file}"))?;
        let mut found = 0;
        let mut rest = text.as_str();
        while let Some(i) = rest.find("register(") {
            rest = &rest[i + "register(".len()..];
            let trimmed = rest.trim_start();
            let Some(quoted) = trimmed.strip_prefix('"') else {
                continue;
            };
            let Some(end) = quoted.find('"') else {
                continue;
            };
            let name = format!("{prefix}_{}", &quoted[..end]);
            for suffix in ["", "_total", "_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
            found += 1;
        }
        assert!(found > 0, "{file} registers no metric under {prefix}");
    }
    Ok(names)
}

/// `sextant_*` identifiers in a PromQL expression.
fn referenced(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("sextant_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn every_dashboard_panel_queries_metrics_that_exist() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let exposed = exposed(&root)?;
    assert!(
        exposed.contains("sextant_operator_reconcile_errors_total"),
        "{exposed:?}"
    );
    let dir = root.join("charts/sextant/dashboards");
    let mut dashboards = 0;
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        dashboards += 1;
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
            .with_context(|| format!("{} is not JSON", path.display()))?;
        let panels = d["panels"].as_array().context("a dashboard has panels")?;
        assert!(!panels.is_empty(), "{} has no panels", path.display());
        for p in panels {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().context("a target has an expr")?;
                let names = referenced(expr);
                assert!(
                    !names.is_empty(),
                    "{}: {expr:?} queries no sextant metric",
                    path.display()
                );
                for n in names {
                    assert!(
                        exposed.contains(&n),
                        "{}: panel {:?} queries {n}, which no component exposes",
                        path.display(),
                        p["title"]
                    );
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(dashboards, 2, "operator/IPAM and agent/datapath dashboards");
    assert!(checked >= 15, "only {checked} references checked");
    Ok(())
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        referenced(
            "histogram_quantile(0.99, sum by (le) (rate(sextant_a_b_bucket[5m]))) / sextant_c"
        ),
        vec!["sextant_a_b_bucket", "sextant_c"]
    );
}
