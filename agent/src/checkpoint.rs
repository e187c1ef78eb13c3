//! The allocation checkpoint: a versioned JSON file written atomically
//! (temp file, fsync, rename, fsync of the directory), so a restart never
//! hands out an IP a running pod still holds.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    pool::{Allocation, Pool},
};

/// Format version this agent reads and writes.
pub const VERSION: u32 = 1;

/// What is on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// Format version.
    pub version: u32,
    /// Handed-out IPs.
    pub allocations: Vec<Allocation>,
    /// Freed IPs and the end of their cooldown (ms since the Unix epoch).
    #[serde(default)]
    pub cooling: Vec<Cooling>,
    /// IPs promised to the operator for release.
    #[serde(default)]
    pub releasing: Vec<Ipv4Addr>,
}

/// One IP in cooldown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cooling {
    /// The IP.
    pub ip: Ipv4Addr,
    /// Cooldown end, ms since the Unix epoch.
    pub until_ms: u64,
}

impl Checkpoint {
    /// The checkpoint of `pool` at `now_ms`.
    pub fn of(pool: &Pool, now_ms: u64) -> Self {
        Checkpoint {
            version: VERSION,
            allocations: pool.allocations().cloned().collect(),
            cooling: pool
                .cooling(now_ms)
                .map(|(ip, until_ms)| Cooling { ip, until_ms })
                .collect(),
            releasing: pool.releasing().iter().copied().collect(),
        }
    }
}

/// Writes `cp` to `path` atomically.
pub fn write(path: &Path, cp: &Checkpoint) -> Result<()> {
    let io = |action, source| Error::CheckpointIo {
        path: path.to_path_buf(),
        action,
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| io("creating its directory", e))?;
    let tmp = tmp_path(path);
    let body = serde_json::to_vec_pretty(cp).map_err(|e| Error::CheckpointCorrupt {
        path: path.to_path_buf(),
        source: e,
    })?;
    let mut f = fs::File::create(&tmp).map_err(|e| io("creating the temp file", e))?;
    f.write_all(&body)
        .map_err(|e| io("writing the temp file", e))?;
    f.sync_all().map_err(|e| io("fsync of the temp file", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| io("renaming the temp file", e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync of the directory", e))?;
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Reads the checkpoint; `None` when there is none yet (first start).
pub fn read(path: &Path) -> Result<Option<Checkpoint>> {
    let body = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::CheckpointIo {
                path: path.to_path_buf(),
                action: "reading",
                source: e,
            });
        }
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let corrupt = |source| Error::CheckpointCorrupt {
        path: path.to_path_buf(),
        source,
    };
    let v: Versioned = serde_json::from_slice(&body).map_err(corrupt)?;
    if v.version != VERSION {
        return Err(Error::CheckpointVersion {
            path: path.to_path_buf(),
            found: v.version,
            expected: VERSION,
        });
    }
    serde_json::from_slice(&body).map(Some).map_err(corrupt)
}

/// What restoring a checkpoint keeps and drops.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Restored {
    /// Allocations whose pod interface still exists.
    pub kept: Vec<Allocation>,
    /// Allocations whose netns or interface is gone (their IPs go to cooldown).
    pub dropped: Vec<Allocation>,
}

/// Checks `cp` for double assignments (an error: the agent refuses to guess)
/// and splits its allocations by `alive` (does the pod interface still exist).
pub fn restore(cp: &Checkpoint, mut alive: impl FnMut(&Allocation) -> bool) -> Result<Restored> {
    let mut owners: BTreeMap<Ipv4Addr, &Allocation> = BTreeMap::new();
    for a in &cp.allocations {
        if let Some(first) = owners.insert(a.ip, a)
            && first.key() != a.key()
        {
            return Err(Error::DuplicateIp {
                ip: a.ip,
                first: first.key().to_string(),
                second: a.key().to_string(),
            });
        }
    }
    let mut out = Restored::default();
    for a in &cp.allocations {
        if alive(a) {
            out.kept.push(a.clone());
        } else {
            out.dropped.push(a.clone());
        }
    }
    Ok(out)
}

/// Applies a checked checkpoint to `pool`: kept allocations, cooldowns, and
/// the IPs of dropped allocations put into a fresh cooldown (a pod that lost
/// its interface may still have packets in flight).
pub fn apply(pool: &mut Pool, cp: &Checkpoint, restored: Restored, now_ms: u64, cooldown_ms: u64) {
    let mut cooling: BTreeMap<Ipv4Addr, u64> = cp
        .cooling
        .iter()
        .filter(|c| c.until_ms > now_ms)
        .map(|c| (c.ip, c.until_ms))
        .collect();
    for a in &restored.dropped {
        cooling.insert(a.ip, now_ms.saturating_add(cooldown_ms));
    }
    pool.restore(restored.kept, cooling, cp.releasing.iter().copied());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{
        DEFAULT_COOLDOWN_MS,
        tests::{mk_pool, mk_req},
    };

    #[test]
    fn round_trips_atomically_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.json");
        let mut p = mk_pool(4);
        p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let b = p.allocate(&mk_req("b"), 0, "t").expect("ip");
        p.free(&b.key(), 10);
        let cp = Checkpoint::of(&p, 10);
        write(&path, &cp).expect("write");
        assert!(!tmp_path(&path).exists());
        assert_eq!(read(&path).expect("read"), Some(cp));
    }

    #[test]
    fn missing_checkpoint_is_a_first_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(read(&dir.path().join("none")).expect("read"), None);
    }

    #[test]
    fn refuses_unknown_version_and_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cp.json");
        fs::write(&path, r#"{"version":2,"allocations":[]}"#).expect("write");
        assert!(matches!(
            read(&path),
            Err(Error::CheckpointVersion { found: 2, .. })
        ));
        fs::write(&path, "{not json").expect("write");
        assert!(matches!(read(&path), Err(Error::CheckpointCorrupt { .. })));
    }

    #[test]
    fn restore_refuses_duplicate_ips_loudly() {
        let mut p = mk_pool(2);
        let a = p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let mut cp = Checkpoint::of(&p, 0);
        let mut twin = a.clone();
        twin.container_id = "other".into();
        cp.allocations.push(twin);
        let err = restore(&cp, |_| true).expect_err("duplicate");
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn restore_drops_gone_interfaces_into_cooldown() {
        let mut p = mk_pool(3);
        p.allocate(&mk_req("live"), 0, "t").expect("ip");
        let gone = p.allocate(&mk_req("gone"), 0, "t").expect("ip");
        let cp = Checkpoint::of(&p, 0);
        let r = restore(&cp, |a| a.container_id == "live").expect("restore");
        assert_eq!(r.kept.len(), 1);
        assert_eq!(r.dropped.len(), 1);
        let mut fresh = mk_pool(3);
        apply(&mut fresh, &cp, r, 100, DEFAULT_COOLDOWN_MS);
        assert_eq!(fresh.counts(100).allocated, 1);
        assert!(fresh.is_cooling(gone.ip, 100));
        // A new ADD after restart never gets the live pod's IP.
        let n = fresh.allocate(&mk_req("new"), 100, "t").expect("ip");
        assert_ne!(n.ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_ne!(n.ip, gone.ip);
    }
}
