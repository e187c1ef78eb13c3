use sextant_crds::testing::{mk_fixed_ip, mk_node_network};
use std::sync::{Arc, RwLock};

use kube::runtime::watcher::Event;

use super::*;
use crate::index::Index;

#[test]
fn a_relist_is_buffered_and_replaces_the_kind_at_once() {
    let mut relist = Relist::default();
    assert_eq!(relist.step(Event::Init), None);
    assert_eq!(relist.step(Event::InitApply(1)), None);
    assert_eq!(relist.step(Event::InitApply(2)), None);
    assert_eq!(
        relist.step(Event::InitDone),
        Some(Change::Reset(vec![1, 2]))
    );
    assert_eq!(relist.step(Event::Apply(3)), Some(Change::Apply(3)));
    assert_eq!(relist.step(Event::Delete(3)), Some(Change::Delete(3)));
    assert_eq!(relist.step(Event::InitDone), Some(Change::Reset(vec![])));
}

#[test]
fn watch_events_keep_the_index_current_and_a_relist_drops_vanished_objects() {
    let index: SharedIndex = Arc::new(RwLock::new(Index::default()));
    let mut nodes = Relist::default();
    let mut fixed = Relist::default();
    let events = [
        Event::Init,
        Event::InitApply(mk_node_network("a", "z1").build()),
        Event::InitApply(mk_node_network("b", "z1").build()),
    ];
    for e in events {
        if let Some(c) = nodes.step(e) {
            apply_node_change(&index, c);
        }
    }
    // Pages alone change nothing: the filter never sees a half list.
    assert_eq!(index.read().map(|i| i.node_count()).ok(), Some(0));
    if let Some(c) = nodes.step(Event::InitDone) {
        apply_node_change(&index, c);
    }
    for e in [
        Event::Init,
        Event::InitApply(mk_fixed_ip("db", "web-0", "10.0.0.1", "z1", "s")),
        Event::InitDone,
        Event::Apply(mk_fixed_ip("db", "web-1", "10.0.0.2", "z1", "s")),
        Event::Delete(mk_fixed_ip("db", "web-0", "10.0.0.1", "z1", "s")),
    ] {
        if let Some(c) = fixed.step(e) {
            apply_fixed_ip_change(&index, c);
        }
    }
    {
        let i = index.read().expect("not poisoned");
        assert_eq!(i.check_synced(), Ok(()));
        assert_eq!((i.node_count(), i.fixed_ip_count()), (2, 1));
        assert!(i.fixed_ip("db", "web-1").is_some());
    }
    // The watch restarts; node b was deleted meanwhile.
    for e in [
        Event::Init,
        Event::InitApply(mk_node_network("a", "z1").build()),
        Event::InitDone,
    ] {
        if let Some(c) = nodes.step(e) {
            apply_node_change(&index, c);
        }
    }
    apply_node_change(&index, Change::Delete(mk_node_network("a", "z1").build()));
    assert_eq!(index.read().map(|i| i.node_count()).ok(), Some(0));
}

mod wiring {
    use std::time::Duration;

    use http::{Method, Request, Response};
    use kube::{Client, client::Body};
    use serde_json::{Value, json};
    use tower_test::mock;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(5);

    fn list(kind: &str, items: Vec<Value>) -> Vec<u8> {
        let body = json!({
            "apiVersion": "sextant.io/v1alpha1",
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": "100"},
            "items": items,
        });
        serde_json::to_vec(&body).expect("list JSON")
    }

    fn with_rv<T: serde::Serialize>(obj: &T, rv: &str) -> Value {
        let mut v = serde_json::to_value(obj).expect("object JSON");
        v["metadata"]["resourceVersion"] = json!(rv);
        v
    }

    /// An API server stand-in: answers the list of each kind, sends one
    /// ADDED event on the first NodeNetwork watch, and holds every other
    /// watch open.
    async fn api_server(mut handle: mock::Handle<Request<Body>, Response<Body>>) -> Vec<String> {
        let mut seen = Vec::new();
        let mut held = Vec::new();
        let mut node_watches = 0;
        while let Some((req, send)) = handle.next_request().await {
            assert_eq!(req.method(), Method::GET, "the extender only reads");
            let path = req.uri().path().to_owned();
            let watch = req.uri().query().is_some_and(|q| q.contains("watch=true"));
            seen.push(format!("{path} watch={watch}"));
            let body = match (path.as_str(), watch) {
                ("/apis/sextant.io/v1alpha1/nodenetworks", false) => list(
                    "NodeNetwork",
                    vec![
                        with_rv(&mk_node_network("a", "z1").build(), "1"),
                        with_rv(&mk_node_network("b", "z1").build(), "2"),
                    ],
                ),
                ("/apis/sextant.io/v1alpha1/fixedips", false) => list(
                    "FixedIP",
                    vec![with_rv(
                        &mk_fixed_ip("db", "web-0", "10.0.0.1", "z1", "s"),
                        "3",
                    )],
                ),
                ("/apis/sextant.io/v1alpha1/nodenetworks", true) if node_watches == 0 => {
                    node_watches += 1;
                    let event = json!({"type": "ADDED", "object": with_rv(&mk_node_network("c", "z2").build(), "101")});
                    let mut line = serde_json::to_vec(&event).expect("event JSON");
                    line.push(b'\n');
                    line
                }
                (_, true) => {
                    held.push(send);
                    continue;
                }
                (other, _) => panic!("unexpected request {other}"),
            };
            let response = Response::builder()
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("response");
            send.send_response(response);
        }
        seen
    }

    #[tokio::test]
    async fn the_watches_list_both_kinds_into_the_index_then_follow_events() {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let index: SharedIndex = Arc::new(RwLock::new(Index::default()));
        let metrics = Metrics::default();
        let server = tokio::spawn(api_server(handle));
        let watches = tokio::spawn(run(client, index.clone(), metrics.clone()));

        let want =
            |i: &Index| i.check_synced().is_ok() && i.node_count() == 3 && i.fixed_ip_count() == 1;
        let reached = tokio::time::timeout(PATIENCE, async {
            loop {
                if index.read().is_ok_and(|i| want(&i)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        watches.abort();
        let _ = watches.await;
        let seen = tokio::time::timeout(PATIENCE, server)
            .await
            .expect("the mock server ends once the client is gone")
            .expect("the mock server did not panic");
        assert!(reached.is_ok(), "index never filled; requests: {seen:?}");
        let i = index.read().expect("not poisoned");
        assert_eq!(i.node("c").and_then(|e| e.zone.as_deref()), Some("z2"));
        assert!(i.fixed_ip("db", "web-0").is_some());
        for kind in ["nodenetworks", "fixedips"] {
            let path = format!("/apis/sextant.io/v1alpha1/{kind}");
            assert!(seen.contains(&format!("{path} watch=false")), "{seen:?}");
            assert!(seen.contains(&format!("{path} watch=true")), "{seen:?}");
        }
    }
}
