//! Compiles `proto/*.proto` with protox (pure Rust) so no system `protoc` is needed.
//! The encoded descriptor set is also written to OUT_DIR so the DAL can map record fields
//! to message fields by descriptor at run time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/overseer/storage.proto", "proto/overseer/views.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // `bytes` fields as `bytes::Bytes`: raw events move from source to segment without copies.
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
