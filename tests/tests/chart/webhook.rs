//! The mutating webhook: fails open fast, skips system and Sextant pods,
//! serves with a chart-generated or cert-manager certificate, or at a URL.

use super::*;

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
        assert_eq!(hooks.len(), 2, "{}: counted and opt-out-allowed", r.set);
        for (h, path, allow) in [
            (&hooks[0], "/mutate", "NotIn"),
            (&hooks[1], "/mutate/pod-opt-out", "In"),
        ] {
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
                not_in(h.namespace_selector.as_ref(), "sextant.io/skip-ip-resource")
                    .contains("true")
            );
            // Whether a pod's own opt-out counts is the namespace's (admin's)
            // label, never the pod's: the counted webhook selects no pod label.
            let allow_expr = h
                .namespace_selector
                .as_ref()
                .and_then(|s| s.match_expressions.as_ref())
                .and_then(|e| {
                    e.iter()
                        .find(|e| e.key == "sextant.io/allow-pod-ip-opt-out")
                })
                .unwrap_or_else(|| panic!("{}: no allow-pod-ip-opt-out selector", r.set));
            assert_eq!(allow_expr.operator, allow, "{}", r.set);
            assert_eq!(allow_expr.values.as_deref(), Some(&["true".to_owned()][..]));
            if allow == "NotIn" {
                assert!(
                    h.object_selector
                        .as_ref()
                        .and_then(|s| s.match_expressions.as_ref())
                        .is_none_or(|e| e.is_empty()),
                    "{}: a pod label must not take a pod out of accounting: {:?}",
                    r.set,
                    h.object_selector
                );
            } else {
                assert!(
                    not_in(h.object_selector.as_ref(), "sextant.io/skip-ip-resource")
                        .contains("true")
                );
            }

            let svc = h
                .client_config
                .service
                .as_ref()
                .expect("service clientConfig");
            assert_eq!(svc.name, "sextant-webhook");
            assert_eq!(svc.namespace, NAMESPACE);
            assert_eq!(svc.path.as_deref(), Some(path));
            assert_eq!(svc.port, Some(443));
        }
        let h = &hooks[0];

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
    // (The scheduler extender's own pair is not the webhook's business.)
    let no_secret = !r
        .all(|o| match o {
            Object::Secret(s) => Some(s.as_ref()),
            _ => None,
        })
        .iter()
        .any(|s| name_of(&s.metadata).starts_with("sextant-webhook"));
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
        let hooks = webhook_config(&r).webhooks.as_deref().unwrap_or_default();
        let h = &hooks[0];
        assert_eq!(h.client_config.url.as_deref(), Some(url), "{}", r.set);
        assert_eq!(
            hooks[1].client_config.url.as_deref(),
            Some(format!("{url}/pod-opt-out").as_str()),
            "{}",
            r.set
        );
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
