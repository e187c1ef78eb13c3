//! The Helm chart, rendered by the real Helm engine for every documented
//! value set and asserted on as typed Kubernetes objects.
//!
//! One test binary, one module per topic; the documented value sets are
//! rendered once per run (one interpreter start) and shared by every test
//! through [`sets`]. Tests that need their own values render them
//! themselves with `render_values`.
//!
//! ```text
//!  charts/sextant + ci/*-values.yaml ──helm_python (lint --strict, render)──▶ sets() (OnceLock)
//!        ├─ render      lint, names and labels, CRDs = crdgen, the venv
//!        ├─ values      schema refusals, cloud credentials only referenced
//!        ├─ credentials IRSA, RRSA (ACK's webhook or a projected token), refusals
//!        ├─ rbac        least privilege per component, no wildcards
//!        ├─ webhook     failure policy, selectors, TLS (generated or cert-manager), url
//!        ├─ workloads   agent, device plugin, operator, scheduler extender
//!        └─ dashboards  the Grafana sidecar's ConfigMap
//! ```

mod credentials;
mod dashboards;
mod rbac;
mod render;
mod values;
mod webhook;
mod workloads;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::OnceLock,
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Container, PodSpec, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use sextant_e2e::chart::{
    NAMESPACE, Object, Rendered, chart_dir, render_documented_sets, render_values,
};

/// Every documented value set, rendered on first use and shared by every
/// test of this binary; a failed render fails each test that asks, with
/// Helm's reason.
fn sets() -> &'static [Rendered] {
    static SETS: OnceLock<Result<Vec<Rendered>, String>> = OnceLock::new();
    match SETS.get_or_init(|| render_documented_sets().map_err(|e| format!("{e:#}"))) {
        Ok(sets) => sets,
        Err(e) => panic!("chart did not render: {e}"),
    }
}

fn deployments(r: &Rendered) -> Vec<&Deployment> {
    r.all(|o| match o {
        Object::Deployment(d) => Some(d.as_ref()),
        _ => None,
    })
}

fn daemonsets(r: &Rendered) -> Vec<&DaemonSet> {
    r.all(|o| match o {
        Object::DaemonSet(d) => Some(d.as_ref()),
        _ => None,
    })
}

fn name_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

fn deployment<'a>(r: &'a Rendered, name: &str) -> Option<&'a Deployment> {
    deployments(r)
        .into_iter()
        .find(|d| name_of(&d.metadata) == name)
}

fn daemonset<'a>(r: &'a Rendered, name: &str) -> &'a DaemonSet {
    daemonsets(r)
        .into_iter()
        .find(|d| name_of(&d.metadata) == name)
        .unwrap_or_else(|| panic!("{}: no DaemonSet {name}", r.set))
}

fn pod_spec_of_ds(ds: &DaemonSet) -> &PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("DaemonSet has a pod spec")
}

fn pod_spec_of_deploy(d: &Deployment) -> &PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("Deployment has a pod spec")
}

fn containers(spec: &PodSpec) -> impl Iterator<Item = &Container> {
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// `(apiGroup, resource) -> verbs`, merged over the rules (resourceNames ignored).
fn permissions(rules: &[PolicyRule]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                out.entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    out
}

fn perms(list: &[(&str, &str, &[&str])]) -> BTreeMap<(String, String), BTreeSet<String>> {
    list.iter()
        .map(|(g, r, verbs)| {
            (
                (g.to_string(), r.to_string()),
                verbs.iter().map(|v| v.to_string()).collect(),
            )
        })
        .collect()
}

fn cluster_role<'a>(r: &'a Rendered, name: &str) -> Option<&'a ClusterRole> {
    r.all(|o| match o {
        Object::ClusterRole(c) => Some(c.as_ref()),
        _ => None,
    })
    .into_iter()
    .find(|c| name_of(&c.metadata) == name)
}
