//! Network namespaces by name (under `/var/run/netns`, as `ip netns`
//! keeps them): run a closure or a CNI plugin inside one. Every helper
//! enters the namespace on a thread of its own, so the caller's thread
//! never changes namespace.

use std::{
    fs::File,
    path::Path,
    process::{Command, Stdio},
};

use crate::error::{Error, Result};

/// Runs `cmd args`; a non-zero exit is an error carrying its stderr.
pub(crate) fn sh(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("running {cmd}"), e))?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("{cmd} {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether this process may build labs (root), with the reason when not.
pub fn can_run() -> std::result::Result<(), String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("needs root (network namespaces, veths, BPF)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("needs iproute2's `ip`".into());
    }
    Ok(())
}

/// Removes a bpffs pin directory (or any directory); gone already is fine.
pub(crate) fn remove_dir(root: &Path) -> Result<()> {
    match std::fs::remove_dir_all(root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", root.display()), e)),
    }
}

/// Runs a CNI plugin binary as the runtime would, inside netns `node`, for
/// pod `lab/pod`.
pub fn cni_exec(
    node: &str,
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &Path,
    stdin: &str,
) -> Result<(bool, String)> {
    cni_exec_as(node, bin, command, container_id, netns, stdin, "pod")
}

/// [`cni_exec`] for pod `lab/<pod_name>` (`CNI_ARGS`).
pub fn cni_exec_as(
    node: &str,
    bin: &Path,
    command: &str,
    container_id: &str,
    netns: &Path,
    stdin: &str,
    pod_name: &str,
) -> Result<(bool, String)> {
    use std::io::Write;
    let node_ns = File::open(format!("/var/run/netns/{node}"))
        .map_err(|e| Error::io(format!("opening netns {node}"), e))?;
    let bin = bin.to_path_buf();
    let pod_name = pod_name.to_string();
    let (command, container_id, netns, stdin) = (
        command.to_string(),
        container_id.to_string(),
        netns.to_path_buf(),
        stdin.to_string(),
    );
    let plugin_dir = bin.parent().map(Path::to_path_buf).unwrap_or_default();
    // A thread in the node netns spawns the plugin, which inherits it.
    std::thread::spawn(move || -> Result<(bool, String)> {
        nix::sched::setns(&node_ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering the node netns", e.into()))?;
        let mut child = Command::new(&bin)
            .env("CNI_COMMAND", &command)
            .env("CNI_CONTAINERID", &container_id)
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", plugin_dir)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=lab;K8S_POD_NAME={pod_name}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io(format!("running {}", bin.display()), e))?;
        if let Some(mut si) = child.stdin.take() {
            let _ = si.write_all(stdin.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| Error::io("waiting for the plugin", e))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    })
    .join()
    .map_err(|_| Error::Panicked { what: "cni" })?
}

/// Runs `f` on a thread inside netns `name` (for sockets in a pod).
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let ns = File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| Error::io(format!("opening netns {name}"), e))?;
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering netns", e.into()))?;
        Ok(f())
    })
    .join()
    .map_err(|_| Error::Panicked {
        what: "netns worker",
    })?
}

/// Starts a thread in netns `name` and returns its handle (servers).
pub fn spawn_in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let ns = File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| Error::io(format!("opening netns {name}"), e))?;
    Ok(std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::io("entering netns", e.into()))?;
        Ok(f())
    }))
}
