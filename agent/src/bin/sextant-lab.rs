//! `sextant-lab`: runs [`sextant_agent::lab::demo`] with the agent and CNI
//! binaries found beside this one and prints the connectivity table. Root.

fn main() -> std::process::ExitCode {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(std::path::Path::to_path_buf))
        .unwrap_or_default();
    let pods = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    match sextant_agent::lab::demo(&dir.join("sextant-agent"), &dir.join("sextant-cni"), pods) {
        Ok(report) => {
            print!("{report}");
            if report.probes.iter().all(|p| p.answer.is_ok()) {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sextant-lab: {}", sextant_agent::ErrorChain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}
