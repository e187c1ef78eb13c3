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
    assert_eq!(env["SEXTANT_POLICY_FAIL_OPEN_AFTER_SECONDS"], "0");
    assert!(!env.contains_key("SEXTANT_POLICY_FAIL_OPEN_SELECTOR"));
    assert_eq!(env["SEXTANT_CT_TIMEOUT_TCP_SECONDS"], "21600");
    assert_eq!(env["SEXTANT_CT_TIMEOUT_OTHER_SECONDS"], "60");
    assert_eq!(env["SEXTANT_CT_GC_SECONDS"], "30");
}

#[test]
fn fail_open_values_become_the_agent_flags() {
    let env = agent_env(Some(
        "agent:\n  policy:\n    failOpenAfterSeconds: 600\n    failOpenSelector: {tier: critical, app: pay}\n"
            .into(),
    ));
    assert_eq!(env["SEXTANT_POLICY_FAIL_OPEN_AFTER_SECONDS"], "600");
    assert_eq!(
        env["SEXTANT_POLICY_FAIL_OPEN_SELECTOR"],
        "app=pay,tier=critical"
    );
}
