//! The generated Hubble-compatible protobuf types and gRPC stubs.

#![allow(missing_docs, clippy::all)]

/// Hubble's `flow` package: flows, filters, lost events.
pub mod flow {
    tonic::include_proto!("flow");
}

/// Hubble's `relay` package: node status in a relay's streams.
pub mod relay {
    tonic::include_proto!("relay");
}

/// Hubble's `observer` package: the `Observer` service.
pub mod observer {
    tonic::include_proto!("observer");
}
