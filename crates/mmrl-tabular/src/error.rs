//! The one error type of the tabular crate.

/// Everything the tabular stage and its library can fail with. Each message names the column, field or file at
/// fault and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {field}: {message}")]
    Config {
        /// The offending field, as written in the pipeline TOML (`columns.battery.impute`).
        field: String,
        /// What was expected.
        message: String,
    },
    /// The config or recipe names a column that the data does not have.
    #[error("{field}: no column {column:?}; the available columns are: {available}")]
    UnknownColumn {
        /// Where the name appeared (`columns.battery`, `recipe.numeric`).
        field: String,
        /// The name that was not found.
        column: String,
        /// The columns that do exist, comma separated.
        available: String,
    },
    /// A column is declared numeric but holds text (or another non-numeric type).
    #[error(
        "column {column:?} is declared numeric but holds {dtype} values; declare it categorical (kind = \"categorical\") or fix the data"
    )]
    NotNumeric {
        /// The column.
        column: String,
        /// Its actual type.
        dtype: String,
    },
    /// A column has a type the stage cannot use as a feature at all (lists, binary, ...).
    #[error("column {column:?} has type {dtype}, which is neither numeric nor text")]
    UnsupportedType {
        /// The column.
        column: String,
        /// Its actual type.
        dtype: String,
    },
    /// Nothing to fit on: the train rows are missing or were all removed by the outlier drop rules.
    #[error("{0}")]
    EmptyTrain(String),
    /// The input table is unusable (split column missing or null, unknown split names, duplicate output names).
    #[error("{0}")]
    Data(String),
    /// More rows were dropped by outlier rules than `max_drop_fraction` allows; nothing was written.
    #[error(
        "outlier drop rules removed {dropped} of {total} rows ({:.1}%), more than max_drop_fraction {max_fraction}; first: {first}",
        100.0 * *dropped as f64 / (*total).max(1) as f64
    )]
    TooManyDropped {
        /// Rows dropped.
        dropped: usize,
        /// Rows read.
        total: usize,
        /// The configured limit.
        max_fraction: f64,
        /// The first few drops with their column and value.
        first: String,
    },
    /// A state file does not parse or has the wrong version.
    #[error("state: {0}")]
    State(String),
    /// Polars failed while computing (reading Parquet, evaluating an expression).
    #[error("polars: {context}: {source}")]
    Polars {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: polars::error::PolarsError,
    },
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps a polars error with what was being done.
pub(crate) fn pl(context: impl Into<String>) -> impl FnOnce(polars::error::PolarsError) -> Error {
    let context = context.into();
    move |source| Error::Polars { context, source }
}
