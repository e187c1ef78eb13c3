//! `sextant-scheduler-ext`: parses flags (with `SEXTANT_SCHEDULER_EXT_*`
//! environment fallbacks) and hands over to [`sextant_scheduler_ext::runtime`].

use clap::Parser;
use sextant_scheduler_ext::{
    error::ErrorChain,
    runtime::{Args, init_tracing},
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_tracing();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "sextant-scheduler-ext failed");
            std::process::ExitCode::FAILURE
        }
    }
}
