//! Log init: one format for every binary.

/// Installs the log subscriber on stderr: `RUST_LOG` filters, `info` when it
/// is unset or unparsable. A subscriber installed earlier (a test's) stays.
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
