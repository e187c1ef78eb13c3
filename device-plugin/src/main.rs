//! `sextant-device-plugin`: parses flags (with `SEXTANT_*` environment
//! fallbacks) and hands over to [`sextant_device_plugin::runtime`].

use clap::Parser;
use sextant_device_plugin::runtime::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    sextant_kit::exit("sextant-device-plugin", args.run().await)
}
