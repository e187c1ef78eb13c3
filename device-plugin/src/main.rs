//! `sextant-device-plugin`: parses flags (with `SEXTANT_*` environment
//! fallbacks) and hands over to [`sextant_device_plugin::runtime`].

use clap::Parser;
use sextant_device_plugin::runtime::Args;
use sextant_kit::ErrorChain;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(e.as_ref()), "sextant-device-plugin failed");
            std::process::ExitCode::FAILURE
        }
    }
}
