//! One error type for the storage layer, classified as transient (retry) or definite.

/// The underlying error of a backend (a `tokio_postgres::Error`, an S3 SDK error, a
/// `KafkaError`, a redb error), kept so callers can inspect codes (SQLSTATE, HTTP status)
/// rather than text: see [`Error::source_as`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The object store failed; `transient` says whether a retry may succeed.
    #[error("object store: {message}")]
    Store {
        message: String,
        transient: bool,
        #[source]
        source: Option<BoxError>,
    },
    /// The catalog failed.
    #[error("catalog: {message}")]
    Catalog {
        message: String,
        transient: bool,
        #[source]
        source: Option<BoxError>,
    },
    /// The notification bus failed.
    #[error("bus: {message}")]
    Bus {
        message: String,
        transient: bool,
        #[source]
        source: Option<BoxError>,
    },
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
            // A full disk passes once space is freed; a local write is atomic (a
            // temporary file linked into place), so writing it again is safe.
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
                    | std::io::ErrorKind::QuotaExceeded
            ),
            Error::Corrupt { .. }
            | Error::Invalid { .. }
            | Error::Build(_)
            | Error::View { .. } => false,
        }
    }

    #[cfg_attr(not(any(feature = "embedded", feature = "postgres")), allow(dead_code))]
    pub(crate) fn catalog(message: impl std::fmt::Display) -> Self {
        Error::Catalog {
            message: message.to_string(),
            transient: false,
            source: None,
        }
    }

    /// A definite catalog error caused by `source` (its text is part of the message too).
    #[cfg_attr(not(feature = "embedded"), allow(dead_code))]
    pub(crate) fn catalog_from(source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Catalog {
            message: source.to_string(),
            transient: false,
            source: Some(Box::new(source)),
        }
    }

    /// The backend error underneath, if it is a `T` (e.g. `tokio_postgres::Error`, for its
    /// SQLSTATE).
    pub fn source_as<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match self {
            Error::Store { source, .. }
            | Error::Catalog { source, .. }
            | Error::Bus { source, .. } => source.as_deref().and_then(|s| s.downcast_ref::<T>()),
            _ => None,
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
