//! BIRD 2 configuration from a [`Desired`]: pure, deterministic (the same
//! input gives the same bytes, so the speaker applies only on change).
//!
//! The node's prefixes are `blackhole` routes in a `protocol static`: they
//! exist only in BIRD's table, to be announced. No `protocol kernel` is
//! configured, so BIRD never writes the node's routing table; the agent's
//! per-pod /32 routes towards the veths do the forwarding, and being more
//! specific they win over any covering route. Blackhole rather than
//! unreachable so that, should the route ever reach a FIB, an address with
//! no pod is dropped quietly instead of drawing ICMP errors from the node.

use std::{fmt::Write, net::Ipv4Addr};

use crate::{Desired, Peer};

/// Name of the static protocol holding the node's prefixes.
pub const STATIC_PROTOCOL: &str = "sextant_static";
/// Name of the export filter every peer uses.
pub const EXPORT_FILTER: &str = "sextant_export";

/// Name of the device protocol. It must be the same in [`bootstrap`] and
/// [`render`]: BIRD 2.0.12 replacing one device protocol by another of a
/// different name on `configure` forgets every interface until the next
/// scan (60 s), and BGP sessions stay Idle meanwhile (seen in the lab).
pub const DEVICE_PROTOCOL: &str = "sextant_device";

/// The file BIRD starts with before the agent first configures it: the
/// router id and the device protocol, nothing announced, no peers.
pub fn bootstrap(router_id: Ipv4Addr) -> String {
    format!(
        "# Bootstrap written for sextant-bgp; the agent replaces it.\nrouter id {router_id};\n\nprotocol device {DEVICE_PROTOCOL} {{\n}}\n"
    )
}

/// The whole configuration file.
pub fn render(d: &Desired) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        out,
        "# Rendered by sextant-bgp from the NodeNetwork and the peers file."
    );
    let _ = writeln!(out, "# The agent rewrites it; edits are lost.");
    let _ = writeln!(out, "log stderr {{ warning, error, fatal, bug }};");
    let _ = writeln!(out, "router id {};", d.router_id);
    let _ = writeln!(out);
    let _ = writeln!(out, "protocol device {DEVICE_PROTOCOL} {{\n}}");
    if d.peers.iter().any(|p| p.bfd.is_some()) {
        let _ = writeln!(out, "\nprotocol bfd sextant_bfd {{\n}}");
    }
    let _ = writeln!(out, "\nprotocol static {STATIC_PROTOCOL} {{");
    let _ = writeln!(out, "  ipv4;");
    for p in &d.prefixes {
        let _ = writeln!(out, "  route {p} blackhole;");
    }
    let _ = writeln!(out, "}}");
    let _ = writeln!(out, "\nfilter {EXPORT_FILTER} {{");
    if d.prefixes.is_empty() {
        let _ = writeln!(out, "  reject;");
    } else {
        let set: Vec<String> = d.prefixes.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            out,
            "  if proto = \"{STATIC_PROTOCOL}\" && net ~ [ {} ] then accept;",
            set.join(", ")
        );
        let _ = writeln!(out, "  reject;");
    }
    let _ = writeln!(out, "}}");
    for peer in &d.peers {
        render_peer(&mut out, peer);
    }
    out
}

fn render_peer(out: &mut String, p: &Peer) {
    let _ = writeln!(out, "\nprotocol bgp {} {{", p.protocol_name());
    let _ = writeln!(out, "  local as {};", p.local_asn);
    let _ = writeln!(out, "  neighbor {} as {};", p.address, p.asn);
    if let Some(pw) = &p.password {
        let _ = writeln!(out, "  password \"{pw}\";");
    }
    match &p.bfd {
        Some(b) => {
            let _ = writeln!(
                out,
                "  bfd {{ min rx interval {} ms; min tx interval {} ms; multiplier {}; }};",
                b.min_rx_ms, b.min_tx_ms, b.multiplier
            );
        }
        None => {
            let _ = writeln!(out, "  bfd off;");
        }
    }
    match p.graceful_restart {
        Some(t) => {
            let _ = writeln!(out, "  graceful restart on;\n  graceful restart time {t};");
        }
        None => {
            let _ = writeln!(out, "  graceful restart off;");
        }
    }
    let _ = writeln!(out, "  ipv4 {{");
    let _ = writeln!(out, "    import none;");
    let _ = writeln!(out, "    export filter {EXPORT_FILTER};");
    let _ = writeln!(out, "    next hop self;");
    let _ = writeln!(out, "  }};");
    let _ = writeln!(out, "}}");
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{BfdSpec, GracefulRestartSpec, PeerSpec};

    fn spec(address: &str) -> PeerSpec {
        PeerSpec {
            address: address.into(),
            asn: 65000,
            local_asn: 65001,
            ..PeerSpec::default()
        }
    }

    fn two_peers() -> Desired {
        Desired::new(
            Ipv4Addr::new(10, 0, 0, 2),
            &["10.128.7.0/25".into()],
            &["10.200.0.5".into()],
            &[
                PeerSpec {
                    password: Some("s3cret".into()),
                    ..spec("10.0.0.1")
                },
                PeerSpec {
                    bfd: BfdSpec {
                        enabled: false,
                        ..BfdSpec::default()
                    },
                    graceful_restart: GracefulRestartSpec {
                        enabled: false,
                        restart_time_seconds: 0,
                    },
                    ..spec("10.0.1.1")
                },
            ],
        )
        .expect("valid")
    }

    #[test]
    fn renders_static_prefixes_export_filter_and_peers() {
        let text = render(&two_peers());
        for snippet in [
            "router id 10.0.0.2;\n",
            "protocol static sextant_static {\n  ipv4;\n  route 10.128.7.0/25 blackhole;\n  route 10.200.0.5/32 blackhole;\n}\n",
            "filter sextant_export {\n  if proto = \"sextant_static\" && net ~ [ 10.128.7.0/25, 10.200.0.5/32 ] then accept;\n  reject;\n}\n",
            "protocol bfd sextant_bfd {\n}\n",
            "protocol bgp peer_10_0_0_1 {\n  local as 65001;\n  neighbor 10.0.0.1 as 65000;\n  password \"s3cret\";\n  bfd { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };\n  graceful restart on;\n  graceful restart time 120;\n  ipv4 {\n    import none;\n    export filter sextant_export;\n    next hop self;\n  };\n}\n",
            "protocol bgp peer_10_0_1_1 {\n  local as 65001;\n  neighbor 10.0.1.1 as 65000;\n  bfd off;\n  graceful restart off;\n  ipv4 {\n    import none;\n",
        ] {
            assert!(text.contains(snippet), "missing {snippet:?} in\n{text}");
        }
        assert!(
            !text.contains("protocol kernel"),
            "BIRD must not write the FIB:\n{text}"
        );
        assert_eq!(render(&two_peers()), text, "deterministic");
    }

    #[test]
    fn bootstrap_keeps_the_device_protocol_name_of_the_rendered_config() {
        let boot = bootstrap(Ipv4Addr::new(10, 0, 0, 2));
        let device = "protocol device sextant_device {\n}\n";
        assert!(boot.contains(device), "{boot}");
        assert!(render(&two_peers()).contains(device));
        assert!(boot.contains("router id 10.0.0.2;\n"), "{boot}");
    }

    #[test]
    fn nothing_to_announce_exports_nothing_and_no_bfd_without_bfd_peers() {
        let mut d = two_peers();
        d.prefixes.clear();
        d.peers.retain(|p| p.bfd.is_none());
        let text = render(&d);
        assert!(
            text.contains("filter sextant_export {\n  reject;\n}\n"),
            "{text}"
        );
        assert!(!text.contains("protocol bfd"), "{text}");
    }

    fn arb_spec() -> impl Strategy<Value = PeerSpec> {
        (
            prop_oneof![
                any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
                ".{0,20}",
                Just("10.0.0.1".to_string()),
            ],
            any::<u32>(),
            any::<u32>(),
            proptest::option::of(".{0,90}"),
            (any::<bool>(), any::<u32>(), any::<u32>(), any::<u32>()),
            (any::<bool>(), any::<u32>()),
        )
            .prop_map(|(address, asn, local_asn, password, b, g)| PeerSpec {
                address,
                asn,
                local_asn,
                password_file: None,
                password,
                bfd: BfdSpec {
                    enabled: b.0,
                    min_rx_ms: b.1 % 70_000,
                    min_tx_ms: b.2 % 70_000,
                    multiplier: b.3 % 300,
                },
                graceful_restart: GracefulRestartSpec {
                    enabled: g.0,
                    restart_time_seconds: g.1 % 5000,
                },
            })
    }

    proptest! {
        #[test]
        fn arbitrary_peer_configs_never_panic_and_accepted_ones_render_safely(
            peers in proptest::collection::vec(arb_spec(), 0..4),
            cidrs in proptest::collection::vec(".{0,20}", 0..3),
        ) {
            if let Ok(d) = Desired::new(Ipv4Addr::new(10, 0, 0, 2), &cidrs, &[], &peers) {
                let text = render(&d);
                // Every accepted password stays inside its quotes: one quoted
                // string per password line, nothing after it.
                for line in text.lines().filter(|l| l.trim_start().starts_with("password")) {
                    prop_assert_eq!(line.matches('"').count(), 2);
                    prop_assert!(line.ends_with("\";"));
                }
                prop_assert_eq!(text.matches("protocol bgp ").count(), d.peers.len());
            }
        }
    }
}
