//! `sextant-lab`: runs [`sextant_lab::demo_with`] with the agent and
//! CNI binaries found beside this one and prints the connectivity table. Root.

use std::path::PathBuf;

use clap::Parser;
use sextant_lab::LabPool;

/// `sextant-lab` flags.
#[derive(Parser, Debug)]
#[command(
    name = "sextant-lab",
    about = "A Sextant node in network namespaces (root)"
)]
struct Args {
    /// Pods in the lab node (at least 4).
    #[arg(default_value_t = 4)]
    pods: usize,
    /// Take pod IPs from this NodeNetwork file (kept by a feeder) instead of
    /// the static pool 10.77.0.0/26.
    #[arg(long)]
    node_network_file: Option<PathBuf>,
    /// Also write the pods' addresses as JSON here.
    #[arg(long)]
    report_json: Option<PathBuf>,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let pool = match args.node_network_file {
        Some(path) => LabPool::NodeNetworkFile(path),
        None => "10.77.0.0/26".into(),
    };
    let report = match sextant_lab::demo_with(
        &dir.join("sextant-agent"),
        &dir.join("sextant-cni"),
        args.pods,
        pool,
    ) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sextant-lab: {}", sextant_kit::ErrorChain(&e));
            return std::process::ExitCode::FAILURE;
        }
    };
    print!("{report}");
    if let Some(path) = &args.report_json {
        let json = serde_json::json!({ "pods": report.pods });
        if let Err(e) = std::fs::write(path, json.to_string()) {
            eprintln!("sextant-lab: writing {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    if report.probes.iter().all(|p| p.answer.is_ok())
        && report
            .policy
            .iter()
            .all(|(p, allowed)| p.answer.is_ok() == *allowed)
    {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
