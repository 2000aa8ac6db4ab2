//! Compiles `proto/cim/v1/*.proto` with prost, using the protoc binary vendored by
//! `protoc-bin-vendored`, so building never needs a system protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    config.compile_protos(
        &["proto/cim/v1/cim.proto", "proto/cim/v1/peer.proto"],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
