//! `sextant-webhook`: parses flags (with `SEXTANT_WEBHOOK_*` environment
//! fallbacks) and hands over to [`sextant_webhook::WebhookArgs`].

use clap::Parser;
use sextant_webhook::WebhookArgs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = WebhookArgs::parse();
    sextant_kit::log::init();
    sextant_kit::exit("sextant-webhook", args.run().await)
}
