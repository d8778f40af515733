//! The crate's one error type. Every message says what was wrong and what was expected; it is
//! converted to `DataFusionError` at the DataFusion boundary.

use datafusion::error::DataFusionError;

/// Errors of tracelake.
#[derive(Debug, thiserror::Error)]
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

    /// An error of the Delta layer.
    #[error("delta table error: {0}")]
    Delta(#[from] deltalake::DeltaTableError),

    /// An error of the object store.
    #[error("object store error: {0}")]
    ObjectStore(#[from] object_store::Error),

    /// An error of DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),

    /// An error of Arrow.
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// `Result` with [`TraceLakeError`].
pub type Result<T, E = TraceLakeError> = std::result::Result<T, E>;

impl From<TraceLakeError> for DataFusionError {
    fn from(err: TraceLakeError) -> Self {
        match err {
            TraceLakeError::DataFusion(e) => e,
            TraceLakeError::InvalidSpan { .. }
            | TraceLakeError::SchemaMismatch(_)
            | TraceLakeError::InvalidArgument(_) => DataFusionError::Execution(err.to_string()),
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
