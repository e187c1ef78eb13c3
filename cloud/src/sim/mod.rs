//! Simulated cloud.
