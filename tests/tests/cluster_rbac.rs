//! What each Sextant component may do, asked of the real API server with
//! the component's own token and the chart's RBAC and admission policy.
//!
//! - The agent's ValidatingAdmissionPolicy: an agent's token, bound to its
//!   node as a DaemonSet pod's projected token is, writes only its own
//!   node's NodeNetwork status, and there only `usage` and its answers in the
//!   release handshake; a token bound to no node writes nothing; its
//!   SextantIdentity creates are well-formed.
//! - RBAC pinned: every API call each component's code makes is made here
//!   with that component's token and must get past authorization (a missing
//!   rule is a 403 "cannot"); calls no component makes stay forbidden.
//!
//! ```text
//!  test (admin) ──creates──▶ kwok Nodes + NodeNetworks, a kwok Pod of the agent's ServiceAccount
//!      │
//!      ├─ TokenRequest bound to Pod / Node ──▶ agent token with user info extra node-name
//!      └─ raw requests with each token ──▶ kube-apiserver (RBAC, then the chart's policy)
//! ```

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, bail, ensure};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
    client::Body,
};
use serde_json::{Value, json};
use sextant_crds::NodeNetwork;
use sextant_e2e::{
    chart::{NAMESPACE, Rendered},
    cluster::{BoundTo, Cluster, Options, eventually, install},
};

/// The agent's ServiceAccount as the chart names it.
const AGENT: &str = "sextant-agent";

/// The cluster with the chart installed (default values), or `None` when
/// `SEXTANT_SKIP` names the cluster tier.
fn cluster() -> Option<&'static Cluster> {
    let c = Cluster::for_test(env!("CARGO_BIN_EXE_sextant-cluster"), Options::default())?;
    let _ = installed(c);
    Some(c)
}

/// The chart, installed once for the whole binary.
fn installed(c: &Cluster) -> &'static Rendered {
    static INSTALLED: OnceLock<Rendered> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tokio::task::block_in_place(|| install::install(c, None).expect("chart installed"))
    })
}

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", SEQ.fetch_add(1, Ordering::Relaxed))
}

// ------------------------------------------------------------------ objects

/// A kwok Node `name` and its NodeNetwork, whose status the operator has
/// filled: a pool, an ENI, a fixed IP, a condition, and release entries in
/// each state (`198.18.0.10` marked, `.11` ready-for-release, `198.18.1.12`
/// released, `198.18.0.13` do-not-release). The released address lies
/// outside the pod CIDR, which a static node's agent always counts as its
/// pool: it leaves the pool when it leaves `status.pool`.
async fn node_with_network(admin: &Client, name: &str) -> anyhow::Result<()> {
    let node = install::kwok_node(name, "us-east-1a", &format!("i-{name}"), "m5.large");
    Api::<Node>::all(admin.clone())
        .create(&PostParams::default(), &node)
        .await
        .with_context(|| format!("creating Node {name}"))?;
    let api = Api::<NodeNetwork>::all(admin.clone());
    let nn: NodeNetwork = serde_json::from_value(json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
        "metadata": {"name": name},
        "spec": {"provider": "static", "podCIDRs": ["198.18.0.0/24"]},
    }))?;
    api.create(&PostParams::default(), &nn)
        .await
        .with_context(|| format!("creating NodeNetwork {name}"))?;
    let status = json!({"status": {
        "enis": [{"id": "eni-1", "subnetId": "subnet-1", "deviceIndex": 1}],
        "pool": {
            "198.18.0.10": {"eni": "eni-1"}, "198.18.0.11": {"eni": "eni-1"},
            "198.18.1.12": {"eni": "eni-1"}, "198.18.0.13": {"eni": "eni-1"},
            "198.18.0.20": {"eni": "eni-1"},
        },
        "fixedIps": {"198.18.0.20": "default/web-0"},
        "release": {
            "198.18.0.10": "marked", "198.18.0.11": "ready-for-release",
            "198.18.1.12": "released", "198.18.0.13": "do-not-release",
        },
        "conditions": [{
            "type": "PoolReady", "status": "True", "reason": "Filled",
            "message": "", "lastTransitionTime": "2026-12-07T00:00:00Z",
        }],
        "observedGeneration": 1,
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .with_context(|| format!("filling NodeNetwork {name} status"))?;
    Ok(())
}

/// A pod of the agent's ServiceAccount on kwok node `node`, as the
/// DaemonSet would place one (kwok runs it).
async fn agent_pod(admin: &Client, name: &str, node: &str) -> anyhow::Result<()> {
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE,
                     "labels": {"app.kubernetes.io/part-of": "sextant"}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": AGENT,
            "containers": [{"name": "agent", "image": "sextant-agent:e2e"}],
            "tolerations": [{"operator": "Exists"}],
        },
    }))?;
    Api::<Pod>::namespaced(admin.clone(), NAMESPACE)
        .create(&PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating Pod {name}"))?;
    Ok(())
}

/// Two nodes with NodeNetworks and an agent client for each: node A's from
/// the token of an agent pod on A (the DaemonSet's own kind of token), node
/// B's from a token bound to Node B.
struct TwoNodes {
    a: String,
    b: String,
    agent_a: Client,
    agent_b: Client,
    admin: Client,
}

async fn two_nodes(c: &Cluster) -> anyhow::Result<TwoNodes> {
    let admin = c.admin().await?;
    let a = unique("rbac-a");
    let b = unique("rbac-b");
    node_with_network(&admin, &a).await?;
    node_with_network(&admin, &b).await?;
    let pod = format!("sextant-agent-{a}");
    agent_pod(&admin, &pod, &a).await?;
    let (kc_a, node_a) = c
        .bound_service_account_kubeconfig(NAMESPACE, AGENT, BoundTo::Pod(&pod))
        .await?;
    ensure!(node_a == a, "pod {pod} is on {node_a}, not {a}");
    let (kc_b, _) = c
        .bound_service_account_kubeconfig(NAMESPACE, AGENT, BoundTo::Node(&b))
        .await?;
    let nodes = TwoNodes {
        agent_a: c.client(&kc_a).await?,
        agent_b: c.client(&kc_b).await?,
        admin,
        a,
        b,
    };
    Ok(nodes)
}

/// The policy is enforced a moment after it is created: waits until agent
/// B's dry-run write to node A's status is refused (a dry run changes
/// nothing while the policy is not in force yet).
async fn policy_active(n: &TwoNodes) -> anyhow::Result<()> {
    eventually(
        Duration::from_secs(30),
        "the agent admission policy in force",
        || async {
            let r = status_patch(&n.agent_b, &n.a, &usage(&["198.18.0.10"]), true).await?;
            Ok((r.code == 403).then_some(()))
        },
    )
    .await
}

// ------------------------------------------------------------- raw requests

/// The API server's answer: HTTP status and the Status message or body.
#[derive(Debug)]
struct Answer {
    code: u16,
    message: String,
}

impl Answer {
    fn ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Refused by authorization: RBAC's 403 reads "... cannot <verb> resource ...".
    fn refused_by_rbac(&self) -> bool {
        self.code == 403 && self.message.contains(" cannot ")
    }
}

/// Sends `request` with `client`; an error status is an [`Answer`] too.
async fn send(client: &Client, request: http::Request<Vec<u8>>) -> anyhow::Result<Answer> {
    let watch = request
        .uri()
        .query()
        .is_some_and(|q| q.contains("watch=true"));
    if watch {
        // Only the status line matters: a watch that got past authorization
        // answers 200 and streams; it is dropped here.
        let res = client.send(request.map(Body::from)).await?;
        return Ok(Answer {
            code: res.status().as_u16(),
            message: String::new(),
        });
    }
    match client.request_text(request).await {
        Ok(text) => Ok(Answer {
            code: 200,
            message: text,
        }),
        Err(kube::Error::Api(s)) => Ok(Answer {
            code: s.code,
            message: s.message,
        }),
        Err(e) => Err(e.into()),
    }
}

/// A merge patch of NodeNetwork `node`'s status (`dry_run`: `dryRun=All`).
async fn status_patch(
    client: &Client,
    node: &str,
    patch: &Value,
    dry_run: bool,
) -> anyhow::Result<Answer> {
    let mut uri = format!("/apis/sextant.io/v1alpha1/nodenetworks/{node}/status");
    if dry_run {
        uri.push_str("?dryRun=All");
    }
    let req = http::Request::patch(uri)
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(patch)?)?;
    send(client, req).await
}

/// The agent's usage report (`sextant_agent_core::usage::status_patch`'s shape).
fn usage(used: &[&str]) -> Value {
    let used: BTreeMap<&str, String> = used
        .iter()
        .map(|ip| (*ip, format!("default/p-{ip}")))
        .collect();
    json!({"status": {"usage": {
        "used": used, "cooling": [], "pending": 0, "reportedAt": "2026-12-07T03:00:00Z",
    }}})
}

async fn status_of(admin: &Client, node: &str) -> anyhow::Result<Value> {
    let nn = Api::<NodeNetwork>::all(admin.clone()).get(node).await?;
    Ok(serde_json::to_value(nn)?["status"].clone())
}

// ------------------------------------------------------ the admission policy

#[tokio::test(flavor = "multi_thread")]
async fn agent_b_cannot_patch_node_a_status_and_agent_a_can() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    policy_active(&n).await?;

    let own = status_patch(&n.agent_a, &n.a, &usage(&["198.18.0.10"]), false).await?;
    ensure!(own.ok(), "agent A reporting on its own node: {own:?}");
    let st = status_of(&n.admin, &n.a).await?;
    ensure!(
        st["usage"]["used"]["198.18.0.10"] == "default/p-198.18.0.10",
        "agent A's report landed: {st}"
    );

    let other = status_patch(&n.agent_b, &n.a, &usage(&["198.18.0.11"]), false).await?;
    ensure!(
        other.code == 403,
        "agent B patching node A: want 403, got {other:?}"
    );
    let want = format!(
        "the sextant agent of node {} may write only NodeNetwork {}, not {}",
        n.b, n.b, n.a
    );
    ensure!(
        other.message.contains(&want),
        "the refusal names the policy's reason ({want:?}): {}",
        other.message
    );
    ensure!(
        other.message.contains("ValidatingAdmissionPolicy"),
        "refused by the chart's policy: {}",
        other.message
    );
    let after = status_of(&n.admin, &n.a).await?;
    ensure!(
        after["usage"] == st["usage"],
        "agent B's refused write left node A's usage alone: {after}"
    );

    // B's release answer for A's marked address would let the operator
    // unassign an address in use on A: refused the same way.
    let answer = json!({"status": {"release": {"198.18.0.10": "ready-for-release"}}});
    let r = status_patch(&n.agent_b, &n.a, &answer, false).await?;
    ensure!(r.code == 403, "agent B answering A's handshake: {r:?}");
    ensure!(status_of(&n.admin, &n.a).await?["release"]["198.18.0.10"] == "marked");

    // And B still reports on its own node.
    let r = status_patch(&n.agent_b, &n.b, &usage(&[]), false).await?;
    ensure!(r.ok(), "agent B on its own node: {r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_changes_only_usage_and_its_release_answers() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    policy_active(&n).await?;
    let before = status_of(&n.admin, &n.a).await?;

    // Everything the agent writes, in one report as it sends it.
    let answers = json!({"status": {
        "usage": {"used": {"198.18.0.13": "default/p"}, "cooling": [], "pending": 1,
                  "reportedAt": "2026-12-07T03:00:00Z"},
        "release": {
            "198.18.0.10": "ready-for-release",
            "198.18.0.11": "do-not-release",
            "198.18.1.12": null,
        },
    }});
    let r = status_patch(&n.agent_a, &n.a, &answers, false).await?;
    ensure!(r.ok(), "the agent's own answers: {r:?}");
    let st = status_of(&n.admin, &n.a).await?;
    ensure!(
        st["release"]
            == json!({
                "198.18.0.10": "ready-for-release",
                "198.18.0.11": "do-not-release",
                "198.18.0.13": "do-not-release",
            }),
        "answers landed: {}",
        st["release"]
    );

    // Each of these is the operator's to write; one field per request.
    let refused: [(&str, Value, &str); 9] = [
        (
            "a fixed IP injected",
            json!({"fixedIps": {"198.18.0.10": "default/stolen-0"}}),
            "status.fixedIps",
        ),
        (
            "an address added to the pool",
            json!({"pool": {"198.18.0.99": {"eni": "eni-1"}}}),
            "status.pool",
        ),
        ("the ENIs dropped", json!({"enis": null}), "status.enis"),
        (
            "a condition",
            json!({"conditions": []}),
            "status.conditions",
        ),
        (
            "observedGeneration",
            json!({"observedGeneration": 7}),
            "status.observedGeneration",
        ),
        (
            "a release entry the operator never marked",
            json!({"release": {"198.18.0.20": "ready-for-release"}}),
            "198.18.0.20",
        ),
        (
            "the operator's released written by the agent",
            json!({"release": {"198.18.0.10": "released"}}),
            "198.18.0.10",
        ),
        (
            "a refusal turned into a release",
            json!({"release": {"198.18.0.11": "ready-for-release"}}),
            "198.18.0.11",
        ),
        (
            "an entry dropped before the operator released it",
            json!({"release": {"198.18.0.13": null}}),
            "198.18.0.13",
        ),
    ];
    for (what, status, named) in refused {
        let r = status_patch(&n.agent_a, &n.a, &json!({ "status": status }), false).await?;
        ensure!(r.code == 403, "{what}: want 403, got {r:?}");
        ensure!(
            r.message.contains(named) && r.message.contains("the sextant agent"),
            "{what}: the refusal names {named}: {}",
            r.message
        );
    }
    let after = status_of(&n.admin, &n.a).await?;
    ensure!(after == st, "refused writes changed nothing: {after}");
    ensure!(
        after["fixedIps"] == before["fixedIps"] && after["pool"] == before["pool"],
        "{after}"
    );

    // The spec and the object itself: RBAC gives the agent only the status.
    let spec = http::Request::patch(format!("/apis/sextant.io/v1alpha1/nodenetworks/{}", n.a))
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(
            &json!({"spec": {"podCIDRs": ["10.9.0.0/24"]}}),
        )?)?;
    let r = send(&n.agent_a, spec).await?;
    ensure!(r.refused_by_rbac(), "agent A patching its spec: {r:?}");
    let del = http::Request::delete(format!("/apis/sextant.io/v1alpha1/nodenetworks/{}", n.a))
        .body(Vec::new())?;
    let r = send(&n.agent_a, del).await?;
    ensure!(
        r.refused_by_rbac(),
        "agent A deleting its NodeNetwork: {r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_token_bound_to_no_node_writes_nothing() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    policy_active(&n).await?;
    let unbound = c
        .client(&c.service_account_kubeconfig(NAMESPACE, AGENT).await?)
        .await?;
    let r = status_patch(&unbound, &n.a, &usage(&["198.18.0.10"]), false).await?;
    ensure!(r.code == 403, "an unbound agent token: {r:?}");
    ensure!(
        r.message.contains("token is not bound to a node"),
        "{}",
        r.message
    );
    let id = identity(
        &format!("{}", 300_000 + SEQ.fetch_add(1, Ordering::Relaxed)),
        true,
    );
    let r = create_identity(&unbound, &id).await?;
    ensure!(r.code == 403, "identity from an unbound agent token: {r:?}");

    // The policy is the agent's alone: the operator (an unbound token)
    // still writes what it owns.
    let operator = c
        .client(
            &c.service_account_kubeconfig(NAMESPACE, "sextant-operator")
                .await?,
        )
        .await?;
    let fixed = json!({"status": {"fixedIps": {"198.18.0.11": "default/web-1"}}});
    let r = status_patch(&operator, &n.a, &fixed, false).await?;
    ensure!(r.ok(), "the operator writing fixedIps: {r:?}");
    Ok(())
}

fn identity(name: &str, namespace_label: bool) -> Value {
    let mut labels = json!({"app": "web"});
    if namespace_label {
        labels["io.kubernetes.pod.namespace"] = json!("default");
    }
    json!({
        "apiVersion": "sextant.io/v1alpha1", "kind": "SextantIdentity",
        "metadata": {"name": name},
        "spec": {"labels": labels},
    })
}

async fn create_identity(client: &Client, body: &Value) -> anyhow::Result<Answer> {
    let req = http::Request::post("/apis/sextant.io/v1alpha1/sextantidentities")
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body)?)?;
    send(client, req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_identity_creates_are_well_formed_and_never_rewritten() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    policy_active(&n).await?;
    let id = format!("{}", 400_000 + SEQ.fetch_add(1, Ordering::Relaxed));
    let r = create_identity(&n.agent_a, &identity(&id, true)).await?;
    ensure!(r.ok(), "the agent publishing an identity: {r:?}");

    let mut with_finalizer = identity(&format!("{id}1"), true);
    with_finalizer["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let mut owned = identity(&format!("{id}2"), true);
    owned["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "v1", "kind": "Node", "name": n.b, "uid": "00000000-0000-0000-0000-000000000001",
    }]);
    let malformed = [
        ("a reserved number", identity("2", true)),
        ("a CIDR identity number", identity("16777216", true)),
        ("not a number", identity("web", true)),
        ("no namespace label", identity(&format!("{id}3"), false)),
        ("a finalizer", with_finalizer),
        ("an owner reference", owned),
    ];
    for (what, body) in malformed {
        let r = create_identity(&n.agent_a, &body).await?;
        ensure!(r.code == 422, "{what}: want 422, got {r:?}");
        ensure!(
            r.message
                .contains("a SextantIdentity the sextant agent creates"),
            "{what}: {}",
            r.message
        );
    }

    // Never rebound or removed by an agent (RBAC first; the policy too).
    let patch = http::Request::patch(format!("/apis/sextant.io/v1alpha1/sextantidentities/{id}"))
        .header("content-type", "application/merge-patch+json")
        .body(serde_json::to_vec(
            &json!({"spec": {"labels": {"app": "db"}}}),
        )?)?;
    let r = send(&n.agent_b, patch).await?;
    ensure!(
        r.refused_by_rbac(),
        "agent B rebinding identity {id}: {r:?}"
    );
    let put = http::Request::put(format!("/apis/sextant.io/v1alpha1/sextantidentities/{id}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&identity(&id, true))?)?;
    let r = send(&n.agent_b, put).await?;
    ensure!(r.refused_by_rbac(), "agent B updating identity {id}: {r:?}");
    let del = http::Request::delete(format!("/apis/sextant.io/v1alpha1/sextantidentities/{id}"))
        .body(Vec::new())?;
    let r = send(&n.agent_b, del).await?;
    ensure!(r.refused_by_rbac(), "agent B deleting identity {id}: {r:?}");
    Ok(())
}

/// The real agent under the policy: with its DaemonSet-pod token it reports
/// usage, answers the operator's mark and drops a released entry once the
/// address left the pool, all through the API server's policy.
#[tokio::test(flavor = "multi_thread")]
async fn the_real_agent_reports_and_answers_the_handshake_under_the_policy() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    policy_active(&n).await?;
    let pod = format!("sextant-agent-{}", n.a);
    let (kubeconfig, _) = c
        .bound_service_account_kubeconfig(NAMESPACE, AGENT, BoundTo::Pod(&pod))
        .await?;
    let dir = install::scratch(c, &pod)?;
    let mut component = install::Component::new(
        "sextant-agent",
        "agent",
        None,
        &pod,
        vec![
            ("KUBECONFIG", kubeconfig.display().to_string()),
            (
                "SEXTANT_AGENT_SOCKET",
                dir.join("agent.sock").display().to_string(),
            ),
            ("SEXTANT_STATE_DIR", dir.join("state").display().to_string()),
            ("SEXTANT_BPF_ROOT", dir.join("bpf").display().to_string()),
            ("SEXTANT_METRICS_ADDR", "127.0.0.1:0".to_owned()),
            ("SEXTANT_USAGE_REPORT_INTERVAL", "1s".to_owned()),
            ("SEXTANT_NO_DATAPATH", "true".to_owned()),
        ],
    );
    component.pod.node_name = n.a.clone();
    let agent = install::run(c, installed(c), &pod, component).await?;

    let api = Api::<NodeNetwork>::all(n.admin.clone());
    let answered = eventually(
        Duration::from_secs(60),
        "the agent's usage report and its answer to the mark",
        || async {
            let st = serde_json::to_value(api.get(&n.a).await?)?["status"].clone();
            Ok((st["release"]["198.18.0.10"] == "ready-for-release"
                && st["usage"]["reportedAt"].is_string())
            .then_some(st))
        },
    )
    .await
    .with_context(|| agent.process.log_tail(30))?;
    ensure!(
        answered["fixedIps"]["198.18.0.20"] == "default/web-0",
        "{answered}"
    );

    // The operator gives 198.18.1.12 back: it leaves the pool, and the agent drops
    // its `released` entry (the one deletion the policy lets it make).
    let gone = json!({"status": {"pool": {"198.18.1.12": null}}});
    api.patch_status(&n.a, &PatchParams::default(), &Patch::Merge(&gone))
        .await?;
    eventually(
        Duration::from_secs(60),
        "the agent dropping the released entry",
        || async {
            let st = serde_json::to_value(api.get(&n.a).await?)?["status"].clone();
            Ok(st["release"].get("198.18.1.12").is_none().then_some(()))
        },
    )
    .await
    .with_context(|| agent.process.log_tail(30))?;
    agent.assert_no_forbidden()?;
    Ok(())
}

// ------------------------------------------------------------ RBAC, pinned

/// One API call as a component's code makes it.
#[derive(Clone, Debug)]
struct Call {
    verb: &'static str,
    /// `""` for the core group.
    group: &'static str,
    version: &'static str,
    /// Plural, with `/subresource` if any.
    resource: &'static str,
    /// Namespace of a namespaced call; `None`: cluster scope (or all namespaces).
    namespace: Option<&'static str>,
    /// Object name (get, update, patch, delete).
    name: Option<String>,
    /// Body of create, update and patch.
    body: Option<Value>,
}

fn call(
    verb: &'static str,
    group: &'static str,
    version: &'static str,
    resource: &'static str,
) -> Call {
    Call {
        verb,
        group,
        version,
        resource,
        namespace: None,
        name: None,
        body: None,
    }
}

impl Call {
    fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }
    fn ns(mut self, ns: &'static str) -> Self {
        self.namespace = Some(ns);
        self
    }
    fn body(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    fn request(&self) -> anyhow::Result<http::Request<Vec<u8>>> {
        let (plural, sub) = self
            .resource
            .split_once('/')
            .map_or((self.resource, None), |(p, s)| (p, Some(s)));
        let mut uri = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        if let Some(ns) = self.namespace {
            uri.push_str(&format!("/namespaces/{ns}"));
        }
        uri.push_str(&format!("/{plural}"));
        if let Some(name) = &self.name {
            uri.push_str(&format!("/{name}"));
        }
        if let Some(sub) = sub {
            uri.push_str(&format!("/{sub}"));
        }
        let body = self
            .body
            .as_ref()
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let builder = match self.verb {
            "get" | "list" => http::Request::get(uri),
            "watch" => http::Request::get(format!("{uri}?watch=true&timeoutSeconds=1")),
            "create" => http::Request::post(uri).header("content-type", "application/json"),
            "update" => http::Request::put(uri).header("content-type", "application/json"),
            "patch" => {
                http::Request::patch(uri).header("content-type", "application/merge-patch+json")
            }
            "delete" => http::Request::delete(uri),
            other => bail!("no request for verb {other}"),
        };
        Ok(builder.body(body)?)
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(ns) = self.namespace {
            write!(f, " in {ns}")?;
        }
        if let Some(n) = &self.name {
            write!(f, " {n}")?;
        }
        Ok(())
    }
}

/// Reads of `resource`: what a kube-runtime watcher does (list, then watch).
fn list_watch(group: &'static str, version: &'static str, resource: &'static str) -> [Call; 2] {
    [
        call("list", group, version, resource),
        call("watch", group, version, resource),
    ]
}

/// A name no object has: a call on it gets past authorization (or not)
/// without touching anything.
const NOBODY: &str = "rbac-probe-absent";

/// An events.k8s.io Event on Node `node`, as kube-runtime's Recorder posts it.
fn node_event(node: &str, reporter: &str) -> Value {
    json!({
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {
            "name": format!("{node}.rbac{}", SEQ.fetch_add(1, Ordering::Relaxed)),
            "namespace": "default",
        },
        "eventTime": "2026-12-07T03:00:00.000000Z",
        "reportingController": reporter, "reportingInstance": node,
        "action": "PolicyFailOpen", "reason": "PolicyFailOpen", "type": "Warning",
        "note": "rbac e2e",
        "regarding": {"apiVersion": "v1", "kind": "Node", "name": node},
    })
}

/// Every call the operator makes (controllers/src: node_network, fixed_ip,
/// policy_status, identity GC, the Lease of kit::lease, Events of its
/// Recorders).
fn operator_calls(node: &str) -> Vec<Call> {
    let mut v = Vec::new();
    for (g, r) in [
        ("sextant.io", "nodenetworks"),
        ("sextant.io", "fixedips"),
        ("", "nodes"),
        ("", "pods"),
        ("apps", "statefulsets"),
        ("sextant.io", "sextantnetworkpolicies"),
        ("networking.k8s.io", "networkpolicies"),
        ("sextant.io", "sextantidentities"),
    ] {
        let version = match g {
            "sextant.io" => "v1alpha1",
            _ => "v1",
        };
        v.extend(list_watch(g, version, r));
    }
    v.extend([
        call("get", "sextant.io", "v1alpha1", "nodenetworks").named(node),
        // Nameless: past authorization, then refused by validation, so the
        // shared cluster gains no object.
        call("create", "sextant.io", "v1alpha1", "nodenetworks").body(json!({
            "apiVersion": "sextant.io/v1alpha1", "kind": "NodeNetwork",
            "metadata": {}, "spec": {"provider": "static"},
        })),
        call("patch", "sextant.io", "v1alpha1", "nodenetworks")
            .named(NOBODY)
            .body(json!({})),
        call("delete", "sextant.io", "v1alpha1", "nodenetworks").named(NOBODY),
        call("patch", "sextant.io", "v1alpha1", "nodenetworks/status")
            .named(node)
            .body(json!({"status": {"lastResync": "2026-12-07T03:00:00Z"}})),
        call("get", "sextant.io", "v1alpha1", "fixedips")
            .ns("default")
            .named(NOBODY),
        call("create", "sextant.io", "v1alpha1", "fixedips")
            .ns("default")
            .body(json!({})),
        call("patch", "sextant.io", "v1alpha1", "fixedips")
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
        call("delete", "sextant.io", "v1alpha1", "fixedips")
            .ns("default")
            .named(NOBODY),
        call("patch", "sextant.io", "v1alpha1", "fixedips/status")
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
        call("get", "", "v1", "nodes").named(node),
        call("get", "", "v1", "pods").ns("default").named(NOBODY),
        call("get", "apps", "v1", "statefulsets")
            .ns("default")
            .named(NOBODY),
        call(
            "patch",
            "sextant.io",
            "v1alpha1",
            "sextantnetworkpolicies/status",
        )
        .ns("default")
        .named(NOBODY)
        .body(json!({})),
        call("delete", "sextant.io", "v1alpha1", "sextantidentities").named("16777215"),
        call("list", "", "v1", "namespaces"),
        call("create", "events.k8s.io", "v1", "events")
            .ns("default")
            .body(node_event(node, "sextant-operator")),
        call("patch", "events.k8s.io", "v1", "events")
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
        call("create", "", "v1", "events")
            .ns("default")
            .body(json!({})),
        call("patch", "", "v1", "events")
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
        call("create", "coordination.k8s.io", "v1", "leases")
            .ns(NAMESPACE)
            .body(json!({})),
        call("get", "coordination.k8s.io", "v1", "leases")
            .ns(NAMESPACE)
            .named("sextant-operator"),
        call("update", "coordination.k8s.io", "v1", "leases")
            .ns(NAMESPACE)
            .named("sextant-operator")
            .body(json!({})),
        call("patch", "coordination.k8s.io", "v1", "leases")
            .ns(NAMESPACE)
            .named("sextant-operator")
            .body(json!({})),
    ]);
    v
}

/// Every call the agent makes (agent/src: its NodeNetwork watch and usage
/// report, the FixedIP lookup of a CNI ADD and its watch, the service and
/// policy watches, identity publishing, fail-open Events on its Node).
fn agent_calls(node: &str) -> Vec<Call> {
    let mut v = Vec::new();
    for (g, version, r) in [
        ("sextant.io", "v1alpha1", "nodenetworks"),
        ("sextant.io", "v1alpha1", "fixedips"),
        ("", "v1", "services"),
        ("discovery.k8s.io", "v1", "endpointslices"),
        ("sextant.io", "v1alpha1", "sextantnetworkpolicies"),
        ("networking.k8s.io", "v1", "networkpolicies"),
        ("", "v1", "pods"),
        ("", "v1", "namespaces"),
        ("", "v1", "nodes"),
        ("sextant.io", "v1alpha1", "sextantidentities"),
    ] {
        v.extend(list_watch(g, version, r));
    }
    v.extend([
        call("get", "sextant.io", "v1alpha1", "nodenetworks").named(node),
        call("patch", "sextant.io", "v1alpha1", "nodenetworks/status")
            .named(node)
            .body(usage(&[])),
        call("get", "sextant.io", "v1alpha1", "fixedips")
            .ns("default")
            .named(NOBODY),
        call("create", "sextant.io", "v1alpha1", "sextantidentities").body(identity(
            &format!("{}", 500_000 + SEQ.fetch_add(1, Ordering::Relaxed)),
            true,
        )),
        // Issue 17 item 7: without an events rule its fail-open Events were refused.
        call("create", "events.k8s.io", "v1", "events")
            .ns("default")
            .body(node_event(node, "sextant-agent")),
        call("patch", "events.k8s.io", "v1", "events")
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
    ]);
    v
}

/// The scheduler extender's two watches.
fn extender_calls() -> Vec<Call> {
    let mut v = Vec::new();
    v.extend(list_watch("sextant.io", "v1alpha1", "nodenetworks"));
    v.extend(list_watch("sextant.io", "v1alpha1", "fixedips"));
    v
}

/// Calls that must stay refused by RBAC for `who`.
fn forbidden_calls(who: &str, node: &str) -> Vec<Call> {
    let nn = || call("", "sextant.io", "v1alpha1", "nodenetworks");
    let secrets = call("list", "", "v1", "secrets").ns(NAMESPACE);
    let mut v = vec![secrets];
    let with = |mut c: Call, verb: &'static str| {
        c.verb = verb;
        c
    };
    match who {
        "agent" => v.extend([
            with(nn(), "delete").named(node),
            with(nn(), "patch").named(node).body(json!({"spec": {}})),
            with(nn(), "create").body(json!({})),
            // Its report is a merge patch; a whole-status update is not its.
            call("update", "sextant.io", "v1alpha1", "nodenetworks/status")
                .named(node)
                .body(json!({})),
            call("update", "sextant.io", "v1alpha1", "sextantidentities")
                .named("256")
                .body(json!({})),
            call("patch", "sextant.io", "v1alpha1", "sextantidentities")
                .named("256")
                .body(json!({})),
            call("delete", "sextant.io", "v1alpha1", "sextantidentities").named("256"),
            call("create", "sextant.io", "v1alpha1", "fixedips")
                .ns("default")
                .body(json!({})),
            call("patch", "sextant.io", "v1alpha1", "fixedips")
                .ns("default")
                .named(NOBODY)
                .body(json!({})),
            call("delete", "sextant.io", "v1alpha1", "fixedips")
                .ns("default")
                .named(NOBODY),
            call(
                "patch",
                "sextant.io",
                "v1alpha1",
                "sextantnetworkpolicies/status",
            )
            .ns("default")
            .named(NOBODY)
            .body(json!({})),
            call("patch", "", "v1", "nodes").named(node).body(json!({})),
            call("create", "", "v1", "pods")
                .ns("default")
                .body(json!({})),
            call("get", "events.k8s.io", "v1", "events")
                .ns("default")
                .named(NOBODY),
        ]),
        "extender" => v.extend([
            with(nn(), "create").body(json!({})),
            with(nn(), "patch").named(node).body(json!({})),
            with(nn(), "delete").named(node),
            call("patch", "sextant.io", "v1alpha1", "nodenetworks/status")
                .named(node)
                .body(json!({})),
            call("create", "sextant.io", "v1alpha1", "fixedips")
                .ns("default")
                .body(json!({})),
            call("patch", "sextant.io", "v1alpha1", "fixedips")
                .ns("default")
                .named(NOBODY)
                .body(json!({})),
            call("create", "events.k8s.io", "v1", "events")
                .ns("default")
                .body(node_event(node, "sextant-scheduler-ext")),
            call("create", "", "v1", "pods/binding")
                .ns("default")
                .named(NOBODY)
                .body(json!({})),
        ]),
        "operator" => v.extend([
            call("create", "sextant.io", "v1alpha1", "sextantidentities")
                .body(identity("257", true)),
            call("patch", "sextant.io", "v1alpha1", "sextantnetworkpolicies")
                .ns("default")
                .named(NOBODY)
                .body(json!({})),
            call("create", "", "v1", "pods")
                .ns("default")
                .body(json!({})),
            call("patch", "", "v1", "nodes").named(node).body(json!({})),
            call("update", "coordination.k8s.io", "v1", "leases")
                .ns(NAMESPACE)
                .named("someone-elses-lease")
                .body(json!({})),
        ]),
        // No API token is mounted and no role bound: nothing Sextant reads.
        _ => v.extend([
            call("get", "sextant.io", "v1alpha1", "nodenetworks").named(node),
            call("list", "sextant.io", "v1alpha1", "fixedips"),
            call("list", "", "v1", "pods"),
            call("list", "", "v1", "nodes"),
        ]),
    }
    v
}

/// Makes each of `calls` with `client`; the ones authorization refused.
async fn refused(client: &Client, calls: &[Call]) -> anyhow::Result<Vec<(String, Answer)>> {
    let answers = futures::future::join_all(calls.iter().map(|c| async move {
        let a = send(client, c.request()?).await?;
        anyhow::Ok((c.to_string(), a))
    }))
    .await;
    let mut out = Vec::new();
    for a in answers {
        let (what, answer) = a?;
        if answer.refused_by_rbac() {
            out.push((what, answer));
        }
    }
    Ok(out)
}

async fn client_of(c: &Cluster, sa: &str) -> anyhow::Result<(Client, PathBuf)> {
    let kc = c.service_account_kubeconfig(NAMESPACE, sa).await?;
    Ok((c.client(&kc).await?, kc))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_call_each_component_makes_is_allowed_by_the_chart_rbac() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    let mut missing = Vec::new();
    let (operator, _) = client_of(c, "sextant-operator").await?;
    let (extender, _) = client_of(c, "sextant-scheduler-ext").await?;
    for (who, client, calls) in [
        ("sextant-operator", &operator, operator_calls(&n.b)),
        ("sextant-agent", &n.agent_a, agent_calls(&n.a)),
        ("sextant-scheduler-ext", &extender, extender_calls()),
    ] {
        for (what, answer) in refused(client, &calls).await? {
            missing.push(format!("{who}: {what}: {}", answer.message));
        }
    }
    ensure!(
        missing.is_empty(),
        "the chart's RBAC refuses calls the components make:\n{}",
        missing.join("\n")
    );

    // Those whose effect matters, done for real: the agent's usage report
    // on its node, its identity and its Event.
    let r = status_patch(&n.agent_a, &n.a, &usage(&["198.18.0.13"]), false).await?;
    ensure!(r.ok(), "{r:?}");
    let ev = call("create", "events.k8s.io", "v1", "events")
        .ns("default")
        .body(node_event(&n.a, "sextant-agent"));
    let r = send(&n.agent_a, ev.request()?).await?;
    ensure!(r.ok(), "the agent's fail-open Event on its Node: {r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_no_component_makes_stay_forbidden() -> anyhow::Result<()> {
    let Some(c) = cluster() else { return Ok(()) };
    let n = two_nodes(c).await?;
    let mut allowed = Vec::new();
    let mut clients = vec![
        ("agent", n.agent_a.clone()),
        ("extender", client_of(c, "sextant-scheduler-ext").await?.0),
        ("operator", client_of(c, "sextant-operator").await?.0),
        ("webhook", client_of(c, "sextant-webhook").await?.0),
        (
            "device-plugin",
            client_of(c, "sextant-device-plugin").await?.0,
        ),
    ];
    for (who, client) in clients.drain(..) {
        let calls = forbidden_calls(who, &n.a);
        let refused = refused(&client, &calls).await?;
        for call in &calls {
            let what = call.to_string();
            if !refused.iter().any(|(w, _)| *w == what) {
                allowed.push(format!("{who}: {what}"));
            }
        }
    }
    ensure!(
        allowed.is_empty(),
        "the chart's RBAC allows calls no component makes:\n{}",
        allowed.join("\n")
    );
    Ok(())
}
