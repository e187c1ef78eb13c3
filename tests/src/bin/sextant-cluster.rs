//! `sextant-cluster`: starts the test control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok) and keeps it running until
//! SIGTERM/SIGINT, `sextant-cluster down`, or, with `--lifeline-stdin`, until
//! its stdin closes (the test process that started it went away).

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sextant_e2e::cluster::{
    Cluster,
    bins::Bins,
    dev,
    supervisor::{ControlPlane, Spec, free_port},
};
use tokio::{io::AsyncReadExt, signal::unix};

#[derive(Parser)]
#[command(
    name = "sextant-cluster",
    about = "A real Kubernetes control plane on loopback, for tests and `make cluster`"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the cluster in `--dir` and supervise it.
    Up {
        /// The cluster directory: PKI, data, kubeconfigs, logs, cluster.json.
        #[arg(long)]
        dir: PathBuf,
        /// Stop when stdin reaches end of file.
        #[arg(long)]
        lifeline_stdin: bool,
        /// Remove the directory after stopping.
        #[arg(long)]
        remove_dir: bool,
        /// The scheduler extender's URL for the default scheduler.
        #[arg(long)]
        extender_url: Option<String>,
        /// Mark the extender ignorable.
        #[arg(long)]
        extender_ignorable: bool,
        /// Keep the API server's audit log in <dir>/logs/audit.log.
        #[arg(long)]
        audit: bool,
        /// Start a real node (containerd and the kubelet) beside it.
        #[arg(long)]
        real_node: bool,
        /// Install Sextant (chart with the simulated cloud; operator,
        /// webhook and scheduler extender as host processes; kwok nodes).
        #[arg(long)]
        sextant: bool,
    },
    /// Stop the cluster running in `--dir`.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Up {
            dir,
            lifeline_stdin,
            remove_dir,
            extender_url,
            extender_ignorable,
            audit,
            real_node,
            sextant,
        } => {
            // With Sextant installed, the default scheduler calls its extender.
            let extender_port = match (&extender_url, sextant) {
                (None, true) => Some(free_port()?),
                _ => None,
            };
            let spec = Spec {
                dir: dir.clone(),
                extender_url: extender_url
                    .or_else(|| extender_port.map(|p| format!("https://127.0.0.1:{p}"))),
                extender_ignorable,
                audit,
                real_node,
            };
            let started = Bins::locate().and_then(|bins| ControlPlane::start(&spec, &bins));
            let mut plane = match started {
                Ok(p) => p,
                Err(e) => {
                    println!("FAILED {}", format!("{e:#}").replace('\n', "\\n"));
                    if remove_dir {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                    std::process::exit(1);
                }
            };
            let info_path = dir.join("cluster.json");
            std::fs::write(&info_path, serde_json::to_vec_pretty(&plane.info)?)?;
            std::fs::write(dir.join("supervisor.pid"), std::process::id().to_string())?;
            let _sextant = match extender_port {
                Some(port) => {
                    let cluster = Cluster::attach(plane.info.clone());
                    match dev::install_sextant(&cluster, port).await {
                        Ok(s) => {
                            for line in &s.notes {
                                eprintln!("  {line}");
                            }
                            Some(s)
                        }
                        Err(e) => {
                            println!(
                                "FAILED installing Sextant: {}",
                                format!("{e:#}").replace('\n', "\\n")
                            );
                            drop(plane);
                            std::process::exit(1);
                        }
                    }
                }
                None => None,
            };
            println!("READY {}", info_path.display());
            let mut term = unix::signal(unix::SignalKind::terminate())?;
            let mut int = unix::signal(unix::SignalKind::interrupt())?;
            let lifeline = async {
                if lifeline_stdin {
                    let mut stdin = tokio::io::stdin();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stdin.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::pin!(lifeline);
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            let mut reported = false;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = &mut lifeline => break,
                    _ = tick.tick() => {
                        if !reported && let Some(why) = plane.check() {
                            eprintln!("sextant-cluster: {why}");
                            reported = true;
                        }
                    }
                }
            }
            drop(plane);
            let _ = std::fs::remove_file(dir.join("supervisor.pid"));
            if remove_dir {
                let _ = std::fs::remove_dir_all(&dir);
            }
            Ok(())
        }
        Cmd::Down { dir } => {
            let pid_file = dir.join("supervisor.pid");
            let pid = std::fs::read_to_string(&pid_file).with_context(|| {
                format!(
                    "no cluster running in {} ({} missing)",
                    dir.display(),
                    pid_file.display()
                )
            })?;
            let pid = pid.trim().to_owned();
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()?;
            for _ in 0..100 {
                if !pid_file.exists() {
                    println!("sextant-cluster: stopped the cluster in {}", dir.display());
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!("the supervisor (pid {pid}) did not stop within 10 s")
        }
    }
}
