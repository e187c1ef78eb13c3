//! Garbage collection of `SextantIdentity` objects no pod uses any more.
//! Agents create an identity the first time a label set shows up on their
//! node and never delete one (another node may still use it); the leader
//! sweeps: an identity whose labels match no pod of the cluster and that is
//! older than a grace period is deleted with its UID as a precondition, so
//! an object re-created meanwhile under the same number is never touched.
//! An agent that still uses a deleted number publishes it again on its next
//! sync.
//!
//! ```text
//!  LIST sextantidentities, pods, namespaces (paged) ─▶ plan (pure) ─▶ DELETE name (uid precondition)
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, ListParams, Preconditions},
};
use prometheus_client::metrics::counter::Counter;
use serde::de::DeserializeOwned;
use sextant_crds::SextantIdentity;
use sextant_policy::Labels;
use tracing::{info, warn};

/// One identity object as the sweep sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct IdentityRow {
    /// Object name (the number).
    pub(crate) name: String,
    /// Object UID, the delete precondition.
    pub(crate) uid: String,
    /// The label set the number stands for.
    pub(crate) labels: BTreeMap<String, String>,
    /// When it was created.
    pub(crate) created: Option<Timestamp>,
}

/// The identity label sets of `pods` (hostNetwork pods have none), as the
/// agents compute them.
pub(crate) fn live_label_sets(
    pods: &[Pod],
    namespaces: &[Namespace],
) -> BTreeSet<BTreeMap<String, String>> {
    let ns_labels: BTreeMap<&str, BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.as_deref()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let none = BTreeMap::new();
    pods.iter()
        .filter(|p| {
            !p.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        })
        .filter_map(|p| {
            let ns = p.metadata.namespace.as_deref()?;
            let own = sextant_policy::pod_labels(
                p.metadata.labels.as_ref(),
                p.spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.as_deref()),
            );
            let labels = Labels::for_pod(ns, &own, ns_labels.get(ns).unwrap_or(&none));
            Some(labels.as_map().clone())
        })
        .collect()
}

/// The identities to delete: labels no live pod carries, created more than
/// `grace` ago (an identity just published for a pod the LIST has not seen
/// yet is young, and kept).
pub(crate) fn plan(
    identities: &[IdentityRow],
    live: &BTreeSet<BTreeMap<String, String>>,
    now: Timestamp,
    grace: Duration,
) -> Vec<IdentityRow> {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    identities
        .iter()
        .filter(|i| !live.contains(&i.labels))
        .filter(|i| {
            i.created
                .is_some_and(|c| now.as_second().saturating_sub(c.as_second()) >= grace)
        })
        .cloned()
        .collect()
}

async fn list_all<K>(api: &Api<K>) -> kube::Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        let next = page.metadata.continue_.clone().filter(|c| !c.is_empty());
        out.extend(page.items);
        match next {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// One sweep: lists, plans, deletes. Returns how many identities it deleted.
pub(crate) async fn sweep(client: &Client, grace: Duration, now: Timestamp) -> kube::Result<usize> {
    let ids: Api<SextantIdentity> = Api::all(client.clone());
    let identities: Vec<IdentityRow> = list_all(&ids)
        .await?
        .into_iter()
        .filter_map(|i| {
            Some(IdentityRow {
                name: i.metadata.name.clone()?,
                uid: i.metadata.uid.clone()?,
                labels: i.spec.labels.clone(),
                created: i.metadata.creation_timestamp.as_ref().map(|t| t.0),
            })
        })
        .collect();
    if identities.is_empty() {
        return Ok(0);
    }
    let pods = list_all(&Api::<Pod>::all(client.clone())).await?;
    let namespaces = list_all(&Api::<Namespace>::all(client.clone())).await?;
    let live = live_label_sets(&pods, &namespaces);
    let mut deleted = 0;
    for gone in plan(&identities, &live, now, grace) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(gone.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match ids.delete(&gone.name, &params).await {
            Ok(_) => deleted += 1,
            // Gone already, or re-created under the same number: leave it.
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Sweeps every `every` until the process ends; counts deletions.
pub(crate) async fn run(client: Client, every: Duration, grace: Duration, deleted: Counter) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(&client, grace, Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => {
                deleted.inc_by(n as u64);
                info!(deleted = n, "unused SextantIdentities deleted");
            }
            Err(e) => warn!(error = %e, "SextantIdentity sweep"),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use sextant_kit::testing::{finish, mock_client};

    fn t(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn row(name: &str, app: &str, created: &str) -> IdentityRow {
        IdentityRow {
            name: name.into(),
            uid: format!("uid-{name}"),
            labels: [
                ("app".to_string(), app.to_string()),
                (
                    "io.kubernetes.pod.namespace".to_string(),
                    "prod".to_string(),
                ),
            ]
            .into(),
            created: Some(t(created)),
        }
    }

    fn pod(app: &str, sa: Option<&str>, host: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{app}-0"), "namespace": "prod", "labels": {"app": app}},
            "spec": {"containers": [], "hostNetwork": host, "serviceAccountName": sa},
        }))
        .expect("pod")
    }

    #[test]
    fn only_old_identities_no_pod_carries_are_planned() {
        let now = t("2026-11-26T12:00:00Z");
        let ids = [
            row("300", "db", "2026-11-26T10:00:00Z"),
            row("301", "gone", "2026-11-26T10:00:00Z"),
            row("302", "gone-too", "2026-11-26T11:59:00Z"),
        ];
        let live = live_label_sets(&[pod("db", None, false), pod("net", None, true)], &[]);
        let planned = plan(&ids, &live, now, Duration::from_secs(600));
        assert_eq!(
            planned.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["301"],
            "in use and young ones stay"
        );
    }

    #[test]
    fn live_label_sets_match_what_agents_publish() {
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": "prod", "labels": {"team": "a"}}
        }))
        .expect("ns");
        let live = live_label_sets(&[pod("db", Some("db-sa"), false)], &[ns]);
        let want: BTreeMap<String, String> = [
            ("app", "db"),
            ("io.kubernetes.pod.namespace", "prod"),
            ("io.cilium.k8s.namespace.labels.team", "a"),
            ("io.cilium.k8s.policy.serviceaccount", "db-sa"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(live, BTreeSet::from([want]));
    }

    #[tokio::test]
    async fn sweep_deletes_the_unused_identity_with_its_uid_as_precondition() {
        let (client, mut api) = mock_client();
        let script = tokio::spawn(async move {
            api.expect(
                Method::GET,
                "/apis/sextant.io/v1alpha1/sextantidentities?&limit=500",
                200,
                json!({"apiVersion": "sextant.io/v1alpha1", "kind": "SextantIdentityList", "metadata": {},
                  "items": [
                    {"apiVersion": "sextant.io/v1alpha1", "kind": "SextantIdentity",
                     "metadata": {"name": "300", "uid": "u300", "creationTimestamp": "2026-11-01T00:00:00Z"},
                     "spec": {"labels": {"app": "db", "io.kubernetes.pod.namespace": "prod"}}},
                    {"apiVersion": "sextant.io/v1alpha1", "kind": "SextantIdentity",
                     "metadata": {"name": "301", "uid": "u301", "creationTimestamp": "2026-11-01T00:00:00Z"},
                     "spec": {"labels": {"app": "gone", "io.kubernetes.pod.namespace": "prod"}}}
                  ]}),
            )
            .await;
            api.expect(
                Method::GET,
                "/api/v1/pods?&limit=500",
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
                    serde_json::to_value(pod("db", None, false)).expect("pod")
                ]}),
            )
            .await;
            api.expect(
                Method::GET,
                "/api/v1/namespaces?&limit=500",
                200,
                json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {}, "items": []}),
            )
            .await;
            let seen = api
                .expect(
                    Method::DELETE,
                    "/apis/sextant.io/v1alpha1/sextantidentities/301?",
                    200,
                    json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
                .await;
            assert_eq!(seen.body["preconditions"]["uid"], "u301");
            api.expect_no_more().await;
        });
        let n = sweep(&client, Duration::from_secs(600), t("2026-11-26T12:00:00Z"))
            .await
            .expect("sweep");
        assert_eq!(n, 1);
        drop(client);
        finish(script).await;
    }
}
