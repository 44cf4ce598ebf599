fn main() -> Result<(), Box<dyn std::error::Error>> {
    overseer_build::compile_views(&["proto/shop/views.proto"], &["proto"])
}
