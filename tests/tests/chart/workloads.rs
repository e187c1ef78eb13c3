//! The workloads: the agent on the host network with explicit
//! capabilities, the device plugin's kubelet mount, the operator's replicas
//! and Lease, the scheduler extender's Service and scheduler stanza.

use super::*;

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
            Some("/var/run/sextant/api/agent.sock")
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
            // The checkpoint on disk, not tmpfs (it was /var/run/sextant/state).
            ("/var/lib/sextant", "/var/lib/sextant"),
            ("/host/cni/bin", "/opt/cni/bin"),
            ("/host/cni/net.d", "/etc/cni/net.d"),
        ] {
            let vol = mounted
                .get(path)
                .unwrap_or_else(|| panic!("{}: {path} not mounted", r.set));
            assert_eq!(host_paths.get(vol), Some(&host), "{}: {path}", r.set);
        }

        let state_dir = agent
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SEXTANT_STATE_DIR")
            .and_then(|e| e.value.as_deref());
        assert_eq!(state_dir, Some("/var/lib/sextant"), "{}", r.set);

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
        let conflist = conflist(r);
        assert_eq!(conflist["plugins"][0]["type"], "sextant-cni");
        assert_eq!(
            conflist["plugins"][0]["agentSocket"],
            "/var/run/sextant/api/agent.sock"
        );
    }
}

#[test]
fn agent_api_socket_group_and_allow_lists_reach_the_agent_only_when_set() {
    for r in sets() {
        let spec = pod_spec_of_ds(daemonset(r, "sextant-agent"));
        let agent = spec
            .containers
            .iter()
            .find(|c| c.name == "agent")
            .expect("agent container");
        for name in [
            "SEXTANT_API_SOCKET_GROUP",
            "SEXTANT_API_ALLOW_UIDS",
            "SEXTANT_API_ALLOW_GIDS",
        ] {
            assert_eq!(env(agent, name), None, "{}: {name} by default", r.set);
        }
    }
    let results = render_values(&[(
        "agent-api",
        Some(
            "agent:\n  api:\n    socketGroup: sextant-api\n    allowUids: [1000, 1001]\n    allowGids: [2000]\n"
                .to_owned(),
        ),
    )])
    .expect("helm ran");
    let r = results
        .into_iter()
        .next()
        .expect("one set")
        .expect("rendered");
    let spec = pod_spec_of_ds(daemonset(&r, "sextant-agent"));
    let agent = spec
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .expect("agent container");
    assert_eq!(env(agent, "SEXTANT_API_SOCKET_GROUP"), Some("sextant-api"));
    assert_eq!(env(agent, "SEXTANT_API_ALLOW_UIDS"), Some("1000,1001"));
    assert_eq!(env(agent, "SEXTANT_API_ALLOW_GIDS"), Some("2000"));
    let refused = render_values(&[(
        "agent-api-negative-uid",
        Some("agent:\n  api:\n    allowUids: [-1]\n".to_owned()),
    )])
    .expect("helm ran");
    assert!(
        refused.into_iter().next().expect("one set").is_err(),
        "a negative uid passes the schema"
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
        // Of the agent's files it sees only the API socket's directory,
        // read-only (no checkpoint, no older agent's state).
        let agent_mounts: Vec<(&str, Option<bool>, &str)> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| m.mount_path.starts_with("/var/run/sextant"))
            .map(|m| {
                let host = spec
                    .volumes
                    .iter()
                    .flatten()
                    .find(|v| v.name == m.name)
                    .and_then(|v| v.host_path.as_ref())
                    .map_or("", |h| h.path.as_str());
                (m.mount_path.as_str(), m.read_only, host)
            })
            .collect();
        assert_eq!(
            agent_mounts,
            [("/var/run/sextant/api", Some(true), "/var/run/sextant/api")],
            "{}",
            r.set
        );
        assert_eq!(
            env(c, "SEXTANT_AGENT_SOCKET"),
            Some("/var/run/sextant/api/agent.sock"),
            "{}",
            r.set
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
        // Bare metal too: the operator creates NodeNetworks with pod CIDRs.
        let op = deployment(&r, "sextant-operator").expect("operator Deployment");
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
        let provider = match r.set.as_str() {
            "alibaba" => "alibaba",
            "static" => "static",
            _ => "aws",
        };
        assert_eq!(args, vec![format!("--provider={provider}")], "{}", r.set);
        if r.set == "static" {
            assert_eq!(env(c, "SEXTANT_POD_CIDR_POOL"), Some("10.244.0.0/16"));
            assert_eq!(env(c, "SEXTANT_POD_CIDR_MASK_SIZE"), Some("25"));
            assert_eq!(env(c, "SEXTANT_REGION"), Some("bare-metal"));
        } else {
            assert_eq!(env(c, "SEXTANT_POD_CIDR_POOL"), None, "{}", r.set);
        }
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
        let d = deployment(r, "sextant-scheduler-ext").expect("extender Deployment");
        let spec = pod_spec_of_deploy(d);
        let c = &spec.containers[0];
        assert_eq!(env(c, "SEXTANT_SCHEDULER_EXT_LISTEN"), Some("0.0.0.0:8888"));
        assert_eq!(
            env(c, "SEXTANT_SCHEDULER_EXT_ADMIN_LISTEN"),
            Some("0.0.0.0:8889")
        );
        assert_eq!(
            env(c, "SEXTANT_SCHEDULER_EXT_TLS_CERT"),
            Some("/etc/sextant/scheduler-ext/tls.crt")
        );
        assert_eq!(env(c, "SEXTANT_SCHEDULER_EXT_TLS_CLIENT_CA"), None);
        assert_eq!(
            env(c, "SEXTANT_SCHEDULER_EXT_MAX_BODY_BYTES"),
            Some("4194304")
        );
        assert_eq!(env(c, "SEXTANT_SCHEDULER_EXT_MAX_CONNECTIONS"), Some("32"));
        assert_eq!(env(c, "SEXTANT_SCHEDULER_EXT_INSECURE_HTTP"), None);
        // Probes on the plain-HTTP admin port, not the HTTPS one.
        for probe in [&c.readiness_probe, &c.liveness_probe] {
            let port = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .map(|g| g.port.clone());
            assert_eq!(
                port,
                Some(
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        "admin".into()
                    )
                )
            );
        }
        // Sized from the measurement in docs/scheduler-extender.md, not 1 GiB.
        let limit = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .map(|q| q.0.clone());
        assert_eq!(limit.as_deref(), Some("768Mi"));
        let vol = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .expect("tls volume");
        assert_eq!(
            vol.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some("sextant-scheduler-ext-tls")
        );

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
        assert_eq!(port.name.as_deref(), Some("https"));

        let ext = stanza(r);
        assert_eq!(
            ext["urlPrefix"],
            "https://sextant-scheduler-ext.sextant-system.svc:8888"
        );
        assert_eq!(ext["enableHTTPS"], true);
        assert_eq!(ext["tlsConfig"]["insecure"], false);
        assert_eq!(ext["tlsConfig"].get("certFile"), None);
        // An extender outage must not block every pod: ignorable by default.
        assert_eq!(ext["ignorable"], true);
        assert_eq!(ext["managedResources"][0]["name"], "sextant.io/ip");
        assert_eq!(ext["nodeCacheCapable"], true);

        // caData is the CA in the Secret the pods mount, and that CA's
        // serving certificate names the Service the urlPrefix calls.
        let ca: k8s_openapi::ByteString =
            serde_json::from_value(ext["tlsConfig"]["caData"].clone()).expect("caData is base64");
        let data = extender_secret(r, "sextant-scheduler-ext-tls");
        assert_eq!(data.get("ca.crt").map(|b| &b.0), Some(&ca.0));
        let (_, pem) = x509_parser::pem::parse_x509_pem(&data["tls.crt"].0).expect("PEM");
        let cert = pem.parse_x509().expect("X.509");
        let names: Vec<String> = cert
            .subject_alternative_name()
            .expect("SAN extension")
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            names
                .iter()
                .any(|n| n.contains("sextant-scheduler-ext.sextant-system.svc)")),
            "{names:?}"
        );
    }
}

/// The extender stanza of the `sextant-scheduler-config` ConfigMap.
fn stanza(r: &Rendered) -> serde_json::Value {
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
    stanza["extenders"][0].clone()
}

fn extender_secret(
    r: &Rendered,
    name: &str,
) -> std::collections::BTreeMap<String, k8s_openapi::ByteString> {
    let secrets = r.all(|o| match o {
        Object::Secret(s) => Some(s.as_ref()),
        _ => None,
    });
    let s = secrets
        .iter()
        .find(|s| name_of(&s.metadata) == name)
        .unwrap_or_else(|| panic!("{}: Secret {name}", r.set));
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
    s.data.clone().unwrap_or_default()
}

#[test]
fn scheduler_extender_client_auth_requires_kube_schedulers_certificate_from_the_same_ca() {
    let values = "schedulerExtender:\n  ignorable: false\n  tls:\n    clientAuth: true\n";
    let r = sextant_e2e::chart::render_values(&[("client-auth", Some(values.into()))])
        .expect("render")
        .remove(0)
        .expect("rendered");
    let d = deployment(&r, "sextant-scheduler-ext").expect("extender Deployment");
    let c = &pod_spec_of_deploy(d).containers[0];
    assert_eq!(
        env(c, "SEXTANT_SCHEDULER_EXT_TLS_CLIENT_CA"),
        Some("/etc/sextant/scheduler-ext/ca.crt")
    );
    let ext = stanza(&r);
    assert_eq!(ext["ignorable"], false);
    assert_eq!(
        ext["tlsConfig"]["certFile"],
        "/etc/kubernetes/sextant-scheduler-ext/tls.crt"
    );
    assert_eq!(
        ext["tlsConfig"]["keyFile"],
        "/etc/kubernetes/sextant-scheduler-ext/tls.key"
    );
    let server = extender_secret(&r, "sextant-scheduler-ext-tls");
    let client = extender_secret(&r, "sextant-scheduler-ext-client");
    let parse = |pem: &[u8]| {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).expect("PEM");
        p.contents
    };
    let ca_der = parse(&server["ca.crt"].0);
    let client_der = parse(&client["tls.crt"].0);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).expect("CA");
    let (_, cert) = x509_parser::parse_x509_certificate(&client_der).expect("client cert");
    assert_eq!(
        cert.issuer().to_string(),
        ca.subject().to_string(),
        "the client certificate comes from the extender's client CA"
    );
    assert!(ca.is_ca());
    assert!(String::from_utf8_lossy(&client["tls.key"].0).contains("PRIVATE KEY"));
}

/// The rendered conflist (`00-sextant.conflist` of the `sextant-cni` ConfigMap).
fn conflist(r: &Rendered) -> serde_json::Value {
    let cm = r
        .all(|o| match o {
            Object::ConfigMap(c) => Some(c.as_ref()),
            _ => None,
        })
        .into_iter()
        .find(|c| name_of(&c.metadata) == "sextant-cni")
        .expect("conflist ConfigMap");
    serde_json::from_str(
        cm.data
            .as_ref()
            .and_then(|d| d.get("00-sextant.conflist"))
            .expect("conflist"),
    )
    .expect("conflist is JSON")
}

/// The CNI plugin's deadline for agent calls, from the rendered conflist.
fn cni_timeout(r: &Rendered) -> u64 {
    conflist(r)["plugins"][0]["timeoutSeconds"]
        .as_u64()
        .expect("timeoutSeconds")
}

/// A fixed-IP pod's ADD waits up to `fixedIpWaitSeconds` in the agent; a
/// CNI deadline shorter than that cut every such ADD off before the wait
/// could end (it was 10 s against 30 s).
#[test]
fn the_cni_deadline_outlasts_the_fixed_ip_wait() {
    let defaults = sets()
        .iter()
        .find(|r| r.set == "default")
        .expect("the default set");
    assert!(
        cni_timeout(defaults) > 30,
        "default fixed-IP wait is 30 s; CNI deadline {} s",
        cni_timeout(defaults)
    );
    let rendered = render_values(&[
        (
            "long wait",
            Some("agent:\n  fixedIpWaitSeconds: 120\n".to_string()),
        ),
        (
            "long deadline",
            Some("agent:\n  cni:\n    timeoutSeconds: 300\n".to_string()),
        ),
    ])
    .expect("helm runs");
    let long_wait = rendered[0].as_ref().expect("renders");
    assert!(cni_timeout(long_wait) > 120, "{}", cni_timeout(long_wait));
    let long_deadline = rendered[1].as_ref().expect("renders");
    assert_eq!(cni_timeout(long_deadline), 300, "a longer deadline is kept");
}
