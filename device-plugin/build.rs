//! Compiles the kubelet device-plugin API (v1beta1) with tonic/prost. `protoc`
//! comes from Debian's `protobuf-compiler` (scripts/setup.sh) or `$PROTOC`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/api.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&["proto/api.proto"], &["proto"])?;
    Ok(())
}
