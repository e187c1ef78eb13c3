//! `sextant-scheduler-ext`: parses flags (with `SEXTANT_SCHEDULER_EXT_*`
//! environment fallbacks) and hands over to [`sextant_scheduler_ext::runtime`].

use clap::Parser;
use sextant_kit::ErrorChain;
use sextant_scheduler_ext::runtime::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "sextant-scheduler-ext failed");
            std::process::ExitCode::FAILURE
        }
    }
}
