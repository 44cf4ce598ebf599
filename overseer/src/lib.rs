//! overseer as a library: a team's binary registers its checks and gets every subcommand.
//!
//! ```no_run
//! use std::time::Duration;
//! use overseer::{Verdict, views::TransferWithLedger};
//!
//! fn fee_is_booked(v: &TransferWithLedger) -> Verdict {
//!     Verdict::check(!v.entries.is_empty(), || Verdict::fail("no ledger entries"))
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     overseer::main(|registry| {
//!         registry.check("fee_is_booked", fee_is_booked).grace(Duration::from_secs(2));
//!     })
//! }
//! ```
//!
//! - [`main`] / [`main_with`]: the command line (`ingest`, `run`, `prs`, `view`, `history`,
//!   `replay`, `reindex`, `validate`).
//! - [`config`]: the configuration file, assembled from each crate's tables.
//! - [`engine`]: `run` and `prs` as functions, for front ends of their own.
//! - [`validate`]: what `overseer validate` checks.

mod cli;
pub mod config;
pub mod engine;
mod replay;
pub mod validate;
mod view;

pub use cli::{NoCommands, cancel_on_signal, main, main_with};
pub use config::Config;
pub use engine::Checks;
/// The views of the built-in models (`overseer.views.v1`).
pub use overseer_protos::views;
pub use overseer_prs::check::{CheckSpec, Registry, Strategy, Verdict};
/// `google.protobuf.Timestamp` and the other well-known types, as views use them.
pub use prost_types;
