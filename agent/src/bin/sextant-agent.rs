//! `sextant-agent`: parses flags (with `SEXTANT_*` environment fallbacks)
//! and hands over to [`sextant_agent::runtime`].

use clap::Parser;
use sextant_agent::runtime::{Args, enter_netns};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    sextant_kit::log::init();
    // Before the runtime exists, so every worker thread is in the namespace.
    let rt = enter_netns(&args).and_then(|()| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| sextant_agent::Error::io("starting the runtime", e))
    });
    sextant_kit::exit("sextant-agent", rt.and_then(|rt| rt.block_on(args.run())))
}
