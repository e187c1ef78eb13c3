//! BGP peers: the settings as an operator writes them ([`PeerSpec`], from
//! Helm values through a mounted file) and the checked form the renderer
//! uses ([`Peer`]).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest TCP-MD5 key Linux accepts (`TCP_MD5SIG_MAXKEYLEN`).
const MAX_PASSWORD_LEN: usize = 80;
/// Graceful restart time is a 12-bit field (RFC 4724).
const MAX_RESTART_TIME: u32 = 4095;

/// One peer as configured: the agent's `--bgp-peers-file` holds a list of
/// these (Helm `bgp.peers`), with the password read from a mounted Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerSpec {
    /// The peer's IPv4 address (a ToR's interface address).
    pub address: String,
    /// The peer's AS number.
    pub asn: u32,
    /// This node's AS number towards the peer.
    pub local_asn: u32,
    /// File with the TCP-MD5 password (a mounted Secret key); read by
    /// [`PeersFile::load`] into `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The TCP-MD5 password itself (never in the file; filled from
    /// `passwordFile`).
    #[serde(skip)]
    pub password: Option<String>,
    /// BFD towards the peer.
    #[serde(default)]
    pub bfd: BfdSpec,
    /// Graceful restart towards the peer.
    #[serde(default)]
    pub graceful_restart: GracefulRestartSpec,
}

/// BFD settings; on by default at 100 ms × 3 (a dead link is seen in 300 ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BfdSpec {
    /// Whether the session is tied to a BFD session.
    pub enabled: bool,
    /// Slowest rate at which this node wants the peer's packets, in ms.
    pub min_rx_ms: u32,
    /// Fastest rate at which this node sends, in ms.
    pub min_tx_ms: u32,
    /// Packets missed before the session is declared down.
    pub multiplier: u32,
}

impl Default for BfdSpec {
    fn default() -> Self {
        BfdSpec {
            enabled: true,
            min_rx_ms: 100,
            min_tx_ms: 100,
            multiplier: 3,
        }
    }
}

/// Graceful restart settings; on by default, so a BIRD restart keeps the
/// peer forwarding to this node for up to `restartTimeSeconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GracefulRestartSpec {
    /// Whether graceful restart is negotiated.
    pub enabled: bool,
    /// How long the peer keeps this node's routes while it restarts.
    pub restart_time_seconds: u32,
}

impl Default for GracefulRestartSpec {
    fn default() -> Self {
        GracefulRestartSpec {
            enabled: true,
            restart_time_seconds: 120,
        }
    }
}

/// A peer whose every setting BIRD can take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// The peer's address.
    pub address: Ipv4Addr,
    /// The peer's AS number, never 0.
    pub asn: u32,
    /// This node's AS number, never 0.
    pub local_asn: u32,
    /// Printable ASCII without quotes or backslashes, at most 80 bytes.
    pub password: Option<String>,
    /// `Some` when BFD is on.
    pub bfd: Option<BfdSpec>,
    /// Restart time in seconds when graceful restart is on.
    pub graceful_restart: Option<u32>,
}

impl Peer {
    /// The BIRD protocol name for this peer: `peer_10_0_0_1`.
    pub fn protocol_name(&self) -> String {
        format!("peer_{}", self.address.to_string().replace('.', "_"))
    }

    /// Checks a [`PeerSpec`].
    pub fn from_spec(spec: &PeerSpec) -> Result<Self> {
        let address = parse_peer_address(&spec.address)?;
        let peer = spec.address.clone();
        let bad = |reason: String| Error::Peer {
            peer: peer.clone(),
            reason,
        };
        if spec.asn == 0 {
            return Err(bad("asn 0 is not a valid AS number".into()));
        }
        if spec.local_asn == 0 {
            return Err(bad("localAsn 0 is not a valid AS number".into()));
        }
        if let Some(pw) = &spec.password {
            if pw.is_empty() || pw.len() > MAX_PASSWORD_LEN {
                return Err(bad(format!(
                    "the password must be 1 to {MAX_PASSWORD_LEN} bytes, it is {}",
                    pw.len()
                )));
            }
            if !pw
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
            {
                return Err(bad(
                    "the password must be printable ASCII without '\"' or '\\'".into(),
                ));
            }
        }
        let bfd = if spec.bfd.enabled {
            let b = spec.bfd;
            for (name, ms) in [("minRxMs", b.min_rx_ms), ("minTxMs", b.min_tx_ms)] {
                if !(1..=60_000).contains(&ms) {
                    return Err(bad(format!("bfd.{name} {ms} is outside 1..=60000")));
                }
            }
            if !(1..=255).contains(&b.multiplier) {
                return Err(bad(format!(
                    "bfd.multiplier {} is outside 1..=255",
                    b.multiplier
                )));
            }
            Some(b)
        } else {
            None
        };
        let graceful_restart = if spec.graceful_restart.enabled {
            let t = spec.graceful_restart.restart_time_seconds;
            if !(1..=MAX_RESTART_TIME).contains(&t) {
                return Err(bad(format!(
                    "gracefulRestart.restartTimeSeconds {t} is outside 1..={MAX_RESTART_TIME}"
                )));
            }
            Some(t)
        } else {
            None
        };
        Ok(Peer {
            address,
            asn: spec.asn,
            local_asn: spec.local_asn,
            password: spec.password.clone(),
            bfd,
            graceful_restart,
        })
    }
}

fn parse_peer_address(value: &str) -> Result<Ipv4Addr> {
    let err = |reason| Error::PeerAddress {
        value: value.to_owned(),
        reason,
    };
    let addr: Ipv4Addr = value
        .parse()
        .map_err(|_| err("not a dotted IPv4 address"))?;
    if addr.is_unspecified() || addr.is_broadcast() || addr.is_multicast() || addr.is_loopback() {
        return Err(err("unspecified, broadcast, multicast or loopback"));
    }
    Ok(addr)
}

/// The agent's peers file (JSON): the chart renders Helm's `bgp.peers` into
/// a ConfigMap and mounts each password Secret as a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeersFile {
    /// The peers every node of this DaemonSet talks to.
    pub peers: Vec<PeerSpec>,
}

impl PeersFile {
    /// Reads the file and every `passwordFile` it names (trailing newline
    /// trimmed, as `kubectl create secret --from-file` often leaves one).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        let mut file: PeersFile =
            serde_json::from_str(&text).map_err(|source| Error::PeersFile {
                path: path.to_owned(),
                source,
            })?;
        for peer in &mut file.peers {
            if let Some(pw_path) = &peer.password_file {
                let pw = std::fs::read_to_string(pw_path).map_err(|source| Error::Io {
                    path: pw_path.clone(),
                    source,
                })?;
                peer.password = Some(pw.trim_end_matches(['\n', '\r']).to_owned());
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec(address: &str) -> PeerSpec {
        PeerSpec {
            address: address.into(),
            asn: 65000,
            local_asn: 65001,
            ..PeerSpec::default()
        }
    }

    #[test]
    fn refuses_bad_peers_with_the_reason() {
        let cases: Vec<(PeerSpec, &str)> = vec![
            (spec("fd00::1"), "not a dotted IPv4"),
            (spec("10.0.0"), "not a dotted IPv4"),
            (spec("0.0.0.0"), "unspecified"),
            (spec("224.0.0.5"), "multicast"),
            (
                PeerSpec {
                    asn: 0,
                    ..spec("10.0.0.1")
                },
                "asn 0",
            ),
            (
                PeerSpec {
                    local_asn: 0,
                    ..spec("10.0.0.1")
                },
                "localAsn 0",
            ),
            (
                PeerSpec {
                    password: Some("a\"b".into()),
                    ..spec("10.0.0.1")
                },
                "printable ASCII",
            ),
            (
                PeerSpec {
                    password: Some("x".repeat(81)),
                    ..spec("10.0.0.1")
                },
                "1 to 80 bytes",
            ),
            (
                PeerSpec {
                    bfd: BfdSpec {
                        multiplier: 0,
                        ..BfdSpec::default()
                    },
                    ..spec("10.0.0.1")
                },
                "bfd.multiplier 0",
            ),
            (
                PeerSpec {
                    graceful_restart: GracefulRestartSpec {
                        enabled: true,
                        restart_time_seconds: 5000,
                    },
                    ..spec("10.0.0.1")
                },
                "restartTimeSeconds 5000",
            ),
        ];
        for (s, want) in cases {
            let e = Peer::from_spec(&s).expect_err(&s.address).to_string();
            assert!(e.contains(want), "{s:?}: {e}");
        }
    }

    #[test]
    fn loads_the_peers_file_with_passwords_from_secret_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("tor1");
        std::fs::write(&pw, "s3cret\n").expect("write");
        let file = dir.path().join("peers.json");
        std::fs::write(
            &file,
            format!(
                r#"{{"peers":[{{"address":"10.0.0.1","asn":65000,"localAsn":65001,"passwordFile":"{}","bfd":{{"enabled":false,"minRxMs":100,"minTxMs":100,"multiplier":3}}}}]}}"#,
                pw.display()
            ),
        )
        .expect("write");
        let loaded = PeersFile::load(&file).expect("loads");
        assert_eq!(loaded.peers[0].password.as_deref(), Some("s3cret"));
        let peer = Peer::from_spec(&loaded.peers[0]).expect("valid");
        assert_eq!(peer.bfd, None);
        assert_eq!(peer.graceful_restart, Some(120));

        std::fs::write(
            &file,
            r#"{"peers":[{"address":"10.0.0.1","asn":1,"localAsn":2,"holdTime":3}]}"#,
        )
        .expect("write");
        let e = PeersFile::load(&file)
            .expect_err("unknown field")
            .to_string();
        assert!(e.contains("holdTime"), "{e}");
    }
}
