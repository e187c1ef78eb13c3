//! ClusterIP services for the datapath: the watch loop over Services and
//! EndpointSlices that applies `sextant_agent_core::services`' pure
//! translation ([`desired`]) and diff ([`diff`]) to the datapath.
//!
//! Events are drained and coalesced in batches ([`super::batch`]); each
//! batch recomputes once. Only writes the datapath took count as
//! installed: a failed one is retried with backoff (and by every batch
//! after it) until it lands.

use std::{collections::BTreeMap, sync::Arc};

use futures::Stream;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, Client, runtime::watcher};
use sextant_agent_api::{Backend, Frontend, ServiceSpec};
use tracing::{debug, warn};

use sextant_agent_core::services::{desired, diff};

use super::batch::{self, Objects};
use crate::{agent::Agent, error::Result, metrics::Metrics};

/// The `watch` label of this loop's metrics.
const WATCH: &str = "services";

/// One event of the loop's watches.
#[expect(
    clippy::large_enum_variant,
    reason = "each event moves once, from its stream into its kind's pending map; a box would cost an allocation per event"
)]
pub(crate) enum ServiceEvent {
    /// A Service changed.
    Service(watcher::Event<Service>),
    /// An EndpointSlice changed.
    Slice(watcher::Event<EndpointSlice>),
}

/// Where the loop writes services: the agent's datapath (a test's recorder).
pub(crate) trait ServiceWriter {
    /// Sets (or, with no backends, removes) one frontend.
    fn write(&self, spec: &ServiceSpec) -> Result<()>;
}

impl ServiceWriter for Agent {
    fn write(&self, spec: &ServiceSpec) -> Result<()> {
        self.set_service(spec)
    }
}

/// Watches Services and EndpointSlices cluster-wide and keeps the datapath's
/// service maps equal to [`desired`].
pub async fn watch(agent: Arc<Agent>, client: Client) {
    let events = futures::stream::select(
        batch::events(Api::<Service>::all(client.clone()), ServiceEvent::Service),
        batch::events(Api::<EndpointSlice>::all(client), ServiceEvent::Slice),
    );
    run(agent.as_ref(), &agent.metrics, events).await;
}

/// The loop: drain a batch, apply it, write the difference between what
/// the datapath holds and [`desired`]; until `events` ends.
pub(crate) async fn run<W: ServiceWriter>(
    writer: &W,
    metrics: &Metrics,
    events: impl Stream<Item = ServiceEvent>,
) {
    let mut events = std::pin::pin!(events);
    let mut svcs = Objects::<Service>::default();
    let mut slices = Objects::<EndpointSlice>::default();
    // What the datapath holds: only writes that succeeded.
    let mut installed: BTreeMap<Frontend, Vec<Backend>> = BTreeMap::new();
    let mut retries = batch::write_retries();
    let mut retry_at = None;
    loop {
        let (mut coalesced, mut high) = (0usize, 0usize);
        let d = batch::drain(&mut events, retry_at, |e| {
            let folded = match e {
                ServiceEvent::Service(e) => svcs.pending.push(e),
                ServiceEvent::Slice(e) => slices.pending.push(e),
            };
            coalesced += usize::from(folded);
            high = high.max(svcs.pending.len() + slices.pending.len());
        })
        .await;
        let ready = svcs.pending.is_ready() || slices.pending.is_ready();
        let applied = if ready {
            svcs.apply() + slices.apply()
        } else {
            0
        };
        metrics.watch_batch(WATCH, d.events, coalesced, applied, high);
        if ready || d.timed_out {
            if d.timed_out {
                metrics.write_retry(WATCH);
            }
            let want = desired(&svcs.values(), &slices.values());
            let failed = write(writer, &mut installed, &want);
            if failed == 0 {
                retries.reset();
                retry_at = None;
            } else {
                let wait = retries.next().unwrap_or(std::time::Duration::from_secs(30));
                debug!(
                    failed,
                    wait_ms = wait.as_millis() as u64,
                    "service writes to retry"
                );
                retry_at = Some(tokio::time::Instant::now() + wait);
            }
        }
        if d.ended {
            return;
        }
    }
}

/// Writes what `installed` lacks of `want`; records only what the writer
/// took. Returns the writes that failed.
fn write<W: ServiceWriter>(
    writer: &W,
    installed: &mut BTreeMap<Frontend, Vec<Backend>>,
    want: &BTreeMap<Frontend, Vec<Backend>>,
) -> usize {
    let mut failed = 0;
    for spec in diff(installed, want) {
        match writer.write(&spec) {
            Ok(()) if spec.backends.is_empty() && !want.contains_key(&spec.frontend) => {
                installed.remove(&spec.frontend);
            }
            Ok(()) => {
                installed.insert(spec.frontend, spec.backends);
            }
            Err(e) => {
                failed += 1;
                warn!(error = %sextant_kit::ErrorChain(&e), vip = %spec.frontend.vip, port = spec.frontend.port, "programming service failed; will retry");
            }
        }
    }
    failed
}

#[cfg(test)]
mod kube_tests {
    use std::time::Duration;

    use http::{Request, Response};
    use kube::client::Body;
    use serde_json::json;

    use sextant_agent_core::testing::{mk_slice, mk_svc};

    use super::*;
    use crate::agent::Config;

    struct Pins(std::path::PathBuf);
    impl Drop for Pins {
        fn drop(&mut self) {
            let _ = crate::datapath::remove_pins(&self.0);
        }
    }

    /// Services and EndpointSlices listed from the API server end up in the
    /// datapath's service map.
    #[tokio::test]
    async fn watched_cluster_ip_is_programmed_into_the_datapath() {
        let test = format!(
            "{}: {}",
            file!(),
            sextant_testkit::current_test("watched_cluster_ip_is_programmed_into_the_datapath")
        );
        if !sextant_testkit::require(
            sextant_testkit::Tier::Kernel,
            sextant_testkit::root_unavailable(),
            &test,
        ) {
            return;
        }
        let root = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/sextant-test-svcwatch-{}",
            std::process::id()
        ));
        let _pins = Pins(root.clone());
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(Config {
            state_dir: dir.path().to_path_buf(),
            bpf_root: Some(root),
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let svc = mk_svc("web", "10.96.5.5", 80);
        let slice = mk_slice("web", &[("10.0.0.9", true), ("10.0.0.10", true)], 8080);

        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(mock, "default");
        let watch = tokio::spawn(super::watch(agent.clone(), client));
        let mut held = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while agent.health().datapath.services == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "service never programmed"
            );
            let Ok(Some((req, send))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            else {
                continue;
            };
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or_default().to_string();
            if query.contains("watch=true") {
                held.push(send);
                continue;
            }
            let body = match path.as_str() {
                "/api/v1/services" => json!({"apiVersion": "v1", "kind": "ServiceList",
                    "metadata": {"resourceVersion": "1"}, "items": [svc.as_ref()]}),
                "/apis/discovery.k8s.io/v1/endpointslices" => {
                    json!({"apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"}, "items": [slice.as_ref()]})
                }
                other => panic!("unexpected request {other}?{query}"),
            };
            send.send_response(
                Response::builder()
                    .body(Body::from(body.to_string().into_bytes()))
                    .expect("response"),
            );
        }
        assert_eq!(agent.health().datapath.services, 1);
        watch.abort();
    }
}

#[cfg(test)]
mod batch_tests {
    use std::{
        sync::Mutex,
        time::{Duration, Instant},
    };

    use sextant_agent_core::testing::{mk_slice, mk_svc};

    use super::*;
    use crate::error::Error;

    /// A datapath stand-in: what was written, and frontends whose next
    /// writes fail.
    #[derive(Default)]
    struct Recorder {
        map: Mutex<BTreeMap<Frontend, Vec<Backend>>>,
        writes: Mutex<usize>,
        failing: Mutex<BTreeMap<Frontend, usize>>,
    }

    impl ServiceWriter for Recorder {
        fn write(&self, spec: &ServiceSpec) -> Result<()> {
            *self.writes.lock().expect("lock") += 1;
            if let Some(left) = self.failing.lock().expect("lock").get_mut(&spec.frontend)
                && *left > 0
            {
                *left -= 1;
                return Err(Error::NoDatapath);
            }
            let mut map = self.map.lock().expect("lock");
            if spec.backends.is_empty() {
                map.remove(&spec.frontend);
            } else {
                map.insert(spec.frontend, spec.backends.clone());
            }
            Ok(())
        }
    }

    fn svc(i: u32) -> Service {
        let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + i);
        (*mk_svc(&format!("s{i}"), &ip.to_string(), 80)).clone()
    }

    fn slice(i: u32, version: u32) -> EndpointSlice {
        let ep = format!("10.1.{}.{}", version, i % 250 + 1);
        (*mk_slice(&format!("s{i}"), &[(&ep, true)], 8080)).clone()
    }

    fn gauge(metrics: &Metrics, name: &str) -> f64 {
        let text = sextant_kit::admin::metrics_text(&metrics.registry()).expect("metrics");
        text.lines()
            .find(|l| l.starts_with(name) && l.contains("watch=\"services\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    fn wait_for(what: &str, within: Duration, done: impl Fn() -> bool) -> Duration {
        let start = Instant::now();
        while !done() {
            assert!(start.elapsed() < within, "{what}: not within {within:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        start.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ten_thousand_events_at_once_converge_in_one_pass_with_pending_bounded_by_objects() {
        // 1,000 Services, each created twice over and its slice changed 8
        // times: 10,000 events about 2,000 objects, all delivered at once.
        let n = 1_000u32;
        let (tx, rx) = futures::channel::mpsc::unbounded();
        for i in 0..n {
            tx.unbounded_send(ServiceEvent::Service(watcher::Event::Apply(svc(i))))
                .expect("send");
            tx.unbounded_send(ServiceEvent::Service(watcher::Event::Apply(svc(i))))
                .expect("send");
            for v in 0..8 {
                tx.unbounded_send(ServiceEvent::Slice(watcher::Event::Apply(slice(i, v))))
                    .expect("send");
            }
        }
        let want = desired(
            &(0..n).map(|i| Arc::new(svc(i))).collect::<Vec<_>>(),
            &(0..n).map(|i| Arc::new(slice(i, 7))).collect::<Vec<_>>(),
        );
        assert_eq!(want.len(), n as usize);
        let rec = Arc::new(Recorder::default());
        let metrics = Metrics::default();
        let task = {
            let (rec, metrics) = (rec.clone(), metrics.clone());
            tokio::spawn(async move { run(rec.as_ref(), &metrics, rx).await })
        };
        let took = tokio::task::block_in_place(|| {
            wait_for(
                "datapath equal to the last events",
                Duration::from_secs(10),
                || *rec.map.lock().expect("lock") == want,
            )
        });
        let writes = *rec.writes.lock().expect("lock");
        let high = gauge(&metrics, "sextant_agent_watch_pending_high_water");
        let coalesced = gauge(&metrics, "sextant_agent_watch_events_coalesced_total");
        println!(
            "10,000 service events: converged in {took:?}, {writes} frontend writes, pending high-water {high}, {coalesced} coalesced"
        );
        assert!(high <= f64::from(2 * n), "pending {high} > 2,000 objects");
        assert!(high > 0.0);
        assert_eq!(
            gauge(&metrics, "sextant_agent_watch_events_total"),
            10_000.0
        );
        assert!(
            writes < 10_000 / 4,
            "{writes} writes: events were not coalesced"
        );
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends with its stream")
            .expect("loop");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_service_write_is_retried_until_it_lands() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let rec = Arc::new(Recorder::default());
        let want = desired(&[Arc::new(svc(1))], &[Arc::new(slice(1, 0))]);
        let fe = *want.keys().next().expect("frontend");
        rec.failing.lock().expect("lock").insert(fe, 3);
        let metrics = Metrics::default();
        let task = {
            let (rec, metrics) = (rec.clone(), metrics.clone());
            tokio::spawn(async move { run(rec.as_ref(), &metrics, rx).await })
        };
        tx.unbounded_send(ServiceEvent::Service(watcher::Event::Apply(svc(1))))
            .expect("send");
        tx.unbounded_send(ServiceEvent::Slice(watcher::Event::Apply(slice(1, 0))))
            .expect("send");
        // No further event comes: only the retry can install it (before,
        // the failed write was recorded as installed and never tried again).
        let took = tokio::task::block_in_place(|| {
            wait_for(
                "the failed frontend installed",
                Duration::from_secs(20),
                || *rec.map.lock().expect("lock") == want,
            )
        });
        println!("installed after 3 failed writes in {took:?}");
        assert!(gauge(&metrics, "sextant_agent_datapath_write_retries_total") >= 3.0);
        assert_eq!(*rec.writes.lock().expect("lock"), 4);
        drop(tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
}
