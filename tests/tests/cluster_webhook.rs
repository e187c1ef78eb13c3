//! The admission webhook on a real kube-apiserver: the chart's own
//! MutatingWebhookConfiguration, pointed by `webhook.url` at a
//! `sextant-webhook` host process on loopback and trusting the chart's
//! caBundle (everything as rendered but the URL), adds `sextant.io/ip: 1` to
//! pods the API server creates; the chart's namespace and object selectors
//! keep the API server from even calling it for skipped pods; and with the
//! webhook stopped or hanging, pod creation still succeeds (fail open) within
//! the chart's `timeoutSeconds`.
//!
//! One test: the cluster (one per test binary) has one webhook
//! configuration, and the steps stop and replace the webhook process.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, ensure};
use k8s_openapi::{
    api::core::v1::{Container, Namespace, Pod, PodSpec},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use sextant_e2e::{
    chart::{Object, Rendered},
    cluster::{
        Cluster, Options, eventually,
        install::{self, Component, PodFacts, Running, loopback_addr, wait_http_ok},
        supervisor::free_port,
    },
};

const RESOURCE: &str = "sextant.io/ip";

/// `None`: SEXTANT_SKIP names the cluster tier (recorded, listed at the end).
fn cluster() -> Option<&'static Cluster> {
    Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())
}

/// The rendered webhook configuration's `timeoutSeconds`.
fn timeout_seconds(rendered: &Rendered) -> anyhow::Result<u64> {
    rendered
        .objects
        .iter()
        .find_map(|(_, o)| match o {
            Object::MutatingWebhookConfiguration(m) => m
                .webhooks
                .as_deref()
                .and_then(|w| w.first())
                .and_then(|w| w.timeout_seconds),
            _ => None,
        })
        .and_then(|t| u64::try_from(t).ok())
        .context("the chart rendered no webhook timeoutSeconds")
}

/// `sextant-webhook` as the chart runs it (no API access), serving on
/// `port`, its metrics on `metrics`.
async fn start_webhook(
    c: &Cluster,
    rendered: &Rendered,
    port: u16,
    metrics: &str,
    name: &str,
) -> anyhow::Result<Running> {
    let dir = install::scratch(c, name)?;
    let (cert, key) = install::webhook_serving_pair(rendered, &dir)?;
    let mut running = install::run(
        c,
        rendered,
        name,
        Component {
            workload: "sextant-webhook",
            container: "webhook",
            bin: "sextant-webhook",
            service_account: None,
            pod: PodFacts {
                pod_name: "sextant-webhook-0".into(),
                node_name: "host".into(),
            },
            overrides: vec![
                ("SEXTANT_WEBHOOK_LISTEN", format!("127.0.0.1:{port}")),
                ("SEXTANT_WEBHOOK_TLS_CERT", cert),
                ("SEXTANT_WEBHOOK_TLS_KEY", key),
                ("SEXTANT_WEBHOOK_METRICS_ADDR", metrics.to_owned()),
            ],
            args: None,
            extra_args: vec![],
        },
    )
    .await?;
    wait_http_ok(&mut running.process, metrics, "/healthz").await?;
    Ok(running)
}

/// Reviews the webhook answered so far (`sextant_webhook_reviews_total`
/// summed over results).
fn reviews(metrics: &str) -> anyhow::Result<f64> {
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "--max-time",
            "5",
            &format!("http://{metrics}/metrics"),
        ])
        .output()
        .context("running curl")?;
    ensure!(out.status.success(), "GET {metrics}/metrics failed");
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter(|l| l.starts_with("sextant_webhook_reviews_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn pod(name: &str, labels: &[(&str, &str)], host_network: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some("registry.k8s.io/pause:3.10".into()),
                ..Default::default()
            }],
            host_network: host_network.then_some(true),
            automount_service_account_token: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod as the API server stored it after admission.
async fn create(client: &Client, ns: &str, pod: &Pod) -> anyhow::Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("creating pod {ns}/{:?}", pod.metadata.name))
}

/// `sextant.io/ip` of the first container: (request, limit).
fn ip_resource(pod: &Pod) -> (Option<Quantity>, Option<Quantity>) {
    let r = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.resources.clone())
        .unwrap_or_default();
    let get = |m: Option<BTreeMap<String, Quantity>>| m.and_then(|m| m.get(RESOURCE).cloned());
    (get(r.requests), get(r.limits))
}

fn asks_for_one_ip(pod: &Pod) -> bool {
    ip_resource(pod) == (Some(Quantity("1".into())), Some(Quantity("1".into())))
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_adds_the_ip_resource_through_the_api_server_skips_excluded_pods_and_fails_open()
-> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let admin = c.admin().await?;
    let port = free_port()?;
    let url = format!("https://127.0.0.1:{port}/mutate");
    let rendered = install::install(c, Some(format!("webhook:\n  url: {url}\n")))?;
    let timeout = timeout_seconds(&rendered)?;

    // What the API server holds is the chart's configuration with our URL.
    let registered = c.kubectl_ok(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "sextant-ip",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.url}",
        ],
        None,
    )?;
    assert_eq!(registered, url);

    let metrics = loopback_addr()?;
    let mut webhook = start_webhook(c, &rendered, port, &metrics, "sextant-webhook").await?;
    let ns = c.namespace("wh").await?;

    // Mutated by the API server's call. The first pods may be created before
    // the API server has picked the configuration up (it fails open then).
    let mut n = 0;
    let mutated = eventually(
        Duration::from_secs(30),
        "a pod created through the API server asks for sextant.io/ip",
        || {
            n += 1;
            let (admin, ns) = (admin.clone(), ns.clone());
            async move {
                let p = create(&admin, &ns, &pod(&format!("app-{n}"), &[], false)).await?;
                Ok(asks_for_one_ip(&p).then_some(p))
            }
        },
    )
    .await?;
    // Stored that way, not only answered so.
    let stored = Api::<Pod>::namespaced(admin.clone(), &ns)
        .get(mutated.metadata.name.as_deref().unwrap_or_default())
        .await?;
    assert!(asks_for_one_ip(&stored), "{:?}", ip_resource(&stored));
    let again = create(&admin, &ns, &pod("app-steady", &[], false)).await?;
    assert!(asks_for_one_ip(&again), "{:?}", ip_resource(&again));

    // Left alone: the chart's selectors keep the API server from calling
    // (the webhook's review count stays put), and a hostNetwork pod is
    // answered unchanged by the webhook itself.
    let before = reviews(&metrics)?;
    let label_ns = |name: String, label: &'static str| {
        let admin = admin.clone();
        async move {
            Api::<Namespace>::all(admin)
                .patch(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({"metadata": {"labels": {label: "true"}}})),
                )
                .await
                .map(|_| name)
        }
    };
    let skipped = label_ns(c.namespace("wh-skip").await?, "sextant.io/skip-ip-resource").await?;
    let allowing = label_ns(
        c.namespace("wh-allow").await?,
        "sextant.io/allow-pod-ip-opt-out",
    )
    .await?;
    let opted = [("sextant.io/skip-ip-resource", "true")];
    let cases = [
        ("kube-system", pod("skipped-ns", &[], false)),
        (skipped.as_str(), pod("labelled-ns", &[], false)),
        // Where an admin allows it, a labelled pod is not even sent.
        (allowing.as_str(), pod("opted-out", &opted, false)),
    ];
    for (in_ns, p) in &cases {
        let created = create(&admin, in_ns, p).await?;
        assert_eq!(
            ip_resource(&created),
            (None, None),
            "{in_ns}/{:?} must be left alone",
            p.metadata.name
        );
    }
    assert_eq!(
        reviews(&metrics)?,
        before,
        "the API server called the webhook for a pod its selectors exclude"
    );
    // A pod's own label does not take it out of IP accounting where no admin
    // allowed it, nor does claiming to be part of Sextant; both are reviewed.
    for p in [
        pod("opt-out-refused", &opted, false),
        pod(
            "sextant-part",
            &[("app.kubernetes.io/part-of", "sextant")],
            false,
        ),
    ] {
        let created = create(&admin, &ns, &p).await?;
        assert!(
            asks_for_one_ip(&created),
            "{:?} escaped IP accounting by its own label: {:?}",
            p.metadata.name,
            ip_resource(&created)
        );
    }
    // In the allowing namespace a plain pod is still counted.
    let plain = create(&admin, &allowing, &pod("plain", &[], false)).await?;
    assert!(asks_for_one_ip(&plain), "{:?}", ip_resource(&plain));
    // There a pod's annotation (which no selector sees) is honoured by the
    // opt-out path the chart sends that namespace's reviews to.
    let mut annotated = pod("annotated", &[], false);
    annotated.metadata.annotations = Some(BTreeMap::from([(
        "sextant.io/skip-ip-resource".to_owned(),
        "true".to_owned(),
    )]));
    let annotated = create(&admin, &allowing, &annotated).await?;
    assert_eq!(ip_resource(&annotated), (None, None), "annotated opt-out");
    assert_eq!(reviews(&metrics)?, before + 4.0, "four pods reviewed");
    let before = reviews(&metrics)?;
    let host = create(&admin, &ns, &pod("host-net", &[], true)).await?;
    assert_eq!(ip_resource(&host), (None, None), "hostNetwork pod");
    assert_eq!(reviews(&metrics)?, before + 1.0, "hostNetwork pod reviewed");
    Api::<Pod>::namespaced(admin.clone(), "kube-system")
        .delete("skipped-ns", &Default::default())
        .await?;
    webhook.assert_no_forbidden()?;

    // Fail open, webhook stopped: connection refused, pod created unchanged.
    webhook.process.stop(Duration::from_secs(5));
    let bound = Duration::from_secs(timeout + 5);
    let start = Instant::now();
    let created = create(&admin, &ns, &pod("while-down", &[], false)).await?;
    let refused_after = start.elapsed();
    assert_eq!(ip_resource(&created), (None, None));
    assert!(
        refused_after < bound,
        "pod creation with the webhook down took {refused_after:?}"
    );

    // Fail open, webhook hanging (accepts, never answers): the API server
    // gives up after timeoutSeconds and creates the pod unchanged.
    let hang = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .context("binding the webhook's port")?;
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = hang.accept().await {
            held.push(conn);
        }
    });
    let start = Instant::now();
    let created = create(&admin, &ns, &pod("while-hung", &[], false)).await?;
    let hung_after = start.elapsed();
    assert_eq!(ip_resource(&created), (None, None));
    assert!(
        hung_after < bound,
        "pod creation with a hanging webhook took {hung_after:?} (timeoutSeconds {timeout})"
    );
    // Dropping the task closes the held connections and frees the port.
    holder.abort();
    let _ = holder.await;
    let apiserver_log = std::fs::read_to_string(&c.info.logs["kube-apiserver"])?;
    assert!(
        apiserver_log.contains("ip.sextant.io") && apiserver_log.contains("failing open"),
        "the API server logged no fail-open call of ip.sextant.io:\n{}",
        c.log_tail("kube-apiserver", 20)
    );
    eprintln!(
        "fail open: webhook stopped {refused_after:?}, webhook hanging {hung_after:?} \
         (timeoutSeconds {timeout})"
    );

    // Back up on the same port: pods are mutated again.
    let metrics = loopback_addr()?;
    let webhook = start_webhook(c, &rendered, port, &metrics, "sextant-webhook-2").await?;
    let back = create(&admin, &ns, &pod("after-restart", &[], false)).await?;
    assert!(asks_for_one_ip(&back), "{:?}", ip_resource(&back));
    webhook.assert_no_forbidden()?;
    Ok(())
}
