//! The loop that keeps BIRD's configuration equal to the desired one and
//! reads BIRD's state back.
//!
//! Apply: render; if the text differs from the last accepted one, write it
//! to `<config>.candidate`, `configure check` it, and only then rename it
//! over `<config>` and `configure`. A rejected candidate leaves `<config>`
//! and the running BIRD untouched, and the reason is kept in
//! [`Speaker::last_error`] and counted. Since BIRD is started with
//! `-c <config>`, a BIRD restart comes back with the last good config.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    Desired, Error, Ipv4Net, Metrics, Result,
    birdc::{BfdSession, Birdc, Protocol},
    metrics::{PeerLabels, ReasonLabels},
    render::render,
};

/// Where BIRD is and how often to look at it.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    /// BIRD's control socket.
    pub socket: PathBuf,
    /// The configuration file BIRD runs with (`bird -c`).
    pub config: PathBuf,
    /// How often state is read back when nothing is pending.
    pub interval: Duration,
    /// How often state is read back while an advertisement is pending.
    pub fast_interval: Duration,
    /// Per-command timeout on the control socket.
    pub timeout: Duration,
}

impl SpeakerConfig {
    /// Defaults: read back every 5 s, every 10 ms while waiting for an
    /// advertisement, 5 s per command.
    pub fn new(socket: PathBuf, config: PathBuf) -> Self {
        SpeakerConfig {
            socket,
            config,
            interval: Duration::from_secs(5),
            fast_interval: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What [`Speaker::apply`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The rendered text equals the running one: nothing sent.
    Unchanged,
    /// BIRD checked and took the new configuration.
    Reconfigured,
}

/// What BIRD last said, per peer protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every protocol.
    pub protocols: Vec<Protocol>,
    /// Prefixes exported, by peer protocol name (Established peers only).
    pub exported: BTreeMap<String, BTreeSet<Ipv4Net>>,
    /// BFD sessions.
    pub bfd: Vec<BfdSession>,
}

/// Tracks when each (peer, prefix) became desired, until BIRD exports it.
#[derive(Clone, Debug, Default)]
pub struct LatencyTracker {
    pending: BTreeMap<(String, Ipv4Net), Instant>,
}

impl LatencyTracker {
    /// Records the prefixes that are new in `new` compared to `old` for
    /// every peer, as wanted since `since`; forgets prefixes no longer
    /// wanted and peers that are gone.
    pub fn desired_changed(
        &mut self,
        old: &BTreeSet<Ipv4Net>,
        new: &BTreeSet<Ipv4Net>,
        peers: &[String],
        since: Instant,
    ) {
        self.pending
            .retain(|(peer, net), _| new.contains(net) && peers.contains(peer));
        for net in new.difference(old) {
            for peer in peers {
                self.pending.entry((peer.clone(), *net)).or_insert(since);
            }
        }
    }

    /// Settles what BIRD now exports; returns the latencies observed.
    /// Entries of peers that are not Established are dropped: their wait
    /// measures the session, not the advertisement.
    pub fn observed(
        &mut self,
        exported: &BTreeMap<String, BTreeSet<Ipv4Net>>,
        now: Instant,
    ) -> Vec<Duration> {
        let mut out = Vec::new();
        self.pending
            .retain(|(peer, net), since| match exported.get(peer) {
                None => false,
                Some(set) if set.contains(net) => {
                    out.push(now.saturating_duration_since(*since));
                    false
                }
                Some(_) => true,
            });
        out
    }

    /// Whether an advertisement is still awaited.
    pub fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// The node's BGP speaker: one BIRD, driven over its control socket.
#[derive(Debug)]
pub struct Speaker {
    cfg: SpeakerConfig,
    metrics: Metrics,
    conn: Option<Birdc>,
    applied_text: Option<String>,
    applied_prefixes: BTreeSet<Ipv4Net>,
    tracker: LatencyTracker,
    last_error: Option<String>,
}

impl Speaker {
    /// A speaker that has applied nothing yet.
    pub fn new(cfg: SpeakerConfig, metrics: Metrics) -> Self {
        Speaker {
            cfg,
            metrics,
            conn: None,
            applied_text: None,
            applied_prefixes: BTreeSet::new(),
            tracker: LatencyTracker::default(),
            last_error: None,
        }
    }

    /// Why the last apply failed, or `None` after a good one.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// Whether an advertisement is still awaited.
    pub fn is_pending(&self) -> bool {
        self.tracker.is_pending()
    }

    async fn conn(&mut self) -> Result<&mut Birdc> {
        if self.conn.is_none() {
            self.conn = Some(Birdc::connect(&self.cfg.socket, self.cfg.timeout).await?);
        }
        self.conn.as_mut().ok_or(Error::Protocol {
            line: String::new(),
            reason: "no connection",
        })
    }

    fn fail(&mut self, e: Error) -> Error {
        // A broken socket is reopened on the next command.
        if matches!(
            e,
            Error::Socket { .. } | Error::Timeout { .. } | Error::Protocol { .. }
        ) {
            self.conn = None;
        }
        self.metrics
            .config_apply_failures
            .get_or_create(&ReasonLabels {
                reason: e.metric_label().into(),
            })
            .inc();
        self.last_error = Some(e.to_string());
        e
    }

    /// Renders `desired` and applies it if it changed; `since` is when the
    /// change was seen (the start of the advertisement latency).
    pub async fn apply(&mut self, desired: &Desired, since: Instant) -> Result<Applied> {
        let text = render(desired);
        let applied = self.apply_text(text).await?;
        if applied == Applied::Reconfigured {
            let peers: Vec<String> = desired.peers.iter().map(|p| p.protocol_name()).collect();
            self.tracker
                .desired_changed(&self.applied_prefixes, &desired.prefixes, &peers, since);
            self.applied_prefixes = desired.prefixes.clone();
        }
        Ok(applied)
    }

    /// Checks and applies a configuration text as is (what [`Self::apply`]
    /// does after rendering).
    pub async fn apply_text(&mut self, text: String) -> Result<Applied> {
        if self.applied_text.as_deref() == Some(text.as_str()) {
            return Ok(Applied::Unchanged);
        }
        match self.check_and_configure(&text).await {
            Ok(()) => {
                info!(config = %self.cfg.config.display(), "BIRD reconfigured");
                self.applied_text = Some(text);
                self.last_error = None;
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or_default();
                self.metrics.last_change_timestamp_seconds.set(now);
                Ok(Applied::Reconfigured)
            }
            Err(e) => {
                warn!(error = %e, "BIRD configuration not applied");
                Err(self.fail(e))
            }
        }
    }

    async fn check_and_configure(&mut self, text: &str) -> Result<()> {
        let candidate = self.cfg.config.with_extension("conf.candidate");
        let io = |path: &PathBuf| {
            let path = path.clone();
            move |source| Error::Io { path, source }
        };
        tokio::fs::write(&candidate, text)
            .await
            .map_err(io(&candidate))?;
        let checked = self.conn().await?.configure_check(&candidate).await;
        if let Err(e) = checked {
            let _ = tokio::fs::remove_file(&candidate).await;
            return Err(e);
        }
        tokio::fs::rename(&candidate, &self.cfg.config)
            .await
            .map_err(io(&self.cfg.config))?;
        let config = self.cfg.config.clone();
        self.conn().await?.configure(&config).await
    }

    /// Reads sessions, exports and BFD from BIRD into the metrics and the
    /// latency histogram.
    pub async fn observe(&mut self, now: Instant) -> Result<Observed> {
        match self.read_state().await {
            Ok(o) => {
                for d in self.tracker.observed(&o.exported, now) {
                    debug!(latency_ms = d.as_millis() as u64, "prefix advertised");
                    self.metrics
                        .advertisement_latency_seconds
                        .observe(d.as_secs_f64());
                }
                Ok(o)
            }
            Err(e) => {
                if matches!(
                    e,
                    Error::Socket { .. } | Error::Timeout { .. } | Error::Protocol { .. }
                ) {
                    self.conn = None;
                }
                Err(e)
            }
        }
    }

    async fn read_state(&mut self) -> Result<Observed> {
        let conn = self.conn().await?;
        let protocols = conn.protocols().await?;
        let mut exported = BTreeMap::new();
        for p in protocols.iter().filter(|p| p.established()) {
            let routes = conn.routes_exported(&p.name).await?;
            exported.insert(
                p.name.clone(),
                routes.into_iter().map(|r| r.net).collect::<BTreeSet<_>>(),
            );
        }
        let bfd = conn.bfd_sessions().await?;
        for p in protocols.iter().filter(|p| p.proto == "BGP") {
            let Some(addr) = p.neighbor else { continue };
            let labels = PeerLabels {
                peer: addr.to_string(),
            };
            self.metrics
                .session_established
                .get_or_create(&labels)
                .set(i64::from(p.established()));
            let n = exported.get(&p.name).map_or(0, BTreeSet::len);
            self.metrics
                .prefixes_advertised
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            let bfd_up = bfd.iter().any(|s| s.address == addr && s.state == "Up");
            self.metrics
                .bfd_up
                .get_or_create(&labels)
                .set(i64::from(bfd_up));
        }
        Ok(Observed {
            protocols,
            exported,
            bfd,
        })
    }

    /// Runs until `shutdown` turns true or the sender of `desired` is
    /// dropped (its owner is gone): applies each new desired state as
    /// soon as it arrives, reads state back every `interval` (every
    /// `fast_interval` while an advertisement is awaited). Errors are
    /// logged and counted, never fatal: BIRD may be restarting.
    pub async fn run(
        mut self,
        mut desired: watch::Receiver<Option<Desired>>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut retry_apply = true;
        loop {
            if *shutdown.borrow() {
                return;
            }
            let wanted = desired.borrow_and_update().clone();
            let now = Instant::now();
            if let Some(d) = wanted.as_ref().filter(|_| retry_apply) {
                // A failed apply (BIRD down) is retried on the next tick; a
                // rejected one waits for new input.
                retry_apply = match self.apply(d, now).await {
                    Ok(_) => false,
                    Err(Error::Rejected { .. }) => false,
                    Err(_) => true,
                };
            }
            if let Err(e) = self.observe(Instant::now()).await {
                debug!(error = %e, "reading BIRD state");
                // BIRD may have restarted with an older file: reapply.
                self.applied_text = None;
                retry_apply = true;
            }
            let wait = if self.is_pending() {
                self.cfg.fast_interval
            } else {
                self.cfg.interval
            };
            tokio::select! {
                changed = desired.changed() => {
                    if changed.is_err() { return; }
                    retry_apply = true;
                }
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
        net::UnixListener,
    };

    use super::*;
    use crate::PeerSpec;

    /// A stand-in for BIRD's control socket: greets, then answers each
    /// command by `answer`, recording the commands.
    fn fake_bird(
        path: &std::path::Path,
        answer: fn(&str) -> String,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let Ok((stream, _)) = listener.accept().await else {
                return seen;
            };
            let (r, mut w) = stream.into_split();
            let _ = w.write_all(b"0001 BIRD fake ready.\n").await;
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(cmd)) = lines.next_line().await {
                let reply = answer(&cmd);
                seen.push(cmd);
                if w.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
            seen
        })
    }

    fn desired() -> Desired {
        Desired::new(
            std::net::Ipv4Addr::new(10, 0, 0, 2),
            &["10.128.7.0/25".into()],
            &[],
            &[PeerSpec {
                address: "10.0.0.1".into(),
                asn: 65000,
                local_asn: 65001,
                ..PeerSpec::default()
            }],
        )
        .expect("valid")
    }

    #[tokio::test]
    async fn a_rejected_config_keeps_the_running_file_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("bird.ctl");
        let conf = dir.path().join("bird.conf");
        std::fs::write(&conf, "last good\n").expect("write");
        let server = fake_bird(&sock, |cmd| {
            if cmd.starts_with("configure check") {
                "0002-Reading configuration\n8002 bird.conf.candidate:3:1 Router ID must be set\n"
                    .into()
            } else {
                "0003 Reconfigured\n".into()
            }
        });
        let metrics = Metrics::default();
        let mut sp = Speaker::new(SpeakerConfig::new(sock, conf.clone()), metrics.clone());
        let e = sp
            .apply(&desired(), Instant::now())
            .await
            .expect_err("rejected");
        assert!(matches!(e, Error::Rejected { .. }), "{e}");
        assert!(
            sp.last_error()
                .is_some_and(|w| w.contains("Router ID must be set"))
        );
        assert_eq!(std::fs::read_to_string(&conf).expect("read"), "last good\n");
        assert!(
            !conf.with_extension("conf.candidate").exists(),
            "candidate removed"
        );
        let failures = metrics
            .config_apply_failures
            .get_or_create(&ReasonLabels {
                reason: "rejected".into(),
            })
            .get();
        assert_eq!(failures, 1);
        assert!(!sp.is_pending(), "nothing awaited from a rejected config");
        drop(sp);
        let seen = server.await.expect("server");
        assert_eq!(seen.len(), 1, "no configure after a failed check: {seen:?}");
    }

    #[tokio::test]
    async fn an_accepted_config_is_renamed_into_place_then_applied_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("bird.ctl");
        let conf = dir.path().join("bird.conf");
        let server = fake_bird(&sock, |cmd| {
            if cmd.starts_with("configure check") {
                "0002-Reading configuration\n0020 Configuration OK\n".into()
            } else {
                "0002-Reading configuration\n0003 Reconfigured\n".into()
            }
        });
        let mut sp = Speaker::new(SpeakerConfig::new(sock, conf.clone()), Metrics::default());
        let d = desired();
        assert_eq!(
            sp.apply(&d, Instant::now()).await.expect("ok"),
            Applied::Reconfigured
        );
        assert_eq!(
            sp.apply(&d, Instant::now()).await.expect("ok"),
            Applied::Unchanged
        );
        assert_eq!(std::fs::read_to_string(&conf).expect("read"), render(&d));
        assert!(sp.is_pending(), "the new prefix is awaited at the peer");
        drop(sp);
        let seen = server.await.expect("server");
        let candidate = conf.with_extension("conf.candidate");
        assert_eq!(
            seen,
            [
                format!("configure check \"{}\"", candidate.display()),
                format!("configure \"{}\"", conf.display()),
            ]
        );
    }

    #[tokio::test]
    async fn bird_down_is_counted_and_leaves_the_file_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("bird.conf");
        let metrics = Metrics::default();
        let mut sp = Speaker::new(
            SpeakerConfig::new(dir.path().join("absent.ctl"), conf.clone()),
            metrics.clone(),
        );
        let e = sp
            .apply(&desired(), Instant::now())
            .await
            .expect_err("no BIRD");
        assert!(matches!(e, Error::Socket { .. }), "{e}");
        assert!(!conf.exists());
        let failures = metrics
            .config_apply_failures
            .get_or_create(&ReasonLabels {
                reason: "socket".into(),
            })
            .get();
        assert_eq!(failures, 1);
    }

    fn nets(v: &[&str]) -> BTreeSet<Ipv4Net> {
        v.iter().map(|s| Ipv4Net::parse(s).expect("net")).collect()
    }

    #[test]
    fn latency_runs_from_the_change_to_the_export_per_peer() {
        let t0 = Instant::now();
        let mut tr = LatencyTracker::default();
        let peers = vec!["peer_a".to_string(), "peer_b".to_string()];
        tr.desired_changed(
            &nets(&["10.1.0.0/25"]),
            &nets(&["10.1.0.0/25", "10.9.0.1/32"]),
            &peers,
            t0,
        );
        let mut exported = BTreeMap::new();
        exported.insert("peer_a".to_string(), nets(&["10.1.0.0/25", "10.9.0.1/32"]));
        exported.insert("peer_b".to_string(), nets(&["10.1.0.0/25"]));
        let got = tr.observed(&exported, t0 + Duration::from_millis(40));
        assert_eq!(
            got,
            [Duration::from_millis(40)],
            "only the new /32 on peer_a"
        );
        assert!(tr.is_pending(), "peer_b still waits");
        exported.insert("peer_b".to_string(), nets(&["10.1.0.0/25", "10.9.0.1/32"]));
        let got = tr.observed(&exported, t0 + Duration::from_millis(70));
        assert_eq!(got, [Duration::from_millis(70)]);
        assert!(!tr.is_pending());
    }

    #[test]
    fn latency_forgets_withdrawn_prefixes_and_down_peers() {
        let t0 = Instant::now();
        let mut tr = LatencyTracker::default();
        let peers = vec!["peer_a".to_string(), "peer_b".to_string()];
        tr.desired_changed(
            &BTreeSet::new(),
            &nets(&["10.9.0.1/32", "10.9.0.2/32"]),
            &peers,
            t0,
        );
        tr.desired_changed(
            &nets(&["10.9.0.1/32", "10.9.0.2/32"]),
            &nets(&["10.9.0.1/32"]),
            &peers,
            t0,
        );
        let mut exported = BTreeMap::new();
        exported.insert("peer_a".to_string(), BTreeSet::new());
        // peer_b is not Established: not in `exported`.
        assert!(tr.observed(&exported, t0).is_empty());
        assert_eq!(tr.pending.len(), 1, "only peer_a's 10.9.0.1/32 is awaited");
    }
}
