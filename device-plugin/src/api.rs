//! The kubelet device-plugin API v1beta1, generated from `proto/api.proto`.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("v1beta1");

/// Version string sent in `RegisterRequest.version`.
pub const VERSION: &str = "v1beta1";
/// `Device.health` of a device kubelet may allocate.
pub const HEALTHY: &str = "Healthy";
/// `Device.health` of a device kubelet must not allocate.
pub const UNHEALTHY: &str = "Unhealthy";
