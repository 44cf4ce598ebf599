//! The processor runner: for each update notification, which checks run, for which
//! subjects, when, and what happens to their verdicts.
//!
//! - [`check`]: checks as plain functions, their settings, and the [`check::Registry`].
//! - [`select`]: selection: the (check, subject) pairs a notification triggers.
//! - [`schedule`]: when each triggered run happens (strategies, freshness, coalescing).
//! - [`runner`]: the loop: notifications in, runs executed, verdicts to a sink, progress
//!   committed only past fully-run notifications.
//! - [`incident`]: the incident state machine per (check, subject), kept in the catalog,
//!   and the outbox that delivers what it owes.
//! - [`escalate`]: the transports (PagerDuty Events v2, webhook, log, custom), retries and
//!   per-key rate limits.
//! - [`replay`]: re-runs checks over a past window of history, as live would have, into
//!   a report (JSON, CSV, table) or the escalation policies.
//! - [`service`]: registry + configuration → a running runner with its escalation.
//! - [`validate`]: start-up validation of every check's view against the configured
//!   models (one problem per mismatch, naming the check, the view field and the model).
//! - [`telemetry`]: metric names and the events that update them.
//! - [`error`]: the runner's error type.

pub mod check;
pub mod config;
pub mod error;
pub mod escalate;
pub mod incident;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod runner;
pub mod schedule;
pub mod select;
pub mod service;
pub mod telemetry;
pub mod validate;

pub use check::{Registry, Strategy, Verdict};
pub use error::{Error, Result};
/// The data access layer checks' views are built with (for custom view functions and
/// selections), so a checks crate needs only this crate and its views.
pub use overseer_dal as dal;
