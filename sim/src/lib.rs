//! Generated payments traffic through the real pipeline: the workload generator with its
//! ground truth ([`workload`]), `overseer demo` and `overseer bench`. The shipped binary
//! adds these subcommands to the engine's (`overseer::main_with(.., overseer_sim::run)`);
//! a team's binary has no need of them.

pub mod bench;
mod bench_real;
pub mod demo;
mod live;
pub mod workload;

use anyhow::Result;

/// The subcommands of this crate.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Run the payments demo live on the embedded default (no servers, no config).
    Demo(demo::Args),
    /// Measure throughput, time to detect and accuracy on generated payments traffic.
    Bench(bench::Args),
}

/// Runs `cmd`. The demo and the bench score the payments checks against the workload's
/// ground truth, so they register those whatever the binary registered.
pub fn run(cmd: Command, _checks: overseer::Checks) -> Result<()> {
    // Real-mode bench: its servers' credentials reach the bench through the environment
    // of a child process (see `bench_real::enter`), before any runtime starts.
    let stack = match &cmd {
        Command::Bench(args) if args.mode == bench::Mode::Real => {
            match bench_real::enter(&args.scripts_dir())? {
                Ok(stack) => Some(stack),
                Err(code) => std::process::exit(code),
            }
        }
        _ => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            Command::Demo(args) => demo::run(args).await,
            Command::Bench(args) => bench::run(args, stack).await,
        }
    })
}
