//! Fixed IPs on the agent's side: the kube half of the decision in
//! [`sextant_agent_core::fixed_ip`]. [`lookup`] is its one kube call
//! (`Decision::Lookup`: GET fixedips/ns/name). [`FixedIpCache`]
//! (a cluster-wide FixedIP watch) answers first, so an ADD whose answer is
//! known neither waits on the API server nor fails when it is unreachable.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};
use sextant_crds::FixedIP;

use sextant_agent_core::fixed_ip::Lookup;

use crate::error::{Error, Result};

/// FixedIPs as a cluster-wide watch last saw them.
#[derive(Clone)]
pub struct FixedIpCache {
    store: reflector::Store<FixedIP>,
    synced: Arc<AtomicBool>,
}

impl FixedIpCache {
    /// Starts the watch; the cache answers misses only once its first list is in.
    pub fn start(client: Client) -> Self {
        let (store, writer) = reflector::store::<FixedIP>();
        let synced = Arc::new(AtomicBool::new(false));
        tokio::spawn(
            watcher(Api::<FixedIP>::all(client), watcher::Config::default())
                .backoff(crate::watch::WatchBackoff::new())
                .reflect(writer)
                .for_each(|_| async {}),
        );
        let (s, flag) = (store.clone(), synced.clone());
        tokio::spawn(async move {
            if s.wait_until_ready().await.is_ok() {
                flag.store(true, Ordering::Relaxed);
            }
        });
        FixedIpCache { store, synced }
    }

    /// A cache over `store`, synced or not (tests).
    pub fn from_store(store: reflector::Store<FixedIP>, synced: bool) -> Self {
        FixedIpCache {
            store,
            synced: Arc::new(AtomicBool::new(synced)),
        }
    }

    fn get(&self, namespace: &str, name: &str) -> Option<Arc<FixedIP>> {
        self.store.get(&ObjectRef::new(name).within(namespace))
    }

    fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }
}

fn found(fip: &FixedIP, namespace: &str, name: &str) -> Result<Lookup> {
    let ip = fip
        .spec
        .ip
        .parse()
        .map_err(|source| Error::FixedIpInvalid {
            pod: format!("{namespace}/{name}"),
            ip: fip.spec.ip.clone(),
            source,
        })?;
    Ok(Lookup::Found(ip))
}

/// Whether a pod has a `FixedIP`: the cache when it has the object; else the
/// API server (a FixedIP may be newer than the watch has delivered); and
/// when the API server cannot be reached but the cache has listed once, the
/// cache's "none": the pod is an ordinary one. An API server that answers
/// with an error is an error (kubelet retries the ADD).
pub async fn lookup_cached(
    client: &Client,
    cache: Option<&FixedIpCache>,
    namespace: &str,
    name: &str,
) -> Result<Lookup> {
    if let Some(fip) = cache.and_then(|c| c.get(namespace, name)) {
        return found(&fip, namespace, name);
    }
    let synced = cache.is_some_and(FixedIpCache::synced);
    match lookup(client, namespace, name).await {
        // Unreachable or hung: a synced watch knowing no FixedIP for the pod
        // is the answer (a FixedIP made since is at most a watch delay old).
        Err(e @ (Error::Kube { .. } | Error::ApiDeadline { .. }))
            if synced
                && !matches!(&e, Error::Kube { source, .. } if matches!(**source, kube::Error::Api(_))) =>
        {
            tracing::warn!(
                pod = %format!("{namespace}/{name}"),
                error = %e,
                "API server unreachable; the FixedIP watch knows none for this pod: ordinary pod"
            );
            Ok(Lookup::NotFound)
        }
        r => r,
    }
}

/// Reads the `FixedIP` named after pod `namespace/name`.
pub async fn lookup(client: &Client, namespace: &str, name: &str) -> Result<Lookup> {
    let api: Api<FixedIP> = Api::namespaced(client.clone(), namespace);
    let answer = Error::kube_call(
        || format!("reading FixedIP {namespace}/{name}"),
        api.get_opt(name),
    )
    .await?;
    match answer {
        Some(fip) => found(&fip, namespace, name),
        None => Ok(Lookup::NotFound),
    }
}

#[cfg(test)]
mod cache_tests {
    use http::{Request, Response};
    use kube::client::Body;

    use super::*;

    fn cache_with(objects: &[(&str, &str, &str)], synced: bool) -> FixedIpCache {
        let (store, mut writer) = reflector::store::<FixedIP>();
        for (ns, name, ip) in objects {
            let f: FixedIP = serde_json::from_value(serde_json::json!({
                "apiVersion": "sextant.io/v1alpha1", "kind": "FixedIP",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"ip": ip, "statefulSet": "web", "ordinal": 0},
            }))
            .expect("fixed ip");
            writer.apply_watcher_event(&watcher::Event::Apply(f));
        }
        FixedIpCache::from_store(store, synced)
    }

    /// A client whose API server is gone: every request fails in transport.
    fn unreachable_client() -> Client {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        drop(handle);
        Client::new(svc, "default")
    }

    #[tokio::test]
    async fn a_cached_fixed_ip_is_answered_without_the_api_server() {
        let cache = cache_with(&[("db", "web-0", "10.0.0.9")], true);
        let got = lookup_cached(&unreachable_client(), Some(&cache), "db", "web-0").await;
        assert_eq!(
            got.expect("cached"),
            Lookup::Found(std::net::Ipv4Addr::new(10, 0, 0, 9))
        );
    }

    #[tokio::test]
    async fn api_down_with_a_synced_cache_makes_an_unknown_pod_an_ordinary_one() {
        let cache = cache_with(&[("db", "web-0", "10.0.0.9")], true);
        let got = lookup_cached(&unreachable_client(), Some(&cache), "default", "nginx-1").await;
        assert_eq!(got.expect("ordinary"), Lookup::NotFound);
    }

    #[tokio::test]
    async fn api_down_before_the_cache_listed_is_an_error_kubelet_retries() {
        let cache = cache_with(&[], false);
        let got = lookup_cached(&unreachable_client(), Some(&cache), "default", "nginx-1").await;
        assert!(matches!(got, Err(Error::Kube { .. })), "{got:?}");
        let got = lookup_cached(&unreachable_client(), None, "default", "nginx-1").await;
        assert!(matches!(got, Err(Error::Kube { .. })), "no cache: {got:?}");
    }

    /// A client whose API server takes every request and never answers.
    fn hung_client() -> (Client, tokio::task::JoinHandle<()>) {
        let (svc, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let held = tokio::spawn(async move {
            let mut pending = Vec::new();
            while let Some(p) = handle.next_request().await {
                pending.push(p);
            }
        });
        (Client::new(svc, "default"), held)
    }

    /// CNI ADD's lookup against an API server that never answers: with a
    /// synced watch the pod is an ordinary one once the deadline passes (it
    /// failed the ADD before, though the watch knew the answer); without
    /// one the ADD fails at the deadline for kubelet to retry, never later.
    #[tokio::test(start_paused = true)]
    async fn a_lookup_to_an_api_server_that_never_answers_ends_at_the_deadline() {
        let (client, held) = hung_client();
        let cache = cache_with(&[("db", "web-0", "10.0.0.9")], true);
        let started = tokio::time::Instant::now();
        let got = lookup_cached(&client, Some(&cache), "default", "nginx-1").await;
        assert_eq!(got.expect("ordinary"), Lookup::NotFound);
        assert_eq!(started.elapsed(), crate::error::API_DEADLINE);

        let started = tokio::time::Instant::now();
        let got = lookup_cached(&client, None, "default", "nginx-1").await;
        assert!(matches!(got, Err(Error::ApiDeadline { .. })), "{got:?}");
        assert_eq!(started.elapsed(), crate::error::API_DEADLINE);
        held.abort();
    }
}
