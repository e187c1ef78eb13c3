//! RBAC: no wildcards, and each component gets exactly what its docs list.

use super::*;

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

/// The agent's admission policy: rendered for every documented set, bound
/// with Deny, failing closed, matching the agent's ServiceAccount of this
/// release (its username is the only thing that scopes it); absent with
/// `admissionPolicy.enabled: false` or without the agent.
#[test]
fn the_agent_admission_policy_is_rendered_fail_closed_for_the_agents_service_account() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    fn policies(r: &Rendered) -> Vec<&ValidatingAdmissionPolicy> {
        r.all(|o| match o {
            Object::ValidatingAdmissionPolicy(p) => Some(p.as_ref()),
            _ => None,
        })
    }
    for r in sets() {
        let found = policies(r);
        assert_eq!(found.len(), 1, "{}: one admission policy", r.set);
        let spec = found[0].spec.as_ref().expect("policy spec");
        assert_eq!(spec.failure_policy.as_deref(), Some("Fail"), "{}", r.set);
        let conditions = spec.match_conditions.clone().unwrap_or_default();
        assert_eq!(conditions.len(), 1, "{}", r.set);
        assert!(
            conditions[0]
                .expression
                .contains("\"system:serviceaccount:sextant-system:sextant-agent\""),
            "{}: the policy is scoped to the agent's ServiceAccount: {}",
            r.set,
            conditions[0].expression
        );
        let rules = spec
            .match_constraints
            .as_ref()
            .and_then(|m| m.resource_rules.clone())
            .unwrap_or_default();
        let resources: BTreeSet<String> = rules
            .iter()
            .flat_map(|rule| rule.resources.clone().unwrap_or_default())
            .collect();
        for needed in ["nodenetworks/*", "sextantidentities"] {
            assert!(resources.contains(needed), "{}: {needed}", r.set);
        }
        let bindings: Vec<&ValidatingAdmissionPolicyBinding> = r.all(|o| match o {
            Object::ValidatingAdmissionPolicyBinding(b) => Some(b.as_ref()),
            _ => None,
        });
        assert_eq!(bindings.len(), 1, "{}: one binding", r.set);
        let b = &bindings[0].spec;
        assert_eq!(Some(&b.policy_name), found[0].metadata.name.as_ref());
        assert_eq!(b.validation_actions, vec!["Deny".to_owned()]);
    }
    let off = render_values(&[
        ("off", Some("admissionPolicy:\n  enabled: false\n".into())),
        ("no-agent", Some("agent:\n  enabled: false\n".into())),
    ])
    .expect("render");
    for r in off {
        let r = r.expect("rendered");
        assert!(policies(&r).is_empty(), "{}: policy rendered", r.set);
        assert!(
            r.all(|o| match o {
                Object::ValidatingAdmissionPolicyBinding(b) => Some(b.as_ref()),
                _ => None,
            })
            .is_empty(),
            "{}: binding rendered",
            r.set
        );
    }
}
