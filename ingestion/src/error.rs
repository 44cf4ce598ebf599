//! Errors of the ingestion service.

/// Ingestion errors. Bad *events* are not errors (they are quarantined); these are failures
/// of configuration, of a source connection, or of storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; the message names the key.
    #[error("config: {0}")]
    Config(String),
    /// A source failed; `transient` says whether reconnecting may help.
    #[error("source {source_name}: {message}")]
    Source {
        source_name: String,
        message: String,
        transient: bool,
    },
    #[error(transparent)]
    Storage(#[from] overseer_dal::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with the ingestion [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying (reconnecting) may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Source { transient, .. } => *transient,
            Error::Storage(e) => e.is_transient(),
            Error::Config(_) | Error::Io { .. } => false,
        }
    }

    /// A source error.
    pub fn source(name: &str, message: impl std::fmt::Display, transient: bool) -> Self {
        Error::Source {
            source_name: name.to_owned(),
            message: message.to_string(),
            transient,
        }
    }
}
