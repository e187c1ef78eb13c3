//! `sextant-scheduler-ext`: parses flags (with `SEXTANT_SCHEDULER_EXT_*`
//! environment fallbacks) and hands over to [`sextant_scheduler_ext::runtime`].

use clap::Parser;
use sextant_scheduler_ext::runtime::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    sextant_kit::exit("sextant-scheduler-ext", args.run().await)
}
