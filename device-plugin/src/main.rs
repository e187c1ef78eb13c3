//! `sextant-device-plugin`: parses flags (with `SEXTANT_*` environment
//! fallbacks) and hands over to [`sextant_device_plugin::runtime`].

use clap::Parser;
use sextant_device_plugin::{ErrorChain, runtime::Args};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A subscriber set earlier stays.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(e.as_ref()), "sextant-device-plugin failed");
            std::process::ExitCode::FAILURE
        }
    }
}
