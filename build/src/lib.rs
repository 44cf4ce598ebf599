//! The build helper of a team's checks crate: its `.proto` views become prost types and an
//! encoded descriptor set, with no `protoc` and no descriptor file to ship.
//!
//! `build.rs`:
//! ```text
//! fn main() {
//!     overseer_build::compile_views(&["proto/shop.proto"], &["proto"]).unwrap();
//! }
//! ```
//! The crate:
//! ```text
//! // The generated types (one file per protobuf package).
//! include!(concat!(env!("OUT_DIR"), "/shop.v1.rs"));
//! /// Registered in `main` with `registry.views(DESCRIPTORS)`.
//! pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/views.binpb"));
//! ```
//! A view file imports `overseer/views.proto` (the options `(overseer.views.v1.model)`,
//! `(subject)`, `(join_ref)`, `(lookup)`, ... and the built-in views, which may be used
//! as fields): this helper supplies it, and the generated code refers to the built-in
//! messages as `::overseer::views::*` (the `overseer` crate re-exports them).

use std::path::{Path, PathBuf};

/// `overseer/views.proto`, as the engine was built with.
pub use overseer_protos::VIEWS_PROTO;

/// Name of the descriptor set written to `OUT_DIR`.
pub const DESCRIPTOR_FILE: &str = "views.binpb";

/// Compiles `protos` (found under `includes`) into prost types in `OUT_DIR` and writes
/// their encoded `FileDescriptorSet` (imports included, custom options kept) to
/// `OUT_DIR/views.binpb`. Emits `rerun-if-changed` for the protos and the include
/// directories, so an edited imported file rebuilds too.
pub fn compile_views(
    protos: &[impl AsRef<Path>],
    includes: &[impl AsRef<Path>],
) -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    // overseer/views.proto in an include directory of its own.
    let shipped = out.join("overseer-include");
    std::fs::create_dir_all(shipped.join("overseer"))?;
    std::fs::write(shipped.join("overseer/views.proto"), VIEWS_PROTO)?;
    let mut dirs: Vec<PathBuf> = includes.iter().map(|p| p.as_ref().to_owned()).collect();
    for d in &dirs {
        println!("cargo:rerun-if-changed={}", d.display());
    }
    dirs.push(shipped);
    let mut compiler = protox::Compiler::new(&dirs)?;
    compiler.include_imports(true);
    for p in protos {
        println!("cargo:rerun-if-changed={}", p.as_ref().display());
        compiler.open_file(p.as_ref())?;
    }
    // Encoded by protox itself: it keeps the custom options the engine reads views from,
    // which a round trip through prost_types would drop.
    std::fs::write(
        out.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;
    prost_build::Config::new()
        .enable_type_names()
        .extern_path(".overseer.views.v1", "::overseer::views")
        .extern_path(
            ".google.protobuf.Timestamp",
            "::overseer::prost_types::Timestamp",
        )
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
