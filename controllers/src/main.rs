//! `sextant-operator`: parses flags (with `SEXTANT_*` environment fallbacks)
//! and hands over to [`sextant_operator::run`].

use clap::Parser;
use sextant_kit::ErrorChain;
use sextant_operator::args::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "sextant-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}
