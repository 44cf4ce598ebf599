//! Compiles `proto/*.proto` with protox (pure Rust) so no system `protoc` is needed.
//! The encoded descriptor set is also written to OUT_DIR so the DAL can map record fields
//! to message fields by descriptor at run time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/overseer/storage.proto", "proto/overseer/views.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true);
    for p in protos {
        compiler.open_file(p)?;
    }
    // Encoded by protox itself: it keeps custom options (`(overseer.views.v1.model)`, ...),
    // which a round trip through prost_types' FileDescriptorSet would drop, and the DAL
    // reads views from them.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    prost_build::Config::new()
        .bytes(["."])
        // `prost::Name` for every message: the DAL finds a typed view's descriptor by name.
        .enable_type_names()
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
