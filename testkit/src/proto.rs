//! A team's `.proto` views compiled at test time, as `overseer_build::compile_views` does
//! in a team's build script: importing `overseer/views.proto` (the engine's, as built),
//! encoded by protox itself, which keeps the custom options views are read from.

/// The encoded `FileDescriptorSet` (imports included) of one `.proto` file's `source`,
/// which may import `overseer/views.proto`. Panics on a compile error, with protox's
/// message: the tests' protos are fixed text.
pub fn compile(source: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir_all(dir.path().join("overseer")).expect("an include directory");
    std::fs::write(
        dir.path().join("overseer/views.proto"),
        overseer_protos::VIEWS_PROTO,
    )
    .expect("writing views.proto");
    std::fs::write(dir.path().join("test.proto"), source).expect("writing the proto");
    let mut c = protox::Compiler::new([dir.path()]).expect("a protox compiler");
    c.include_imports(true);
    if let Err(e) = c.open_file("test.proto") {
        panic!("the test's .proto does not compile: {e:?}");
    }
    c.encode_file_descriptor_set()
}

/// [`compile`], kept for the life of the test process (what `Registry::views` takes).
pub fn compile_static(source: &str) -> &'static [u8] {
    Box::leak(compile(source).into_boxed_slice())
}
