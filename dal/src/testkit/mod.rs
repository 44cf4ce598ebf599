//! Test support shared by the crates' tests and benches (real servers, and a writer that
//! lays down history the way ingestion does).
//!
//! - [`servers`]: PostgreSQL, tansu and garage started as local processes.
//! - [`history`]: update records of each format built from a few fields, written as
//!   segments and indexed, so layers above ingestion can be tested on real storage.

pub mod history;
pub mod servers;

pub use servers::{Server, scripts_dir, unique_name};
