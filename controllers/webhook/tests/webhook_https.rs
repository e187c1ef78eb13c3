//! The admission webhook over real HTTPS (rustls, certificates made in-test)
//! with AdmissionReview fixtures shaped like the API server's.

mod support;

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use serde_json::{Value, json};
use support::{TestPki, TestWebhook, pod_create_review};

use sextant_crds::wellknown::IP_RESOURCE as RESOURCE;

async fn post(client: &reqwest::Client, hook: &TestWebhook, body: Vec<u8>) -> Value {
    post_to(client, &hook.url(), body).await
}

async fn post_to(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Value {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(
        resp.status(),
        200,
        "every answer is an AdmissionReview, never an HTTP error"
    );
    let review: Value = resp.json().await.expect("JSON answer");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    review
}

async fn post_review(client: &reqwest::Client, hook: &TestWebhook, review: &Value) -> Value {
    post(client, hook, serde_json::to_vec(review).expect("encode")).await
}

/// The fixture with `object.spec` and metadata changed by `edit`.
fn review_with(edit: impl FnOnce(&mut Value)) -> Value {
    let mut r = pod_create_review();
    edit(&mut r["request"]["object"]);
    r
}

/// The pod after the answer's patch (unchanged when there is none).
fn patched_pod(request: &Value, answer: &Value) -> Value {
    let mut pod = request["request"]["object"].clone();
    if let Some(b64) = answer["response"]["patch"].as_str() {
        assert_eq!(answer["response"]["patchType"], "JSONPatch");
        let bytes = BASE64.decode(b64).expect("patch is base64");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is JSONPatch");
        json_patch::patch(&mut pod, &patch).expect("patch applies to the pod");
    }
    pod
}

fn ip_units(pod: &Value) -> usize {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|k| pod["spec"][k].as_array().cloned().unwrap_or_default())
        .map(|c| {
            ["limits", "requests"]
                .iter()
                .filter(|f| c["resources"][f].get(RESOURCE).is_some())
                .count()
                .min(1)
        })
        .sum()
}

#[tokio::test]
async fn plain_pod_gets_one_ip_in_limits_and_requests() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();
    let request = pod_create_review();
    let answer = post_review(&client, &hook, &request).await;
    let response = &answer["response"];
    assert_eq!(response["uid"], request["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    let pod = patched_pod(&request, &answer);
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"][RESOURCE], "1");
    assert_eq!(resources["requests"][RESOURCE], "1");

    // Patched pods come back unchanged: the webhook is idempotent.
    let mut again = request.clone();
    again["request"]["object"] = pod;
    let answer = post_review(&client, &hook, &again).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
}

#[tokio::test]
async fn host_network_opted_out_and_present_pods_are_untouched() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();
    let cases = [
        (
            "hostNetwork",
            review_with(|o| o["spec"]["hostNetwork"] = json!(true)),
        ),
        (
            "already present",
            review_with(|o| {
                o["spec"]["containers"][0]["resources"] =
                    json!({ "limits": { RESOURCE: "1" }, "requests": { RESOURCE: "1" } })
            }),
        ),
        ("kube-system", {
            let mut r = pod_create_review();
            r["request"]["namespace"] = json!("kube-system");
            r
        }),
    ];
    for (name, request) in cases {
        let answer = post_review(&client, &hook, &request).await;
        assert_eq!(answer["response"]["allowed"], true, "{name}");
        assert!(
            answer["response"].get("patch").is_none(),
            "{name}: {answer}"
        );
        assert_eq!(
            answer["response"]["uid"], request["request"]["uid"],
            "{name}"
        );
    }
}

/// A pod's own opt-out is honoured only on the path the chart uses for
/// namespaces an administrator labelled `sextant.io/allow-pod-ip-opt-out`.
#[tokio::test]
async fn a_pods_opt_out_counts_only_on_the_admin_allowed_path() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();
    for (how, edit) in [("annotation", "annotations"), ("label", "labels")] {
        let request =
            review_with(|o| o["metadata"][edit] = json!({ "sextant.io/skip-ip-resource": "true" }));
        let body = || serde_json::to_vec(&request).expect("encode");
        let counted = post(&client, &hook, body()).await;
        assert_eq!(
            ip_units(&patched_pod(&request, &counted)),
            1,
            "opt-out {how} on /mutate: {counted}"
        );
        assert!(
            counted["response"]["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("sextant.io/allow-pod-ip-opt-out")),
            "{counted}"
        );
        let honoured = post_to(&client, &hook.opt_out_url(), body()).await;
        assert_eq!(honoured["response"]["allowed"], true);
        assert!(
            honoured["response"].get("patch").is_none(),
            "opt-out {how} on the opt-out path: {honoured}"
        );
    }
    // Without an opt-out, the opt-out path counts the pod like /mutate.
    let plain = pod_create_review();
    let answer = post_to(
        &client,
        &hook.opt_out_url(),
        serde_json::to_vec(&plain).expect("encode"),
    )
    .await;
    assert_eq!(ip_units(&patched_pod(&plain, &answer)), 1);
}

/// Past `--max-connections`, further connections wait in the backlog; a
/// slot freed is used at once.
#[tokio::test]
async fn connections_past_the_cap_wait_for_a_slot() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start_with_max_connections(&pki, 2).await;
    // Two idle connections that never send a byte hold both slots.
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(
            tokio::net::TcpStream::connect(hook.addr)
                .await
                .expect("connect"),
        );
    }
    let client = pki.client();
    let body = serde_json::to_vec(&pod_create_review()).expect("encode");
    let blocked = tokio::time::timeout(
        Duration::from_millis(500),
        post(&client, &hook, body.clone()),
    )
    .await;
    assert!(
        blocked.is_err(),
        "a third connection was served while two held both slots"
    );
    drop(idle);
    let answer = tokio::time::timeout(Duration::from_secs(5), post(&client, &hook, body))
        .await
        .expect("served once a slot is free");
    assert_eq!(answer["response"]["allowed"], true);
}

#[tokio::test]
async fn init_containers_are_not_counted_twice() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();
    let request = review_with(|o| {
        o["spec"]["initContainers"] = json!([
            { "name": "init-db", "image": "busybox", "resources": { "limits": { "cpu": "1" } } },
            { "name": "sidecar", "image": "envoy", "restartPolicy": "Always" }
        ]);
        o["spec"]["containers"]
            .as_array_mut()
            .expect("containers")
            .push(json!({ "name": "exporter", "image": "exporter" }));
    });
    let answer = post_review(&client, &hook, &request).await;
    let pod = patched_pod(&request, &answer);
    assert_eq!(ip_units(&pod), 1, "one IP per pod: {pod}");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["limits"][RESOURCE],
        "1"
    );
    assert!(
        pod["spec"]["initContainers"][0]["resources"]["limits"]
            .get(RESOURCE)
            .is_none()
    );

    // An init container that already asks for it: the pod is counted.
    let request = review_with(|o| {
        o["spec"]["initContainers"] = json!([{ "name": "init", "image": "busybox", "resources": { "requests": { RESOURCE: "1" } } }]);
    });
    let answer = post_review(&client, &hook, &request).await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");
}

#[tokio::test]
async fn malformed_bodies_get_a_clear_rejection_not_a_500() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();

    let answer = post(&client, &hook, b"{\"apiVersion\": ".to_vec()).await;
    assert_eq!(answer["response"]["allowed"], false);
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("not JSON"), "{message}");

    let answer = post(
        &client,
        &hook,
        br#"{"apiVersion":"v1","kind":"Pod"}"#.to_vec(),
    )
    .await;
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("expected apiVersion admission.k8s.io/v1"),
        "{message}"
    );

    // A review whose pod is not a pod: refused, with the request's uid.
    let request = review_with(|o| o["spec"]["containers"] = json!("nginx"));
    let answer = post_review(&client, &hook, &request).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["uid"], request["request"]["uid"]);
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("malformed AdmissionReview"), "{message}");

    let mut no_request = pod_create_review();
    no_request
        .as_object_mut()
        .expect("object")
        .remove("request");
    let answer = post_review(&client, &hook, &no_request).await;
    let message = answer["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("without a request"), "{message}");

    // Not a pod CREATE: allowed unchanged with a warning.
    let mut update = pod_create_review();
    update["request"]["operation"] = json!("UPDATE");
    let answer = post_review(&client, &hook, &update).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &hook.metrics.registry()).expect("encode");
    assert!(
        text.contains(r#"sextant_webhook_reviews_total{result="invalid"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sextant_webhook_reviews_total{result="ignored"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("sextant_webhook_review_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn non_review_paths_and_methods_are_plain_http_errors() {
    let pki = TestPki::new("test CA");
    let hook = TestWebhook::start(&pki).await;
    let client = pki.client();
    let get = client.get(hook.url()).send().await.expect("GET");
    assert_eq!(get.status(), 405);
    let health = client
        .get(format!("https://localhost:{}/healthz", hook.addr.port()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn certificate_is_reloaded_when_the_files_change() {
    let old = TestPki::new("old CA");
    let hook = TestWebhook::start(&old).await;
    let metrics = hook.metrics.clone();
    let watcher = tokio::spawn(sextant_webhook::tls::watch(
        hook.cert.clone(),
        Duration::from_millis(50),
        metrics,
    ));
    let answer = post_review(&old.client(), &hook, &pod_create_review()).await;
    assert_eq!(answer["response"]["allowed"], true);

    // A broken key is reported and the old pair stays in use.
    std::fs::write(hook.dir.path().join("tls.key"), "not a key").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let answer = post_review(&old.client(), &hook, &pod_create_review()).await;
    assert_eq!(answer["response"]["allowed"], true);

    let new = TestPki::new("new CA");
    new.write(hook.dir.path());
    let reloaded = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            // New connections only: a client per try.
            if new
                .client()
                .post(hook.url())
                .body("{}")
                .send()
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reloaded.is_ok(), "new certificate served within 10 s");
    assert!(
        old.client()
            .post(hook.url())
            .body("{}")
            .send()
            .await
            .is_err(),
        "the old CA no longer verifies the server"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &hook.metrics.registry()).expect("encode");
    assert!(
        text.contains(r#"sextant_webhook_tls_reloads_total{result="ok"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"sextant_webhook_tls_reloads_total{result="tls_pem"}"#),
        "{text}"
    );
    watcher.abort();
}
