//! Cross-crate tests for Sextant: the Helm chart in `charts/sextant`, linted
//! and rendered by the real Helm engine (PyPI `helm-python-sdk`, run from the
//! repository's `.venv`), every rendered object parsed into its `k8s-openapi`
//! type so the tests assert on typed fields; the images the chart runs,
//! checked against the `Dockerfile` and the workspace's bin targets; and the
//! configuration reference generated from the chart's values schema.
//!
//! ```text
//! charts/sextant + ci/<set>-values.yaml ──▶ .venv/bin/python (helm_python: lint, render)
//!     ──JSON {file: manifest}──▶ serde_yaml documents ──▶ Object::{Deployment, DaemonSet, ClusterRole, ...}
//! Dockerfile ──▶ dockerfile::Dockerfile ──┐
//! cargo metadata ──▶ bin targets ─────────┼──▶ images::check_images
//! rendered containers ────────────────────┘
//! values.schema.json + values.yaml ──▶ config_reference ──▶ docs/configuration.md
//! ```
//!
//! A missing venv or Helm SDK is an error with a message saying how to get
//! it (`make setup`), never a silently passing test.

pub mod chart;
pub mod cluster;
pub mod config_reference;
pub mod dockerfile;
pub mod images;
pub mod soak;
