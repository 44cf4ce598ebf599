//! One error type for the runner, classified as transient or definite.

/// Errors of the processor runner.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The DAL (catalog, store, bus, or a view) failed.
    #[error(transparent)]
    Dal(#[from] overseer_dal::Error),
    /// A check function panicked; the message is the panic's.
    #[error("the check panicked: {0}")]
    Panicked(String),
    /// A run took longer than the check's timeout.
    #[error("the check timed out after {0:?}")]
    TimedOut(std::time::Duration),
    /// No check of that name is registered.
    #[error("no check named {name:?} (registered: {})", known.join(", "))]
    UnknownCheck { name: String, known: Vec<String> },
    /// A check or escalation is configured wrong.
    #[error("config: {0}")]
    Config(String),
    /// The checks do not fit the configured models (start-up validation): every problem.
    #[error(
        "the checks do not fit the configuration ({} problems):\n{}",
        .0.len(),
        .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
    )]
    Invalid(Vec<crate::validate::Problem>),
    /// An escalation target refused or failed.
    #[error("escalation {policy}: {message}")]
    Escalation {
        policy: String,
        message: String,
        transient: bool,
    },
    /// An escalation target asked to be sent less (HTTP 429): transient, and retried
    /// after a longer wait than other transient failures ([`crate::escalate::Backoff`]).
    #[error("escalation {policy}: {message}")]
    Throttled { policy: String, message: String },
}

/// Result with the runner's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Dal(e) => e.is_transient(),
            Error::Escalation { transient, .. } => *transient,
            Error::TimedOut(_) | Error::Throttled { .. } => true,
            Error::Panicked(_)
            | Error::UnknownCheck { .. }
            | Error::Config(_)
            | Error::Invalid(_) => false,
        }
    }
}
