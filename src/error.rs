//! The crate's one error type. Every message says what was wrong and what was expected; it is
//! converted to `DataFusionError` at the DataFusion boundary.
//!
//! Errors keep their source (object-store, parquet, Delta errors are wrapped, not turned into
//! strings), and [`TraceLakeError::is_transient`] says whether trying again may succeed: the
//! appender retries transient errors only.

use std::error::Error as StdError;

use datafusion::error::DataFusionError;

/// Errors of tracelake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceLakeError {
    /// A row does not fit the span schema (bad id, unknown kind, missing value...).
    #[error("invalid span in row {row}: {message}")]
    InvalidSpan { row: usize, message: String },

    /// A batch whose columns do not match the span schema.
    #[error("batch does not fit the span schema: {0}")]
    SchemaMismatch(String),

    /// The location holds no Delta table.
    #[error("{location} is not a trace table: {reason}")]
    NotATraceTable { location: String, reason: String },

    /// The table URL could not be understood or is not supported by this build.
    #[error("invalid table location {location:?}: {reason}")]
    InvalidLocation { location: String, reason: String },

    /// An argument that is not valid (for example a malformed trace id).
    #[error("{0}")]
    InvalidArgument(String),

    /// A number outside the range an option or argument accepts.
    #[error("{what} must be {accepted}, got {value}")]
    OutOfRange {
        /// The option or argument (`vacuum retention_hours`, ...).
        what: String,
        /// The accepted range, in words (`between 1 and 876000`).
        accepted: String,
        /// The value given.
        value: String,
    },

    /// A data file of the table could not be read (its footer, bloom filter or pages). Only
    /// the queries that need the file fail; the source says why (and whether it is transient).
    #[error("data file {location} cannot be read: {source}")]
    DataFile {
        location: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    /// A Ballista scheduler or executor could not be started, or a scheduler could not be
    /// reached (see `tracelake::distributed`, cargo feature `cluster`).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A network endpoint (for example `tracelake::flight_sql::serve`, cargo feature
    /// `flight-sql`) stopped with an error.
    #[error("server: {0}")]
    Server(String),
    /// A function that starts a background task was called outside a tokio runtime.
    #[error(
        "{0} needs a tokio runtime: call it from async code running on one (for example under #[tokio::main])"
    )]
    NoRuntime(&'static str),

    /// The appender could not commit buffered spans after its retries; they stay buffered and
    /// the next flush tries again.
    #[error("the appender could not commit buffered spans (they are kept and retried): {message}")]
    AppendFailed {
        message: String,
        /// Whether the last error was transient.
        transient: bool,
    },

    /// The appender's task is gone (shut down, or its runtime stopped).
    #[error("the appender has stopped")]
    AppenderStopped,

    /// The appender's queue is full: commits cannot keep up. Try again later.
    #[error("the appender's queue is full ({0} batches waiting); retry later")]
    Busy(usize),

    /// A commit holding these spans failed and they were not written; sending them again is
    /// safe.
    #[error("the spans were not committed (sending them again is safe): {0}")]
    NotCommitted(String),

    /// A rewrite (compaction) lost to another commit that removed a file it was rewriting;
    /// nothing was committed, and running it again is safe.
    #[error("conflict: {0}")]
    Conflict(String),

    /// An error of the Delta layer.
    #[error("delta table error: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    /// An error of the object store.
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),

    /// An error of the parquet reader or writer.
    #[error("parquet error: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// An error of DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// An error of Arrow.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// `Result` with [`TraceLakeError`].
pub type Result<T, E = TraceLakeError> = std::result::Result<T, E>;

impl TraceLakeError {
    /// An [`TraceLakeError::OutOfRange`] error.
    pub(crate) fn out_of_range(
        what: impl Into<String>,
        accepted: impl Into<String>,
        value: impl std::fmt::Display,
    ) -> Self {
        Self::OutOfRange {
            what: what.into(),
            accepted: accepted.into(),
            value: value.to_string(),
        }
    }

    /// A [`TraceLakeError::DataFile`] error for `location`, keeping `source`.
    pub(crate) fn data_file(
        location: impl std::fmt::Display,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        Self::DataFile {
            location: location.to_string(),
            source: source.into(),
        }
    }

    /// Whether trying the same operation again may succeed: network and I/O errors of the
    /// object store, commit conflicts, a commit version taken by another writer. Invalid input,
    /// a table of another schema, a missing table or file, and permission errors are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::InvalidSpan { .. }
            | Self::SchemaMismatch(_)
            | Self::NotATraceTable { .. }
            | Self::InvalidLocation { .. }
            | Self::InvalidArgument(_)
            | Self::OutOfRange { .. }
            | Self::NoRuntime(_)
            | Self::AppenderStopped => false,
            Self::Busy(_)
            | Self::NotCommitted(_)
            | Self::Conflict(_)
            | Self::Cluster(_)
            | Self::Server(_) => true,
            Self::AppendFailed { transient, .. } => *transient,
            Self::Delta(e) => delta_is_transient(e),
            Self::ObjectStore(e) => object_store_is_transient(e),
            Self::DataFile { source, .. } => chain_is_transient(source.as_ref()),
            Self::Parquet(e) => chain_is_transient(e),
            Self::DataFusion(e) => datafusion_is_transient(e),
            Self::Arrow(e) => chain_is_transient(e),
        }
    }
}

fn object_store_is_transient(e: &object_store::Error) -> bool {
    use object_store::Error as E;
    match e {
        // Network, HTTP 5xx, throttling and I/O errors all arrive as `Generic`.
        E::Generic { source, .. } => {
            !matches!(find_io(source.as_ref()), Some(io) if !io_is_transient(io))
        }
        E::JoinError { .. } => true,
        _ => false,
    }
}

fn io_is_transient(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    !matches!(
        e.kind(),
        K::NotFound
            | K::PermissionDenied
            | K::InvalidInput
            | K::InvalidData
            | K::Unsupported
            | K::AlreadyExists
            | K::UnexpectedEof
    )
}

fn find_io<'a>(mut e: &'a (dyn StdError + 'static)) -> Option<&'a std::io::Error> {
    loop {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        e = e.source()?;
    }
}

fn delta_is_transient(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::DeltaTableError as D;
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        D::ObjectStore { source } => object_store_is_transient(source),
        D::Io { source } => io_is_transient(source),
        D::VersionAlreadyExists(_) => true,
        D::Transaction { source } => match source {
            T::VersionAlreadyExists(_) | T::CommitConflict(_) | T::MaxCommitAttempts(_) => true,
            T::ObjectStore { source } => object_store_is_transient(source),
            T::LogStoreError { .. } => true,
            _ => false,
        },
        other => other.source().is_some_and(chain_is_transient),
    }
}

fn datafusion_is_transient(e: &DataFusionError) -> bool {
    match e {
        DataFusionError::ObjectStore(e) => object_store_is_transient(e),
        DataFusionError::IoError(e) => io_is_transient(e),
        DataFusionError::External(e) => match e.downcast_ref::<TraceLakeError>() {
            Some(t) => t.is_transient(),
            None => chain_is_transient(e.as_ref()),
        },
        DataFusionError::Context(_, e) => datafusion_is_transient(e),
        DataFusionError::ParquetError(e) => chain_is_transient(e.as_ref()),
        DataFusionError::ArrowError(e, _) => chain_is_transient(e.as_ref()),
        _ => false,
    }
}

/// Whether the first object-store, I/O, Delta or tracelake error in `e`'s source chain is
/// transient (false when there is none: a format or logic error).
fn chain_is_transient(e: &(dyn StdError + 'static)) -> bool {
    let mut current: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(e) = current {
        if let Some(os) = e.downcast_ref::<object_store::Error>() {
            return object_store_is_transient(os);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return io_is_transient(io);
        }
        if let Some(t) = e.downcast_ref::<TraceLakeError>() {
            return t.is_transient();
        }
        if let Some(d) = e.downcast_ref::<deltalake::DeltaTableError>() {
            return delta_is_transient(d);
        }
        if let Some(p) = e.downcast_ref::<parquet::errors::ParquetError>()
            && let parquet::errors::ParquetError::External(inner) = p
        {
            current = Some(inner.as_ref());
            continue;
        }
        current = e.source();
    }
    false
}

impl From<TraceLakeError> for DataFusionError {
    fn from(err: TraceLakeError) -> Self {
        match err {
            TraceLakeError::DataFusion(e) => e,
            TraceLakeError::InvalidSpan { .. }
            | TraceLakeError::SchemaMismatch(_)
            | TraceLakeError::InvalidArgument(_)
            | TraceLakeError::OutOfRange { .. } => DataFusionError::Execution(err.to_string()),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generic(message: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: message.into(),
        }
    }

    #[test]
    fn network_errors_are_transient_and_bad_input_is_not() {
        assert!(TraceLakeError::ObjectStore(generic("connection reset")).is_transient());
        let missing = object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into(),
        };
        assert!(!TraceLakeError::ObjectStore(missing).is_transient());
        assert!(
            !TraceLakeError::InvalidSpan {
                row: 1,
                message: "bad".into()
            }
            .is_transient()
        );
        assert!(!TraceLakeError::out_of_range("x", "between 1 and 2", 3).is_transient());
    }

    #[test]
    fn sources_are_kept_through_wrappers() {
        let parquet = parquet::errors::ParquetError::External(Box::new(generic("timeout")));
        let err = TraceLakeError::data_file("a.parquet", parquet);
        assert!(err.is_transient());
        assert!(err.to_string().contains("a.parquet"), "{err}");
        assert!(err.source().is_some());
        let df: DataFusionError = err.into();
        assert!(datafusion_is_transient(&df));
        let delta = deltalake::DeltaTableError::ObjectStore {
            source: generic("503"),
        };
        assert!(TraceLakeError::Delta(delta).is_transient());
        let corrupt = parquet::errors::ParquetError::General("bad magic".into());
        assert!(!TraceLakeError::data_file("b.parquet", corrupt).is_transient());
    }

    #[test]
    fn out_of_range_names_the_accepted_range() {
        let err = TraceLakeError::out_of_range("expire older_than_days", "at most 36500", 213504);
        assert_eq!(
            err.to_string(),
            "expire older_than_days must be at most 36500, got 213504"
        );
    }
}
