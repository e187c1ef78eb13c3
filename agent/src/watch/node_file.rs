//! The NodeNetwork from a file instead of the Kubernetes API
//! (`--node-network-file`): labs and `sextantctl lab`, where a feeder runs the
//! operator's node IPAM against the `sim` cloud and writes the object here.
//!
//! ```text
//!  feeder ─writes─▶ PATH (NodeNetwork, spec + status) ─poll 1 s─▶ Agent::apply_node
//!  feeder ◀─reads── PATH.usage.json (the status merge patch) ◀─every rate── usage_patch
//! ```
//!
//! A file that is missing, half written or malformed is logged and counted;
//! the agent keeps the last good NodeNetwork.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use sextant_agent_core::node::Answers;
use sextant_crds::NodeNetwork;
use tracing::{info, warn};

use crate::{
    agent::Agent,
    error::{Error, Result},
};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Where the usage report of the NodeNetwork file `path` goes: `PATH.usage.json`.
pub fn usage_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".usage.json");
    PathBuf::from(s)
}

/// Parses a NodeNetwork written as JSON (first non-blank character `{`) or YAML.
pub fn parse(path: &Path, text: &[u8]) -> Result<NodeNetwork> {
    let invalid = |source: Box<dyn std::error::Error + Send + Sync>| Error::NodeFileInvalid {
        path: path.to_path_buf(),
        source,
    };
    let json = text
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    if json {
        serde_json::from_slice(text).map_err(|e| invalid(Box::new(e)))
    } else {
        serde_yaml::from_slice(text).map_err(|e| invalid(Box::new(e)))
    }
}

/// Writes `value` as JSON to `path` atomically: a temp file beside it, then rename.
pub fn write_json_atomic(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::io("encoding the usage report", std::io::Error::other(e)))?;
    std::fs::write(&tmp, body).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming to {}", path.display()), e))
}

/// The file and the last good NodeNetwork read from it.
#[derive(Debug)]
pub struct NodeFile {
    path: PathBuf,
    seen: Option<Vec<u8>>,
    current: Option<NodeNetwork>,
}

impl NodeFile {
    /// Watches `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        NodeFile {
            path: path.into(),
            seen: None,
            current: None,
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last NodeNetwork that parsed.
    pub fn current(&self) -> Option<&NodeNetwork> {
        self.current.as_ref()
    }

    /// Reads the file: `Ok(Some)` with a NodeNetwork when its contents changed
    /// and parse, `Ok(None)` when they are the ones seen last (good or bad),
    /// `Err` when it cannot be read or does not parse; the last good
    /// NodeNetwork stays current either way.
    pub fn poll(&mut self) -> Result<Option<NodeNetwork>> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| Error::io(format!("reading {}", self.path.display()), e))?;
        if self.seen.as_deref() == Some(bytes.as_slice()) {
            return Ok(None);
        }
        let parsed = parse(&self.path, &bytes);
        self.seen = Some(bytes);
        let nn = parsed?;
        self.current = Some(nn.clone());
        Ok(Some(nn))
    }
}

/// Handshake answers still to be shown to the feeder: an answer stays in
/// every report until the file's `status.release` carries it (or drops the
/// IP); a deletion stays until the file no longer lists the entry.
fn keep_unseen(answers: &mut Answers, nn: &NodeNetwork) {
    let release = nn.status.as_ref().map(|s| &s.release);
    answers.retain(
        |ip, answer| match (release.and_then(|r| r.get(ip)), answer) {
            (Some(seen), Some(answer)) => seen != answer,
            (Some(_), None) => true,
            (None, _) => false,
        },
    );
}

/// Follows the NodeNetwork file: applies each new version as the watch
/// would, writes the usage report (with handshake answers) to
/// [`usage_path`] every `rate` and whenever answers change.
pub async fn file_loops(agent: Arc<Agent>, path: PathBuf, rate: Duration) {
    let usage = usage_path(&path);
    let mut file = NodeFile::new(path);
    let mut answers = Answers::new();
    let mut last_error: Option<String> = None;
    let mut poll = tokio::time::interval(POLL);
    let mut report = tokio::time::interval(rate);
    loop {
        let write = tokio::select! {
            _ = poll.tick() => match file.poll() {
                Ok(Some(nn)) => {
                    last_error = None;
                    keep_unseen(&mut answers, &nn);
                    let new = agent.apply_node(&nn);
                    info!(
                        file = %file.path().display(),
                        pool = sextant_agent_core::usage::pool_ips(&nn).len(),
                        "NodeNetwork file applied"
                    );
                    if new.is_empty() {
                        false
                    } else {
                        answers.extend(new);
                        if let Err(e) = agent.save().await {
                            warn!(error = %sextant_kit::ErrorChain(&e), "checkpoint after handshake");
                        }
                        true
                    }
                }
                Ok(None) => false,
                Err(e) => {
                    let msg = sextant_kit::ErrorChain(&e).to_string();
                    // Once per distinct problem, not every second.
                    if last_error.as_deref() != Some(msg.as_str()) {
                        agent.metrics.error(&e);
                        warn!(error = %msg, "NodeNetwork file unusable; keeping the last good one");
                        last_error = Some(msg);
                    }
                    false
                }
            },
            _ = report.tick() => true,
        };
        if !write {
            continue;
        }
        if let Some(patch) = agent.usage_patch(&answers) {
            match write_json_atomic(&usage, &patch) {
                Ok(()) => {
                    agent.metrics.reports.inc();
                }
                Err(e) => {
                    agent.metrics.error(&e);
                    warn!(error = %sextant_kit::ErrorChain(&e), "usage report failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use sextant_crds::{NodeNetworkStatus, PoolEntry, ReleaseState};

    use super::*;

    fn mk_node(ips: &[&str]) -> NodeNetwork {
        let mut nn = NodeNetwork::new("node-a", Default::default());
        nn.status = Some(NodeNetworkStatus {
            pool: ips
                .iter()
                .map(|ip| (ip.to_string(), PoolEntry::default()))
                .collect(),
            ..Default::default()
        });
        nn
    }

    fn pool_of(nn: &NodeNetwork) -> Vec<String> {
        sextant_agent_core::usage::pool_ips(nn)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reads_json_and_yaml_node_networks() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nn.json");
        let nn = mk_node(&["10.91.0.5", "10.91.0.6"]);
        std::fs::write(&path, serde_json::to_vec(&nn).expect("json")).expect("write");
        let mut f = NodeFile::new(&path);
        let got = f.poll().expect("poll").expect("a node");
        assert_eq!(pool_of(&got), ["10.91.0.5", "10.91.0.6"]);
        assert_eq!(got.metadata.name.as_deref(), Some("node-a"));

        let yaml = dir.path().join("nn.yaml");
        std::fs::write(&yaml, serde_yaml::to_string(&nn).expect("yaml")).expect("write");
        let got = NodeFile::new(&yaml).poll().expect("poll").expect("a node");
        assert_eq!(pool_of(&got), ["10.91.0.5", "10.91.0.6"]);
    }

    #[test]
    fn malformed_or_missing_file_keeps_the_last_good_node_network() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nn.json");
        let good = serde_json::to_vec(&mk_node(&["10.91.0.5"])).expect("json");
        std::fs::write(&path, &good).expect("write");
        let mut f = NodeFile::new(&path);
        assert!(f.poll().expect("poll").is_some());

        // A half-written file, as a writer without rename leaves it.
        std::fs::write(&path, &good[..good.len() / 2]).expect("write");
        let err = f.poll().expect_err("truncated JSON is an error");
        assert_eq!(err.metric_label(), "node_file_invalid");
        assert_eq!(
            f.current().map(pool_of),
            Some(vec!["10.91.0.5".to_string()])
        );
        // The same bad bytes are not reported again.
        assert!(f.poll().expect("unchanged").is_none());

        std::fs::write(&path, "status: [not, a, node").expect("write");
        assert!(f.poll().is_err());
        std::fs::remove_file(&path).expect("rm");
        assert_eq!(f.poll().expect_err("missing").metric_label(), "io");
        assert_eq!(
            f.current().map(pool_of),
            Some(vec!["10.91.0.5".to_string()])
        );
    }

    #[test]
    fn a_changed_file_is_picked_up_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("nn.json");
        std::fs::write(
            &path,
            serde_json::to_vec(&mk_node(&["10.91.0.5"])).expect("json"),
        )
        .expect("write");
        let mut f = NodeFile::new(&path);
        assert!(f.poll().expect("poll").is_some());
        assert!(f.poll().expect("poll").is_none(), "same contents");
        let bigger = mk_node(&["10.91.0.5", "10.91.0.6", "10.91.0.7"]);
        let tmp = dir.path().join("nn.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(&bigger).expect("json")).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
        let got = f.poll().expect("poll").expect("the new version");
        assert_eq!(pool_of(&got).len(), 3);
    }

    #[test]
    fn usage_goes_beside_the_file_and_is_replaced_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let usage = usage_path(&dir.path().join("nn.json"));
        assert_eq!(usage, dir.path().join("nn.json.usage.json"));
        write_json_atomic(
            &usage,
            &serde_json::json!({"status": {"usage": {"used": {}}}}),
        )
        .expect("write");
        write_json_atomic(
            &usage,
            &serde_json::json!({"status": {"usage": {"cooling": []}}}),
        )
        .expect("rewrite");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&usage).expect("read")).expect("json");
        assert!(v["status"]["usage"]["cooling"].is_array());
        assert!(!dir.path().join("nn.json.usage.json.tmp").exists());
    }

    #[test]
    fn handshake_answers_stay_until_the_file_shows_them() {
        let mut nn = mk_node(&["10.91.0.5", "10.91.0.6"]);
        if let Some(s) = nn.status.as_mut() {
            s.release = [
                ("10.91.0.5".to_string(), ReleaseState::Marked),
                ("10.91.0.6".to_string(), ReleaseState::ReadyForRelease),
                ("10.91.0.8".to_string(), ReleaseState::Released),
            ]
            .into();
        }
        let mut answers: Answers = [
            ("10.91.0.5".to_string(), Some(ReleaseState::ReadyForRelease)),
            ("10.91.0.6".to_string(), Some(ReleaseState::ReadyForRelease)),
            ("10.91.0.7".to_string(), Some(ReleaseState::ReadyForRelease)),
            ("10.91.0.8".to_string(), None),
            ("10.91.0.9".to_string(), None),
        ]
        .into();
        keep_unseen(&mut answers, &nn);
        assert_eq!(
            answers.keys().collect::<Vec<_>>(),
            ["10.91.0.5", "10.91.0.8"],
            "an answer not shown yet, a deletion not done yet"
        );
    }

    /// The loop applies the file through `Agent::apply_node` (the watch's
    /// path), reports usage beside it, and survives a broken rewrite.
    #[tokio::test]
    async fn file_loop_applies_the_node_network_and_reports_usage() {
        let dir = tempfile::tempdir().expect("dir");
        let agent = Agent::new(crate::agent::Config {
            state_dir: dir.path().join("state"),
            bpf_root: None,
            cooldown: Duration::from_secs(30),
            static_pool: Vec::new(),
        })
        .expect("agent");
        agent.restore().await.expect("restore");
        let path = dir.path().join("nn.json");
        std::fs::write(
            &path,
            serde_json::to_vec(&mk_node(&["10.91.0.5"])).expect("json"),
        )
        .expect("write");
        let task = tokio::spawn(file_loops(
            agent.clone(),
            path.clone(),
            Duration::from_millis(200),
        ));
        let wait_for = |n: usize| {
            let agent = agent.clone();
            async move {
                for _ in 0..100 {
                    if agent.health().ipam.pool == n {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                false
            }
        };
        assert!(wait_for(1).await, "the file's pool is applied");
        std::fs::write(&path, b"{\"apiVersion\": ").expect("write");
        tokio::time::sleep(POLL + Duration::from_millis(300)).await;
        assert_eq!(agent.health().ipam.pool, 1, "last good state kept");
        std::fs::write(
            &path,
            serde_json::to_vec(&mk_node(&["10.91.0.5", "10.91.0.6"])).expect("json"),
        )
        .expect("write");
        assert!(wait_for(2).await, "the change is picked up");
        let usage: serde_json::Value =
            serde_json::from_slice(&std::fs::read(usage_path(&path)).expect("usage file"))
                .expect("json");
        assert!(usage["status"]["usage"]["reportedAt"].is_string());
        assert!(agent.metrics_text().contains("node_file_invalid"));
        task.abort();
    }
}
