//! Test doubles for the tests of this and other crates (public on purpose; they cost
//! little to compile and nothing at run time unless used).
//!
//! - [`pagerduty`]: [`pagerduty::FakePagerDuty`], a local server that implements the
//!   PagerDuty Events API v2 contract on 127.0.0.1, with scriptable faults.
//! - [`memory`]: [`memory::MemoryNotifier`], an in-memory [`crate::escalate::Notifier`]
//!   that records every attempt (usable under paused Tokio time).
//! - [`sink`]: [`sink::CollectSink`], a runner sink that keeps every run record.

pub mod memory;
pub mod pagerduty;
pub mod sink;
