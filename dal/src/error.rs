//! One error type for the storage layer, classified as transient (retry) or definite.

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object store failed; `transient` says whether a retry may succeed.
    #[error("object store: {message}")]
    Store { message: String, transient: bool },
    /// The catalog failed.
    #[error("catalog: {message}")]
    Catalog { message: String, transient: bool },
    /// The notification bus failed.
    #[error("bus: {message}")]
    Bus { message: String, transient: bool },
    /// Stored bytes do not decode: a corrupt or foreign object.
    #[error("corrupt data in {what}: {message}")]
    Corrupt { what: String, message: String },
    /// A caller passed something invalid (bad key, bad config).
    #[error("invalid {what}: {message}")]
    Invalid { what: String, message: String },
    /// A record's updates could not be folded into its state (a definite problem with a
    /// stored update, named in the error).
    #[error(transparent)]
    Build(#[from] crate::builder::BuildError),
    /// A record's state does not fit its view message, or a view is unknown or ill-defined.
    #[error("view {view}: {message}")]
    View { view: String, message: String },
    #[error("i/o on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Result with the storage [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether retrying the same operation may succeed (network, throttling, timeouts).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Store { transient, .. }
            | Error::Catalog { transient, .. }
            | Error::Bus { transient, .. } => *transient,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::TimedOut
            ),
            Error::Corrupt { .. }
            | Error::Invalid { .. }
            | Error::Build(_)
            | Error::View { .. } => false,
        }
    }

    pub(crate) fn catalog(message: impl std::fmt::Display) -> Self {
        Error::Catalog {
            message: message.to_string(),
            transient: false,
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Invalid {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn view(view: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::View {
            view: view.into(),
            message: message.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Corrupt {
            what: what.into(),
            message: message.to_string(),
        }
    }
}
