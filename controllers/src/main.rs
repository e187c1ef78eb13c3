//! `sextant-operator`: parses flags (with `SEXTANT_*` environment fallbacks)
//! and hands over to [`sextant_operator::run`].

use clap::Parser;
use sextant_operator::args::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    sextant_kit::exit("sextant-operator", args.run().await)
}
