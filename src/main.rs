//! The shipped `overseer` binary: the engine's command line with the payments example
//! checks, plus `demo` and `bench` on generated payments traffic. A team's binary is the
//! same call with its own checks (see `examples/custom-checks`).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    overseer::main_with(overseer_checks::register, overseer_sim::run)
}
