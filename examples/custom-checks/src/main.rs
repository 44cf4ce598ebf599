fn main() -> std::process::ExitCode {
    overseer::main(custom_checks::register)
}
