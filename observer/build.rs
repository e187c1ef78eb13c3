//! Compiles Sextant's declaration of the Hubble Observer API (packages
//! `flow`, `relay`, `observer`) with tonic/prost. `protoc` comes from
//! Debian's `protobuf-compiler` (scripts/setup.sh) or `$PROTOC`; the two
//! well-known types used are declared in `proto/google/protobuf` because
//! Debian ships them only with libprotobuf-dev, and prost maps them to
//! `prost_types` anyway.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/flow/flow.proto",
                "proto/relay/relay.proto",
                "proto/observer/observer.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
