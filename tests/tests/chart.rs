//! The Helm chart, rendered by the real Helm engine for every documented
//! value set and asserted on as typed Kubernetes objects.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::{DaemonSet, Deployment},
    core::v1::{ConfigMap, Container, PodSpec, Secret},
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use sextant_e2e::chart::{
    NAMESPACE, Object, Rendered, chart_dir, render_documented_sets, render_values,
};

fn sets() -> Vec<Rendered> {
    match render_documented_sets() {
        Ok(sets) => sets,
        Err(e) => panic!("chart did not render: {e:#}"),
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
                Object::CertManager(_) => continue,
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
fn rbac_has_no_wildcard_verbs_resources_or_groups() {
    for r in sets() {
        let mut rules: Vec<(String, &PolicyRule)> = Vec::new();
        for c in r.all(|o| match o {
            Object::ClusterRole(c) => Some(c.as_ref()),
            _ => None,
        }) {
            ensure_no_aggregation(&r, c);
            for rule in c.rules.iter().flatten() {
                rules.push((name_of(&c.metadata).to_owned(), rule));
            }
        }
        for role in r.all(|o| match o {
            Object::Role(c) => Some(c.as_ref()),
            _ => None,
        }) {
            for rule in role.rules.iter().flatten() {
                rules.push((name_of(&role.metadata).to_owned(), rule));
            }
        }
        assert!(!rules.is_empty(), "{}: no RBAC rendered", r.set);
        for (role, rule) in rules {
            let all = rule
                .verbs
                .iter()
                .chain(rule.resources.iter().flatten())
                .chain(rule.api_groups.iter().flatten())
                .chain(rule.resource_names.iter().flatten());
            for word in all {
                assert!(
                    !word.contains('*'),
                    "{}: {role} has wildcard {word:?}",
                    r.set
                );
            }
            assert!(
                rule.non_resource_urls.is_none(),
                "{}: {role} grants non-resource URLs",
                r.set
            );
            assert!(
                !rule.verbs.is_empty(),
                "{}: {role} has a rule without verbs",
                r.set
            );
        }
    }
}

fn ensure_no_aggregation(r: &Rendered, c: &ClusterRole) {
    assert!(
        c.aggregation_rule.is_none(),
        "{}: {} aggregates other roles",
        r.set,
        name_of(&c.metadata)
    );
}

#[test]
fn rbac_grants_each_component_exactly_what_its_docs_list() {
    for r in sets() {
        let agent = cluster_role(&r, "sextant-agent").expect("agent ClusterRole");
        assert_eq!(
            permissions(agent.rules.as_deref().unwrap_or_default()),
            perms(&[
                ("sextant.io", "nodenetworks", &["get", "list", "watch"]),
                ("sextant.io", "nodenetworks/status", &["patch"]),
                ("sextant.io", "fixedips", &["get", "list", "watch"]),
                ("", "services", &["list", "watch"]),
                ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
                (
                    "sextant.io",
                    "sextantnetworkpolicies",
                    &["get", "list", "watch"]
                ),
                (
                    "networking.k8s.io",
                    "networkpolicies",
                    &["get", "list", "watch"]
                ),
                ("", "pods", &["get", "list", "watch"]),
                ("", "namespaces", &["get", "list", "watch"]),
                ("", "nodes", &["get", "list", "watch"]),
                (
                    "sextant.io",
                    "sextantidentities",
                    &["get", "list", "watch", "create"]
                ),
                ("", "events", &["create", "patch"]),
                ("events.k8s.io", "events", &["create", "patch"]),
            ]),
            "{}: agent",
            r.set
        );
        let ext = cluster_role(&r, "sextant-scheduler-ext").expect("extender ClusterRole");
        assert_eq!(
            permissions(ext.rules.as_deref().unwrap_or_default()),
            perms(&[
                ("sextant.io", "nodenetworks", &["get", "list", "watch"]),
                ("sextant.io", "fixedips", &["get", "list", "watch"]),
            ]),
            "{}: scheduler extender",
            r.set
        );
        if r.set != "static" {
            let op = cluster_role(&r, "sextant-operator").expect("operator ClusterRole");
            let read = &["get", "list", "watch"][..];
            let own = &[
                "get", "list", "watch", "create", "update", "patch", "delete",
            ][..];
            assert_eq!(
                permissions(op.rules.as_deref().unwrap_or_default()),
                perms(&[
                    ("sextant.io", "nodenetworks", own),
                    (
                        "sextant.io",
                        "nodenetworks/status",
                        &["get", "update", "patch"]
                    ),
                    ("sextant.io", "fixedips", own),
                    ("sextant.io", "fixedips/status", &["get", "update", "patch"]),
                    ("", "nodes", read),
                    ("", "pods", read),
                    ("apps", "statefulsets", read),
                    ("sextant.io", "sextantnetworkpolicies", read),
                    ("sextant.io", "sextantnetworkpolicies/status", &["patch"]),
                    ("networking.k8s.io", "networkpolicies", &["list", "watch"]),
                    (
                        "sextant.io",
                        "sextantidentities",
                        &["list", "watch", "delete"]
                    ),
                    ("", "namespaces", &["list"]),
                    ("", "events", &["create", "patch"]),
                    ("events.k8s.io", "events", &["create", "patch"]),
                ]),
                "{}: operator",
                r.set
            );
            // The Lease lives in a namespaced Role, in the release namespace.
            let roles = r.all(|o| match o {
                Object::Role(c) => Some(c.as_ref()),
                _ => None,
            });
            let leader: Vec<&Role> = roles
                .into_iter()
                .filter(|role| role.metadata.namespace.as_deref() == Some(NAMESPACE))
                .collect();
            assert_eq!(leader.len(), 1, "{}: one leader Role", r.set);
            let p = permissions(leader[0].rules.as_deref().unwrap_or_default());
            assert_eq!(
                p.keys().cloned().collect::<Vec<_>>(),
                vec![("coordination.k8s.io".to_owned(), "leases".to_owned())]
            );
        }
        // Device plugin and webhook: a ServiceAccount without any binding or token.
        let bound: BTreeSet<String> = r
            .all(|o| match o {
                Object::ClusterRoleBinding(b) => Some(b.as_ref()),
                _ => None,
            })
            .into_iter()
            .flat_map(|b: &ClusterRoleBinding| b.subjects.iter().flatten().map(|s| s.name.clone()))
            .chain(
                r.all(|o| match o {
                    Object::RoleBinding(b) => Some(b.as_ref()),
                    _ => None,
                })
                .into_iter()
                .flat_map(|b: &RoleBinding| b.subjects.iter().flatten().map(|s| s.name.clone())),
            )
            .collect();
        for sa in ["sextant-device-plugin", "sextant-webhook"] {
            assert!(!bound.contains(sa), "{}: {sa} is bound to a role", r.set);
        }
        let dp = pod_spec_of_ds(daemonset(&r, "sextant-device-plugin"));
        assert_eq!(dp.automount_service_account_token, Some(false), "{}", r.set);
        let wh = deployment(&r, "sextant-webhook").expect("webhook Deployment");
        assert_eq!(
            pod_spec_of_deploy(wh).automount_service_account_token,
            Some(false),
            "{}",
            r.set
        );
    }
}

/// Verbs that change an object.
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn writes(
    p: &BTreeMap<(String, String), BTreeSet<String>>,
    group: &str,
    resource: &str,
) -> Vec<String> {
    p.get(&(group.to_owned(), resource.to_owned()))
        .into_iter()
        .flatten()
        .filter(|v| WRITES.contains(&v.as_str()))
        .cloned()
        .collect()
}

#[test]
fn policy_rbac_is_least_privilege_for_the_operator_and_the_agent() {
    for r in sets() {
        let agent = cluster_role(&r, "sextant-agent").expect("agent ClusterRole");
        let agent = permissions(agent.rules.as_deref().unwrap_or_default());
        // Policies are the users'; the agent only reads them and their sources.
        for (group, resource) in [
            ("sextant.io", "sextantnetworkpolicies"),
            ("sextant.io", "sextantnetworkpolicies/status"),
            ("networking.k8s.io", "networkpolicies"),
            ("", "pods"),
            ("", "namespaces"),
            ("", "nodes"),
        ] {
            assert_eq!(
                writes(&agent, group, resource),
                Vec::<String>::new(),
                "{}: agent writes {group}/{resource}",
                r.set
            );
        }
        // Identity allocation is create-if-absent: AlreadyExists arbitrates,
        // so an agent never rebinds or removes a number another node uses.
        assert_eq!(
            writes(&agent, "sextant.io", "sextantidentities"),
            vec!["create".to_owned()],
            "{}: agent identity writes",
            r.set
        );
        // Its fail-open / restored Events on its Node: posted (a series is
        // patched), never read back, updated or deleted.
        for group in ["", "events.k8s.io"] {
            assert_eq!(
                agent
                    .get(&(group.to_owned(), "events".to_owned()))
                    .cloned()
                    .unwrap_or_default(),
                ["create", "patch"].map(str::to_owned).into(),
                "{}: agent {group}/events",
                r.set
            );
        }
        if r.set == "static" {
            continue;
        }
        let op = cluster_role(&r, "sextant-operator").expect("operator ClusterRole");
        let op = permissions(op.rules.as_deref().unwrap_or_default());
        // The operator writes the Accepted condition, never a policy itself.
        assert_eq!(
            writes(&op, "sextant.io", "sextantnetworkpolicies"),
            Vec::<String>::new(),
            "{}: operator writes policies",
            r.set
        );
        assert_eq!(
            writes(&op, "sextant.io", "sextantnetworkpolicies/status"),
            vec!["patch".to_owned()],
            "{}",
            r.set
        );
        assert_eq!(
            writes(&op, "networking.k8s.io", "networkpolicies"),
            Vec::<String>::new(),
            "{}: operator writes NetworkPolicies",
            r.set
        );
        // Identities: garbage collection deletes, only agents create.
        assert_eq!(
            writes(&op, "sextant.io", "sextantidentities"),
            vec!["delete".to_owned()],
            "{}",
            r.set
        );
        for verb in ["create", "patch"] {
            for group in ["", "events.k8s.io"] {
                assert!(
                    op.get(&(group.to_owned(), "events".to_owned()))
                        .is_some_and(|v| v.contains(verb)),
                    "{}: operator cannot {verb} {group}/events (refusal events)",
                    r.set
                );
            }
        }
    }
}

#[test]
fn every_sextant_resource_in_rbac_is_a_chart_crd() {
    let crds = sextant_crds::all_crds();
    let plural_has_status: BTreeMap<String, bool> = crds
        .iter()
        .map(|(_, crd)| {
            let status = crd
                .spec
                .versions
                .iter()
                .any(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()));
            (crd.spec.names.plural.clone(), status)
        })
        .collect();
    for r in sets() {
        let roles = r.all(|o| match o {
            Object::ClusterRole(c) => Some(c.as_ref()),
            _ => None,
        });
        for role in roles {
            for ((group, resource), _) in permissions(role.rules.as_deref().unwrap_or_default()) {
                if group != "sextant.io" {
                    continue;
                }
                let (plural, sub) = resource
                    .split_once('/')
                    .map_or((resource.as_str(), None), |(p, s)| (p, Some(s)));
                let has_status = plural_has_status.get(plural).unwrap_or_else(|| {
                    panic!(
                        "{}: {} grants {resource}, which no chart CRD defines",
                        r.set,
                        name_of(&role.metadata)
                    )
                });
                match sub {
                    None => {}
                    Some("status") => {
                        assert!(*has_status, "{}: {plural} has no status subresource", r.set)
                    }
                    Some(other) => panic!("{}: unknown subresource {plural}/{other}", r.set),
                }
            }
        }
    }
}

fn webhook_config(r: &Rendered) -> &MutatingWebhookConfiguration {
    let all = r.all(|o| match o {
        Object::MutatingWebhookConfiguration(m) => Some(m.as_ref()),
        _ => None,
    });
    assert_eq!(all.len(), 1, "{}: one MutatingWebhookConfiguration", r.set);
    all[0]
}

fn not_in(
    sel: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    key: &str,
) -> BTreeSet<String> {
    let exprs = sel
        .and_then(|s| s.match_expressions.as_ref())
        .cloned()
        .unwrap_or_default();
    let e = exprs
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no selector on {key}"));
    assert_eq!(e.operator, "NotIn", "{key}");
    e.values.iter().flatten().cloned().collect()
}

#[test]
fn webhook_fails_open_fast_and_skips_system_and_sextant_pods() {
    for r in sets() {
        let mwc = webhook_config(&r);
        let hooks = mwc.webhooks.as_deref().unwrap_or_default();
        assert_eq!(hooks.len(), 1, "{}", r.set);
        let h = &hooks[0];
        assert_eq!(h.failure_policy.as_deref(), Some("Ignore"), "{}", r.set);
        assert_eq!(h.side_effects, "None", "{}", r.set);
        assert_eq!(h.timeout_seconds, Some(2), "{}", r.set);
        assert_eq!(h.admission_review_versions, vec!["v1".to_owned()]);
        let rules = h.rules.as_deref().unwrap_or_default();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].operations.as_deref(),
            Some(&["CREATE".to_owned()][..])
        );
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["pods".to_owned()][..])
        );

        let namespaces = not_in(h.namespace_selector.as_ref(), "kubernetes.io/metadata.name");
        assert!(
            namespaces.contains("kube-system"),
            "{}: {namespaces:?}",
            r.set
        );
        assert!(namespaces.contains(NAMESPACE), "{}: {namespaces:?}", r.set);
        assert!(
            not_in(h.namespace_selector.as_ref(), "sextant.io/skip-ip-resource").contains("true")
        );
        assert!(
            not_in(h.object_selector.as_ref(), "app.kubernetes.io/part-of").contains("sextant")
        );
        assert!(not_in(h.object_selector.as_ref(), "sextant.io/skip-ip-resource").contains("true"));

        let svc = h
            .client_config
            .service
            .as_ref()
            .expect("service clientConfig");
        assert_eq!(svc.name, "sextant-webhook");
        assert_eq!(svc.namespace, NAMESPACE);
        assert_eq!(svc.path.as_deref(), Some("/mutate"));
        assert_eq!(svc.port, Some(443));

        // The chart-generated CA signs the serving pair in the Secret the pods mount.
        let ca = h
            .client_config
            .ca_bundle
            .as_ref()
            .expect("caBundle without cert-manager");
        assert!(String::from_utf8_lossy(&ca.0).contains("BEGIN CERTIFICATE"));
        let secrets: Vec<&Secret> = r.all(|o| match o {
            Object::Secret(s) => Some(s.as_ref()),
            _ => None,
        });
        let tls = secrets
            .iter()
            .find(|s| name_of(&s.metadata) == "sextant-webhook-tls")
            .expect("webhook TLS Secret");
        assert_eq!(tls.type_.as_deref(), Some("kubernetes.io/tls"));
        let data = tls.data.clone().unwrap_or_default();
        assert_eq!(data.get("ca.crt").map(|b| &b.0), Some(&ca.0));
        assert!(String::from_utf8_lossy(&data["tls.crt"].0).contains("BEGIN CERTIFICATE"));
        assert!(String::from_utf8_lossy(&data["tls.key"].0).contains("PRIVATE KEY"));

        let wh = deployment(&r, "sextant-webhook").expect("webhook Deployment");
        assert_eq!(wh.spec.as_ref().and_then(|s| s.replicas), Some(2));
        let spec = pod_spec_of_deploy(wh);
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .expect("tls volume");
        assert_eq!(
            vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("sextant-webhook-tls")
        );
    }
}

#[test]
fn cert_manager_replaces_the_chart_generated_certificate() {
    let values = "webhook:\n  certManager:\n    enabled: true\n".to_owned();
    let r = render_values(&[("cert-manager", Some(values))])
        .expect("helm ran")
        .remove(0)
        .expect("rendered");
    let mwc = webhook_config(&r);
    let h = &mwc.webhooks.as_deref().unwrap_or_default()[0];
    assert!(
        h.client_config.ca_bundle.is_none(),
        "cert-manager injects the CA"
    );
    let annotations = mwc.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("cert-manager.io/inject-ca-from")
            .map(String::as_str),
        Some("sextant-system/sextant-webhook")
    );
    let kinds: BTreeSet<String> = r
        .all(|o| match o {
            Object::CertManager(v) => Some(v),
            _ => None,
        })
        .into_iter()
        .filter_map(|v| v["kind"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(kinds, ["Certificate", "Issuer"].map(String::from).into());
    let no_secret = r
        .all(|o| match o {
            Object::Secret(s) => Some(s.as_ref()),
            _ => None,
        })
        .is_empty();
    assert!(no_secret, "no chart-generated Secret with cert-manager");
}

/// The subject alternative names of a PEM certificate: `(DNS names, IPs)`.
fn sans(pem: &[u8]) -> (BTreeSet<String>, BTreeSet<String>) {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
    let cert = pem.parse_x509().expect("X.509");
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    let ext = cert
        .subject_alternative_name()
        .expect("SAN extension parses")
        .expect("a SAN extension");
    for name in &ext.value.general_names {
        match name {
            x509_parser::extensions::GeneralName::DNSName(d) => {
                dns.insert((*d).to_owned());
            }
            x509_parser::extensions::GeneralName::IPAddress(b) => {
                let ip = match b.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                    n => panic!("IP SAN of {n} bytes"),
                };
                ips.insert(ip.to_string());
            }
            _ => {}
        }
    }
    (dns, ips)
}

fn webhook_tls_secret(r: &Rendered) -> &Secret {
    r.all(|o| match o {
        Object::Secret(s) => Some(s.as_ref()),
        _ => None,
    })
    .into_iter()
    .find(|s| name_of(&s.metadata) == "sextant-webhook-tls")
    .unwrap_or_else(|| panic!("{}: no webhook TLS Secret", r.set))
}

#[test]
fn webhook_url_replaces_the_service_and_joins_the_serving_certificate() {
    let service_names = [
        "sextant-webhook",
        "sextant-webhook.sextant-system",
        "sextant-webhook.sextant-system.svc",
        "sextant-webhook.sextant-system.svc.cluster.local",
    ];
    let results = render_values(&[
        (
            "url-ip",
            Some("webhook:\n  url: https://127.0.0.1:20443/mutate\n".to_owned()),
        ),
        (
            "url-dns",
            Some("webhook:\n  url: https://webhook.dev.example:8443/mutate\n".to_owned()),
        ),
        (
            "url-ipv6",
            Some("webhook:\n  url: https://[::1]:20443/mutate\n".to_owned()),
        ),
        (
            "url-cert-manager",
            Some(
                "webhook:\n  url: https://10.1.2.3/mutate\n  certManager:\n    enabled: true\n"
                    .to_owned(),
            ),
        ),
        (
            "url-http",
            Some("webhook:\n  url: http://127.0.0.1/mutate\n".to_owned()),
        ),
        (
            "url-no-host",
            Some("webhook:\n  url: https:///mutate\n".to_owned()),
        ),
    ])
    .expect("helm ran");
    let mut results = results.into_iter();
    for (url, host, want_dns, want_ips) in [
        (
            "https://127.0.0.1:20443/mutate",
            "127.0.0.1",
            None,
            Some("127.0.0.1"),
        ),
        (
            "https://webhook.dev.example:8443/mutate",
            "webhook.dev.example",
            Some("webhook.dev.example"),
            None,
        ),
        ("https://[::1]:20443/mutate", "::1", None, Some("::1")),
    ] {
        let r = results
            .next()
            .expect("one result per set")
            .expect("rendered");
        let h = &webhook_config(&r).webhooks.as_deref().unwrap_or_default()[0];
        assert_eq!(h.client_config.url.as_deref(), Some(url), "{}", r.set);
        assert!(
            h.client_config.service.is_none(),
            "{}: url replaces the Service",
            r.set
        );
        // The caBundle is the chart's own CA, as without a URL.
        let tls = webhook_tls_secret(&r);
        let data = tls.data.clone().unwrap_or_default();
        assert_eq!(
            h.client_config.ca_bundle.as_ref().map(|b| &b.0),
            data.get("ca.crt").map(|b| &b.0),
            "{}",
            r.set
        );
        let annotations = tls.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get("sextant.io/webhook-url-host")
                .map(String::as_str),
            Some(host),
            "{}: the Secret records the host its certificate names",
            r.set
        );
        let (dns, ips) = sans(&data["tls.crt"].0);
        let mut expected_dns: BTreeSet<String> = service_names.map(String::from).into();
        expected_dns.extend(want_dns.map(String::from));
        assert_eq!(dns, expected_dns, "{}", r.set);
        assert_eq!(
            ips,
            want_ips.map(String::from).into_iter().collect(),
            "{}",
            r.set
        );
        // The in-cluster Deployment and Service are still rendered.
        assert!(deployment(&r, "sextant-webhook").is_some(), "{}", r.set);
    }

    // cert-manager: the host goes into the Certificate.
    let r = results.next().expect("cert-manager set").expect("rendered");
    let h = &webhook_config(&r).webhooks.as_deref().unwrap_or_default()[0];
    assert_eq!(
        h.client_config.url.as_deref(),
        Some("https://10.1.2.3/mutate")
    );
    let certificate = r
        .all(|o| match o {
            Object::CertManager(v) if v["kind"] == "Certificate" => Some(v),
            _ => None,
        })
        .pop()
        .expect("a Certificate");
    assert_eq!(
        certificate["spec"]["ipAddresses"],
        serde_json::json!(["10.1.2.3"])
    );

    for what in ["http URL", "URL without host"] {
        let err = results
            .next()
            .expect("error set")
            .expect_err(&format!("{what} must be refused"));
        assert!(format!("{err:#}").contains("webhook"), "{what}: {err:#}");
    }

    // Without the value, the default render names only the Service.
    let r = render_values(&[("default", None)])
        .expect("helm ran")
        .remove(0)
        .expect("rendered");
    let tls = webhook_tls_secret(&r);
    assert!(
        tls.metadata.annotations.is_none(),
        "no url, no host annotation"
    );
    let (dns, ips) = sans(&tls.data.clone().unwrap_or_default()["tls.crt"].0);
    assert_eq!(dns, service_names.map(String::from).into());
    assert!(ips.is_empty(), "{ips:?}");
}

#[test]
fn agent_runs_on_the_host_network_with_explicit_capabilities_not_privileged() {
    for r in sets() {
        let ds = daemonset(&r, "sextant-agent");
        let spec = pod_spec_of_ds(ds);
        assert_eq!(spec.host_network, Some(true), "{}", r.set);
        let agent = spec
            .containers
            .iter()
            .find(|c| c.name == "agent")
            .expect("agent container");
        let sc = agent.security_context.as_ref().expect("security context");
        assert_ne!(sc.privileged, Some(true), "{}: agent is privileged", r.set);
        let caps = sc.capabilities.as_ref().expect("capabilities");
        let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
        assert_eq!(
            added,
            BTreeSet::from(["NET_ADMIN", "BPF", "SYS_ADMIN", "NET_RAW", "SYS_PTRACE"])
        );
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
        for c in containers(spec) {
            let sc = c.security_context.as_ref();
            assert_ne!(
                sc.and_then(|s| s.privileged),
                Some(true),
                "{}: {}",
                r.set,
                c.name
            );
        }
        assert_eq!(
            env(agent, "SEXTANT_AGENT_SOCKET"),
            Some("/var/run/sextant/agent.sock")
        );
        assert!(agent.env.iter().flatten().any(|e| {
            e.name == "NODE_NAME"
                && e.value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str())
                    == Some("spec.nodeName")
        }));

        let host_paths: BTreeMap<&str, &str> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| {
                v.host_path
                    .as_ref()
                    .map(|h| (v.name.as_str(), h.path.as_str()))
            })
            .collect();
        let mounted: BTreeMap<&str, &str> = agent
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.as_str(), m.name.as_str()))
            .collect();
        for (path, host) in [
            ("/sys/fs/bpf", "/sys/fs/bpf"),
            ("/var/run/sextant", "/var/run/sextant"),
            ("/host/cni/bin", "/opt/cni/bin"),
            ("/host/cni/net.d", "/etc/cni/net.d"),
        ] {
            let vol = mounted
                .get(path)
                .unwrap_or_else(|| panic!("{}: {path} not mounted", r.set));
            assert_eq!(host_paths.get(vol), Some(&host), "{}: {path}", r.set);
        }

        // CNI netns paths: /var/run/netns/<name> through a mount that sees the
        // runtime's later bind mounts, /proc/<pid>/ns/net through the host's
        // PID namespace.
        assert_eq!(spec.host_pid, Some(true), "{}: hostPID", r.set);
        let netns = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/var/run/netns")
            .unwrap_or_else(|| panic!("{}: /var/run/netns not mounted", r.set));
        assert_eq!(
            netns.mount_propagation.as_deref(),
            Some("HostToContainer"),
            "{}",
            r.set
        );
        assert_eq!(
            host_paths.get(netns.name.as_str()),
            Some(&"/var/run/netns"),
            "{}",
            r.set
        );

        // The init step installs sextant-cni and the conflist from the ConfigMap.
        let init = spec.init_containers.as_deref().unwrap_or_default();
        assert_eq!(init.len(), 1, "{}", r.set);
        let script = init[0]
            .command
            .iter()
            .flatten()
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(script.contains("sextant-cni"), "{script}");
        assert!(script.contains("00-sextant.conflist"), "{script}");
        let cm = r
            .all(|o| match o {
                Object::ConfigMap(c) => Some(c.as_ref()),
                _ => None,
            })
            .into_iter()
            .find(|c| name_of(&c.metadata) == "sextant-cni")
            .expect("conflist ConfigMap");
        let conflist: serde_json::Value = serde_json::from_str(
            cm.data
                .as_ref()
                .and_then(|d| d.get("00-sextant.conflist"))
                .expect("conflist"),
        )
        .expect("conflist is JSON");
        assert_eq!(conflist["plugins"][0]["type"], "sextant-cni");
        assert_eq!(
            conflist["plugins"][0]["agentSocket"],
            "/var/run/sextant/agent.sock"
        );
    }
}

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

#[test]
fn device_plugin_mounts_the_kubelet_directory_not_the_socket() {
    for r in sets() {
        let spec = pod_spec_of_ds(daemonset(&r, "sextant-device-plugin"));
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find_map(|v| {
                v.host_path
                    .as_ref()
                    .filter(|h| h.path.starts_with("/var/lib/kubelet"))
            })
            .expect("kubelet hostPath");
        assert_eq!(vol.path, "/var/lib/kubelet/device-plugins");
        assert_eq!(vol.type_.as_deref(), Some("Directory"));
        let c = &spec.containers[0];
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/var/lib/kubelet/device-plugins")
        );
        let sc = c.security_context.as_ref().expect("security context");
        assert_ne!(sc.privileged, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert!(
            sc.capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_none()
        );
    }
}

#[test]
fn operator_runs_two_replicas_with_lease_and_anti_affinity() {
    for r in sets() {
        let op = deployment(&r, "sextant-operator");
        if r.set == "static" {
            assert!(op.is_none(), "bare metal runs no operator");
            assert!(cluster_role(&r, "sextant-operator").is_none());
            continue;
        }
        let op = op.expect("operator Deployment");
        assert_eq!(
            op.spec.as_ref().and_then(|s| s.replicas),
            Some(2),
            "{}",
            r.set
        );
        let spec = pod_spec_of_deploy(op);
        let anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .expect("required pod anti-affinity");
        assert_eq!(anti[0].topology_key, "kubernetes.io/hostname");
        let c = &spec.containers[0];
        assert_eq!(env(c, "SEXTANT_LEASE_NAMESPACE"), Some(NAMESPACE));
        assert_eq!(env(c, "SEXTANT_LEASE_NAME"), Some("sextant-operator"));
        assert!(
            c.env
                .iter()
                .flatten()
                .any(|e| e.name == "SEXTANT_POD_NAME" && e.value_from.is_some())
        );
        let args = c.args.clone().unwrap_or_default();
        let provider = if r.set == "alibaba" { "alibaba" } else { "aws" };
        assert_eq!(args, vec![format!("--provider={provider}")], "{}", r.set);
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(
            spec.security_context
                .as_ref()
                .and_then(|s| s.run_as_non_root),
            Some(true)
        );
    }
}

#[test]
fn scheduler_extender_has_a_service_and_the_scheduler_stanza() {
    for r in sets() {
        let d = deployment(&r, "sextant-scheduler-ext").expect("extender Deployment");
        let c = &pod_spec_of_deploy(d).containers[0];
        assert_eq!(env(c, "SEXTANT_SCHEDULER_EXT_LISTEN"), Some("0.0.0.0:8888"));
        let svc = r
            .all(|o| match o {
                Object::Service(s) => Some(s.as_ref()),
                _ => None,
            })
            .into_iter()
            .find(|s| name_of(&s.metadata) == "sextant-scheduler-ext")
            .expect("extender Service");
        let port = &svc
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()[0];
        assert_eq!(port.port, 8888);
        let cm = r
            .all(|o| match o {
                Object::ConfigMap(c) => Some(c.as_ref()),
                _ => None,
            })
            .into_iter()
            .find(|c| name_of(&c.metadata) == "sextant-scheduler-config")
            .expect("scheduler config");
        let stanza: serde_json::Value =
            serde_yaml::from_str(&cm.data.as_ref().expect("data")["extender.yaml"])
                .expect("stanza is YAML");
        let ext = &stanza["extenders"][0];
        assert_eq!(
            ext["urlPrefix"],
            "http://sextant-scheduler-ext.sextant-system.svc:8888"
        );
        assert_eq!(ext["managedResources"][0]["name"], "sextant.io/ip");
        assert_eq!(ext["nodeCacheCapable"], true);
    }
}

#[test]
fn cloud_credentials_are_only_referenced_never_inlined() {
    for r in sets() {
        // The only Secret is the webhook's serving pair.
        for s in r.all(|o| match o {
            Object::Secret(s) => Some(s.as_ref()),
            _ => None,
        }) {
            assert_eq!(name_of(&s.metadata), "sextant-webhook-tls", "{}", r.set);
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
                assert!(sa_annotations(&r).contains_key("pod-identity.alibabacloud.com/role-name"));
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
