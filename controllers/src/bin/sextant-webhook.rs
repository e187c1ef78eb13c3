//! `sextant-webhook`: parses flags (with `SEXTANT_WEBHOOK_*` environment
//! fallbacks) and hands over to [`sextant_operator::webhook::WebhookArgs`].

use clap::Parser;
use sextant_operator::{
    runtime::{ErrorChain, init_tracing},
    webhook::WebhookArgs,
};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = WebhookArgs::parse();
    init_tracing();
    match args.run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %ErrorChain(e.as_ref()), "sextant-webhook failed");
            std::process::ExitCode::FAILURE
        }
    }
}
