//! Where the upstream binaries are: the cache `scripts/k8s-bins.sh` builds
//! (keyed by version, outside the repository).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, ensure};

use crate::chart::repo_root;

/// The three cache directories.
#[derive(Clone, Debug)]
pub struct Bins {
    /// kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl.
    pub kubernetes: PathBuf,
    /// etcd.
    pub etcd: PathBuf,
    /// kwok.
    pub kwok: PathBuf,
}

impl Bins {
    /// Asks `scripts/k8s-bins.sh --print` where the cache is and checks each
    /// directory is complete; never builds (setup does, before tests run).
    pub fn locate() -> anyhow::Result<Bins> {
        let script = repo_root().join("scripts/k8s-bins.sh");
        let out = Command::new("bash")
            .arg(&script)
            .arg("--print")
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(
            out.status.success(),
            "{} --print failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let get = |key: &str| -> anyhow::Result<PathBuf> {
            let dir = text
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(PathBuf::from)
                .with_context(|| format!("{} --print did not name {key}", script.display()))?;
            ensure!(
                dir.join(".complete").exists(),
                "the upstream binaries are not built: {} is missing or incomplete. \
                 Run `bash scripts/k8s-bins.sh` (make setup and make test do; the first build \
                 takes 20-40 minutes, later runs reuse the cache)",
                dir.display()
            );
            Ok(dir)
        };
        Ok(Bins {
            kubernetes: get("SEXTANT_K8S_BIN")?,
            etcd: get("SEXTANT_ETCD_BIN")?,
            kwok: get("SEXTANT_KWOK_BIN")?,
        })
    }

    /// A Kubernetes binary by name.
    pub fn kube(&self, name: &str) -> PathBuf {
        self.kubernetes.join(name)
    }

    /// The etcd binary.
    pub fn etcd(&self) -> PathBuf {
        self.etcd.join("etcd")
    }

    /// The kwok binary.
    pub fn kwok(&self) -> PathBuf {
        self.kwok.join("kwok")
    }
}

/// A binary of this workspace (`sextant-operator`, …) next to the running
/// test executable (`target/<profile>/deps/…` → `target/<profile>/`), or an
/// error saying how to build it.
pub fn workspace_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir: Option<&Path> = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "{name} is not built next to {}: run `cargo build --workspace --bins` (make test does)",
        exe.display()
    )
}
