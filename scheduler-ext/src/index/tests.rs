use super::*;
use sextant_crds::testing::{mk_fixed_ip, mk_node_network, mk_static_node_network};

#[test]
fn a_node_entry_derives_pod_enis_free_slots_held_addresses_and_usage() {
    let nn = mk_node_network("a", "z1")
        .limits(4, 15, 42)
        .eni("eni-1", "subnet-a", 1, &["10.1.0.5", "10.1.0.6"])
        .eni_with("eni-x", "subnet-a", 3, 2)
        .excluded()
        .fixed("10.1.9.9", "db/web-0")
        .usage(5, 2)
        .build();
    let e = NodeEntry::from_node_network(&nn);
    assert_eq!(e.zone.as_deref(), Some("z1"));
    assert_eq!(
        e.pod_enis,
        [PodEni {
            id: "eni-1".into(),
            subnet_id: "subnet-a".into(),
            addresses: 2
        }]
    );
    // Slots 1..4: 1 and 3 taken (excluded ENIs still take their slot).
    assert_eq!(e.free_eni_slots, 1);
    for ip in ["10.1.0.5", "10.1.0.6", "10.1.9.9"] {
        assert!(e.held.contains(&ip.parse().expect("ip")), "{ip}");
    }
    assert_eq!((e.used, e.pending, e.capacity), (5, 2, 42));
    assert_eq!(e.headroom(), 35);
    assert!(e.eni_room_in("subnet-a"));
    assert!(!e.eni_room_in("subnet-b"));
}

#[test]
fn a_node_network_without_status_reads_as_unknown_limits() {
    let e = NodeEntry::from_node_network(&mk_node_network("a", "z1").no_status().build());
    assert_eq!((e.capacity, e.max_enis, e.free_eni_slots), (0, 0, 0));
    assert!(!e.is_full());
}

#[test]
fn cidrs_parse_and_contain() {
    let e = NodeEntry::from_node_network(&mk_static_node_network("r", "10.1.7.0/24", 254).build());
    assert!(e.pod_cidrs[0].contains("10.1.7.255".parse().expect("ip")));
    assert!(!e.pod_cidrs[0].contains("10.1.8.0".parse().expect("ip")));
    assert!(Cidr::parse("0.0.0.0/0").is_some_and(|c| c.contains(Ipv4Addr::BROADCAST)));
    assert_eq!(Cidr::parse("10.1.7.0/33"), None);
    assert_eq!(Cidr::parse("nonsense"), None);
}

#[test]
fn apply_delete_and_reset_keep_counts_right() {
    let mut index = Index::default();
    assert_eq!(index.check_synced(), Err("NodeNetworks and FixedIPs"));
    index.apply_node(&mk_node_network("a", "z1").build());
    index.apply_node(&mk_node_network("a", "z2").build());
    assert_eq!(index.node_count(), 1);
    assert_eq!(index.node("a").and_then(|e| e.zone.as_deref()), Some("z2"));
    index.apply_fixed_ip(&mk_fixed_ip("db", "web-0", "10.0.0.1", "z1", "s"));
    index.apply_fixed_ip(&mk_fixed_ip("db", "web-0", "10.0.0.2", "z1", "s"));
    index.apply_fixed_ip(&mk_fixed_ip("db", "web-1", "10.0.0.3", "z1", "s"));
    assert_eq!(index.fixed_ip_count(), 2);
    assert_eq!(
        index.fixed_ip("db", "web-0").map(|f| f.ip.as_str()),
        Some("10.0.0.2")
    );
    index.delete_fixed_ip("db", "web-0");
    index.delete_fixed_ip("db", "web-0");
    index.delete_fixed_ip("nope", "web-1");
    assert_eq!(index.fixed_ip_count(), 1);
    index.reset_nodes(&[mk_node_network("b", "z1").build()]);
    assert!(index.node("a").is_none());
    assert_eq!(index.check_synced(), Err("FixedIPs"));
    index.reset_fixed_ips(&[]);
    assert_eq!(index.fixed_ip_count(), 0);
    assert_eq!(index.fixed_ips().count(), 0);
    assert_eq!(index.check_synced(), Ok(()));
    index.delete_node("b");
    assert_eq!(index.node_count(), 0);
}
