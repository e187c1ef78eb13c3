use std::sync::{Arc, RwLock};

use kube::runtime::watcher::Event;

use super::*;
use crate::{
    fixtures::{mk_fixed_ip, mk_node},
    index::Index,
};

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
        Event::InitApply(mk_node("a", "z1").build()),
        Event::InitApply(mk_node("b", "z1").build()),
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
        Event::InitApply(mk_node("a", "z1").build()),
        Event::InitDone,
    ] {
        if let Some(c) = nodes.step(e) {
            apply_node_change(&index, c);
        }
    }
    apply_node_change(&index, Change::Delete(mk_node("a", "z1").build()));
    assert_eq!(index.read().map(|i| i.node_count()).ok(), Some(0));
}
