//! Test support shared by the crates' tests and benches. A dev-dependency only: nothing
//! here is in a production build.
//!
//! - [`servers`]: PostgreSQL, tansu and garage started as local processes.
//! - [`history`]: update records of each format built from a few fields, written as
//!   segments and indexed, so layers above ingestion can be tested on real storage.
//! - [`conformance`]: the one test suite every backend of each storage seam passes.
//! - [`faults`]: a catalog and an object store that fail a fraction of their calls
//!   transiently, for what must retry and end as without faults.
//! - [`pagerduty`]: [`pagerduty::FakePagerDuty`], a local server that implements the
//!   PagerDuty Events API v2 contract on 127.0.0.1, with scriptable faults.
//! - [`memory`]: [`memory::MemoryNotifier`], an in-memory escalation notifier that records
//!   every attempt (usable under paused Tokio time).
//! - [`sink`]: [`sink::CollectSink`], a runner sink that keeps every run record.
//! - [`pgoutput`]: pgoutput messages encoded the way the walsender does, and samples.
//! - [`proxy`]: [`proxy::FaultProxy`], an HTTP proxy that injects 503s, 500s (before or
//!   after the request is applied), cut connections and slow answers into a seeded share
//!   of requests to a real server (the chaos campaign's object-store faults).
//! - [`proto`]: a team's `.proto` views compiled at test time (importing
//!   `overseer/views.proto`), as its build script would.

pub mod conformance;
pub mod faults;
pub mod history;
pub mod memory;
pub mod pagerduty;
pub mod proto;
pub mod proxy;
pub mod servers;
pub mod sink;

pub use overseer_dal::pgoutput::encode as pgoutput;
pub use servers::{Server, scripts_dir, unique_name};
