//! Shared by the kernel benchmarks: percentiles and the root check.

use std::time::Duration;

/// `p` in 0..=100 of sorted samples, in milliseconds.
pub fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

/// Prints why and returns false when the benchmark cannot run here.
pub fn can_run(name: &str) -> bool {
    match sextant_agent::lab::can_run() {
        Ok(()) => true,
        Err(why) => {
            println!("{name}: SKIPPED: {why}");
            false
        }
    }
}
