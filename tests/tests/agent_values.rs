//! The agent's policy and conntrack values reach its environment as the
//! flags' env fallbacks (`sextant-agent --help` names them).

use std::collections::BTreeMap;

use sextant_e2e::chart::{Object, render_values};

fn agent_env(values: Option<String>) -> BTreeMap<String, String> {
    let rendered = render_values(&[("custom", values)])
        .expect("helm")
        .pop()
        .expect("one set")
        .expect("renders");
    let ds = rendered
        .all(|o| match o {
            Object::DaemonSet(d) => Some(d.as_ref()),
            _ => None,
        })
        .into_iter()
        .find(|d| {
            d.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.ends_with("agent"))
        })
        .expect("agent DaemonSet");
    let spec = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    let c = spec
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("agent container");
    c.env
        .iter()
        .flatten()
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect()
}

#[test]
fn fail_open_is_off_by_default_and_conntrack_timeouts_are_cilium_s() {
    let env = agent_env(None);
    assert_eq!(env["SEXTANT_POLICY_FAIL_OPEN_AFTER"], "0s");
    assert!(!env.contains_key("SEXTANT_POLICY_FAIL_OPEN_SELECTOR"));
    assert_eq!(env["SEXTANT_CT_TIMEOUT_TCP"], "21600s");
    assert_eq!(env["SEXTANT_CT_TIMEOUT_OTHER"], "60s");
    assert_eq!(env["SEXTANT_CT_GC_INTERVAL"], "30s");
    assert_eq!(env["SEXTANT_USAGE_REPORT_INTERVAL"], "15s");
    assert_eq!(env["SEXTANT_IP_COOLDOWN"], "30s");
    assert_eq!(env["SEXTANT_FIXED_IP_WAIT"], "30s");
    assert!(
        !env.keys()
            .any(|k| k.ends_with("_SECONDS") || k.ends_with("_RATE")),
        "the chart sets only the duration flags: {env:?}"
    );
}

#[test]
fn fail_open_values_become_the_agent_flags() {
    let env = agent_env(Some(
        "agent:\n  policy:\n    failOpenAfterSeconds: 600\n    failOpenSelector: {tier: critical, app: pay}\n"
            .into(),
    ));
    assert_eq!(env["SEXTANT_POLICY_FAIL_OPEN_AFTER"], "600s");
    assert_eq!(
        env["SEXTANT_POLICY_FAIL_OPEN_SELECTOR"],
        "app=pay,tier=critical"
    );
}

#[test]
fn the_per_policy_entry_budget_reaches_the_agent() {
    let env = agent_env(None);
    assert_eq!(env["SEXTANT_POLICY_MAX_ENTRIES_PER_POLICY"], "65536");
    let env = agent_env(Some(
        "agent:\n  policy:\n    maxEntriesPerPolicy: 1000\n".into(),
    ));
    assert_eq!(env["SEXTANT_POLICY_MAX_ENTRIES_PER_POLICY"], "1000");
}
