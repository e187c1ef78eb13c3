//! Whatever the renderer accepts, BIRD's own parser accepts too: rendered
//! files go through `bird -p` (parse only, no daemon, no root). Needs
//! Debian's bird2 (tier daemon).

use std::{net::Ipv4Addr, path::Path, process::Command};

use proptest::{prelude::*, test_runner::Config};
use sextant_bgp::{
    BfdSpec, Desired, GracefulRestartSpec, PeerSpec,
    render::{bootstrap, render},
};
use sextant_testkit::{Tier, current_test, require};

fn bird_missing() -> Option<String> {
    (!Path::new("/usr/sbin/bird").exists())
        .then(|| "/usr/sbin/bird is missing (Debian package bird2, see scripts/setup.sh)".into())
}

/// `Err` with BIRD's message when it refuses the text.
fn bird_parses(text: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("bird.conf");
    std::fs::write(&file, text).map_err(|e| e.to_string())?;
    let out = Command::new("/usr/sbin/bird")
        .arg("-p")
        .arg("-c")
        .arg(&file)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

#[test]
fn bird_parses_the_bootstrap_and_edge_cases() {
    if !require(Tier::Daemon, bird_missing(), &current_test("bird_parse")) {
        return;
    }
    let id = Ipv4Addr::new(10, 0, 0, 2);
    bird_parses(&bootstrap(id)).expect("bootstrap");
    let none = Desired::new(id, &[], &[], &[]).expect("empty");
    bird_parses(&render(&none)).expect("nothing to announce, no peers");
    let odd_password = PeerSpec {
        address: "10.0.0.1".into(),
        asn: 4_200_000_000,
        local_asn: 4_200_000_001,
        password: Some("#;{}'$ `~ x".into()),
        ..PeerSpec::default()
    };
    let d = Desired::new(
        id,
        &["10.128.0.0/25".into(), "10.128.0.128/25".into()],
        &["10.128.0.5".into(), "192.168.1.1".into()],
        &[odd_password],
    )
    .expect("valid");
    bird_parses(&render(&d)).expect("4-byte ASNs, printable password, overlapping /32");
}

fn arb_peer() -> impl Strategy<Value = PeerSpec> {
    (
        any::<[u8; 4]>(),
        1..=u32::MAX,
        1..=u32::MAX,
        proptest::option::of("[ -~]{1,80}"),
        (any::<bool>(), 1..=60_000u32, 1..=60_000u32, 1..=255u32),
        (any::<bool>(), 1..=4095u32),
    )
        .prop_map(|(a, asn, local_asn, password, b, g)| PeerSpec {
            address: Ipv4Addr::from(a).to_string(),
            asn,
            local_asn,
            password_file: None,
            password,
            bfd: BfdSpec {
                enabled: b.0,
                min_rx_ms: b.1,
                min_tx_ms: b.2,
                multiplier: b.3,
            },
            graceful_restart: GracefulRestartSpec {
                enabled: g.0,
                restart_time_seconds: g.1,
            },
        })
}

proptest! {
    #![proptest_config(Config { cases: 48, ..Config::default() })]
    #[test]
    fn every_config_the_renderer_accepts_parses_in_bird(
        peers in proptest::collection::vec(arb_peer(), 0..4),
        nets in proptest::collection::vec((any::<[u8; 4]>(), 1..=32u8), 0..6),
    ) {
        if bird_missing().is_some() {
            // The fixed-case test above fails or records the skip.
            return Ok(());
        }
        let cidrs: Vec<String> = nets
            .iter()
            .map(|(a, len)| {
                let mask = u32::MAX << (32 - u32::from(*len));
                format!("{}/{len}", Ipv4Addr::from(u32::from_be_bytes(*a) & mask))
            })
            .collect();
        if let Ok(d) = Desired::new(Ipv4Addr::new(10, 0, 0, 2), &cidrs, &[], &peers) {
            let text = render(&d);
            prop_assert!(bird_parses(&text).is_ok(), "{:?}", bird_parses(&text));
        }
    }
}
