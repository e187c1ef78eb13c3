//! `sextant-webhook`: parses flags (with `SEXTANT_WEBHOOK_*` environment
//! fallbacks) and hands over to [`sextant_webhook::WebhookArgs`].

use clap::Parser;
use sextant_kit::ErrorChain;
use sextant_webhook::WebhookArgs;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = WebhookArgs::parse();
    sextant_kit::log::init();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(e.as_ref()), "sextant-webhook failed");
            std::process::ExitCode::FAILURE
        }
    }
}
