//! Fixed IPs on the agent's side. The FixedIP controller moves a
//! StatefulSet pod's address to an ENI of the node the pod runs on and lists
//! it in that node's NodeNetwork `status.fixedIps` (address -> `ns/name`).
//! The agent hands such an address to its pod only, and a CNI ADD for a pod
//! that has a `FixedIP` waits, bounded, until the address shows up there.
//!
//! ```text
//!  CNI ADD ns/name ─▶ decide(pod, fixedIps, lookup, now, deadline)
//!                       ├─ named in fixedIps          ─▶ Fixed(ip)   allocate exactly ip
//!                       ├─ not yet looked up          ─▶ Lookup      GET fixedips/ns/name
//!                       ├─ FixedIP 404                ─▶ Any         any free IP (never a fixed one)
//!                       ├─ FixedIP found, before end  ─▶ Wait(ip)    until the NodeNetwork changes
//!                       └─ FixedIP found, deadline    ─▶ TimedOut    CNI error, kubelet retries
//! ```
//!
//! [`decide`] is pure; [`lookup`] is the one kube call. [`FixedIpCache`]
//! (a cluster-wide FixedIP watch) answers first, so an ADD whose answer is
//! known neither waits on the API server nor fails when it is unreachable.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, reflector::ObjectRef, watcher},
};
use sextant_crds::FixedIP;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// Default bound on how long a CNI ADD waits for its fixed IP to reach the node.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Parses NodeNetwork `status.fixedIps` into address -> `namespace/name`;
/// keys that are not IPv4 addresses cannot be handed out and are skipped.
pub fn parse_fixed_ips(raw: &BTreeMap<String, String>) -> BTreeMap<Ipv4Addr, String> {
    raw.iter()
        .filter_map(|(ip, pod)| Some((ip.parse().ok()?, pod.clone())))
        .collect()
}

/// What the API server said about the pod's `FixedIP`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No `FixedIP` of that name (or no API to ask): an ordinary pod.
    NotFound,
    /// The pod's fixed address (`spec.ip`).
    Found(Ipv4Addr),
}

/// What a CNI ADD does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An ordinary pod: any free IP of the pool.
    Any,
    /// The pod's fixed IP is on this node: hand out exactly this address.
    Fixed(Ipv4Addr),
    /// Not named in `fixedIps`: ask whether the pod has a `FixedIP`.
    Lookup,
    /// The pod's fixed IP is not on this node yet: wait for the NodeNetwork.
    Wait(Ipv4Addr),
    /// The deadline passed and the address is still not here.
    TimedOut(Ipv4Addr),
}

/// Decides the ADD of pod `pod` (`namespace/name`; empty when the runtime
/// did not say) from this node's `fixed` addresses, the `FixedIP` lookup
/// made so far, and the time against the ADD's deadline.
pub fn decide(
    pod: &str,
    fixed: &BTreeMap<Ipv4Addr, String>,
    lookup: Option<Lookup>,
    now: Instant,
    deadline: Instant,
) -> Decision {
    if pod.is_empty() || pod.starts_with('/') || pod.ends_with('/') {
        // Without a pod name no FixedIP can be named after it.
        return Decision::Any;
    }
    if let Some((ip, _)) = fixed.iter().find(|(_, owner)| owner.as_str() == pod) {
        return Decision::Fixed(*ip);
    }
    match lookup {
        None => Decision::Lookup,
        Some(Lookup::NotFound) => Decision::Any,
        Some(Lookup::Found(ip)) if now >= deadline => Decision::TimedOut(ip),
        Some(Lookup::Found(ip)) => Decision::Wait(ip),
    }
}

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
                .default_backoff()
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
    match lookup(client, namespace, name).await {
        Err(Error::Kube { source, .. })
            if !matches!(*source, kube::Error::Api(_))
                && cache.is_some_and(FixedIpCache::synced) =>
        {
            tracing::warn!(
                pod = %format!("{namespace}/{name}"),
                error = %source,
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
    let answer = api.get_opt(name).await.map_err(|source| Error::Kube {
        action: format!("reading FixedIP {namespace}/{name}"),
        source: Box::new(source),
    })?;
    match answer {
        Some(fip) => found(&fip, namespace, name),
        None => Ok(Lookup::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 0, 0, i)
    }

    fn mk_fixed(entries: &[(u8, &str)]) -> BTreeMap<Ipv4Addr, String> {
        entries
            .iter()
            .map(|(i, p)| (ip(*i), p.to_string()))
            .collect()
    }

    #[test]
    fn pod_named_in_fixed_ips_gets_exactly_its_address_without_a_lookup() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0"), (8, "db/web-1")]);
        assert_eq!(
            decide("db/web-1", &fixed, None, now, now),
            Decision::Fixed(ip(8)),
            "even past the deadline"
        );
    }

    #[test]
    fn pod_not_named_is_looked_up_first() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0")]);
        assert_eq!(
            decide("db/web-1", &fixed, None, now, now + DEFAULT_WAIT),
            Decision::Lookup
        );
    }

    #[test]
    fn pod_without_fixed_ip_takes_any_free_address() {
        let now = Instant::now();
        let fixed = mk_fixed(&[(7, "db/web-0")]);
        let d = decide(
            "db/other",
            &fixed,
            Some(Lookup::NotFound),
            now,
            now + DEFAULT_WAIT,
        );
        assert_eq!(d, Decision::Any);
        assert_eq!(
            decide("", &fixed, None, now, now),
            Decision::Any,
            "no pod name: nothing to look up"
        );
    }

    #[test]
    fn pod_whose_fixed_ip_is_elsewhere_waits_until_the_deadline() {
        let now = Instant::now();
        let deadline = now + DEFAULT_WAIT;
        // Listed here for another pod: not this pod's to take.
        let fixed = mk_fixed(&[(9, "db/web-2")]);
        let found = Some(Lookup::Found(ip(9)));
        assert_eq!(
            decide("db/web-0", &fixed, found, now, deadline),
            Decision::Wait(ip(9))
        );
        assert_eq!(
            decide(
                "db/web-0",
                &fixed,
                found,
                deadline - Duration::from_millis(1),
                deadline
            ),
            Decision::Wait(ip(9))
        );
        assert_eq!(
            decide("db/web-0", &fixed, found, deadline, deadline),
            Decision::TimedOut(ip(9))
        );
        let arrived = mk_fixed(&[(9, "db/web-0")]);
        assert_eq!(
            decide("db/web-0", &arrived, found, deadline, deadline),
            Decision::Fixed(ip(9)),
            "arrival wins over the deadline"
        );
    }

    #[test]
    fn status_keys_that_are_not_addresses_are_skipped() {
        let raw = [
            ("10.0.0.7".to_string(), "db/web-0".to_string()),
            ("fe80::1".to_string(), "db/web-1".to_string()),
        ]
        .into();
        assert_eq!(parse_fixed_ips(&raw), mk_fixed(&[(7, "db/web-0")]));
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
            Lookup::Found(Ipv4Addr::new(10, 0, 0, 9))
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
}
