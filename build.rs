//! Compiles `proto/` into Rust with no system `protoc`: `protox` parses the
//! files in pure Rust and tonic's prost codegen turns the descriptors into
//! code. The encoded descriptor set is also written to `OUT_DIR` so the server
//! can offer gRPC reflection.

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/abacus/v1/calculator.proto"];
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("abacus_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
