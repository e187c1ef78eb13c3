//! Cross-crate tests for Sextant. Today: the Helm chart in `charts/sextant`,
//! linted and rendered by the real Helm engine (PyPI `helm-python-sdk`, run
//! from the repository's `.venv`), every rendered object parsed into its
//! `k8s-openapi` type so the tests assert on typed fields.
//!
//! ```text
//! charts/sextant + ci/<set>-values.yaml ──▶ .venv/bin/python (helm_python: lint, render)
//!     ──JSON {file: manifest}──▶ serde_yaml documents ──▶ Object::{Deployment, DaemonSet, ClusterRole, ...}
//! ```
//!
//! A missing venv or Helm SDK is an error with a message saying how to get
//! it (`make setup`), never a silently passing test.

pub mod chart;
