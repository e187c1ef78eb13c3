//! The allocation checkpoint: a versioned JSON file written atomically
//! (temp file, fsync, rename, fsync of the directory), so a restart never
//! hands out an IP a running pod still holds.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::Deserialize;
pub(crate) use sextant_agent_core::checkpoint::{Checkpoint, VERSION, apply, restore};

use crate::error::{Error, Result};

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

/// Moves the checkpoint of an older agent from `legacy` (a directory) to
/// `path` when `path` has none: read and checked first (a corrupt one is an
/// error, never dropped), written atomically, then the old file renamed to
/// `<name>.migrated` so it is never taken again. `true` when it moved.
pub fn adopt_legacy(path: &Path, legacy: &Path) -> Result<bool> {
    let name = path.file_name().unwrap_or_default();
    let old = legacy.join(name);
    if old == path || path.exists() {
        return Ok(false);
    }
    let Some(cp) = read(&old)? else {
        return Ok(false);
    };
    write(path, &cp)?;
    let mut done = name.to_os_string();
    done.push(".migrated");
    fs::rename(&old, legacy.join(done)).map_err(|e| Error::CheckpointIo {
        path: old.clone(),
        action: "renaming the migrated checkpoint",
        source: e,
    })?;
    Ok(true)
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

#[cfg(test)]
mod tests {
    use super::*;
    use sextant_agent_core::testing::{mk_pool, mk_req};

    /// An agent upgraded from one that kept its checkpoint on tmpfs takes
    /// that checkpoint over once; it never overwrites a newer one.
    #[test]
    fn an_older_agents_checkpoint_is_moved_to_the_state_dir_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let legacy = dir.path().join("run");
        let path = dir.path().join("lib").join("cp.json");
        let mut p = mk_pool(4);
        p.allocate(&mk_req("a"), 0, "t").expect("ip");
        let cp = Checkpoint::of(&p, 0);
        write(&legacy.join("cp.json"), &cp).expect("old agent's checkpoint");
        assert!(adopt_legacy(&path, &legacy).expect("moves"));
        assert_eq!(read(&path).expect("read"), Some(cp.clone()));
        assert!(!legacy.join("cp.json").exists());
        assert!(legacy.join("cp.json.migrated").exists());
        assert!(
            !adopt_legacy(&path, &legacy).expect("once"),
            "nothing left to move"
        );
        // A corrupt old one is an error, and the state dir stays as it was.
        std::fs::write(legacy.join("cp.json"), b"{broken").expect("write");
        std::fs::remove_file(&path).expect("rm");
        assert!(adopt_legacy(&path, &legacy).is_err());
        assert!(!path.exists());
    }

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
}
