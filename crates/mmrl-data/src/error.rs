//! The one error type of the data crate.

use std::path::PathBuf;

/// Everything the data stages can fail with. Each message names the file, row or field at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {field}: {message}")]
    Config {
        /// The offending field, as written in the pipeline TOML.
        field: String,
        /// What was expected.
        message: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The dataset folder as a whole is unusable (no manifest.csv, a required column missing, no rows).
    #[error("{}: {message}", path.display())]
    Dataset {
        /// The file at fault, usually `manifest.csv`.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// More rows were rejected than the configured fraction allows; nothing was written.
    #[error(
        "{}: rejected {rejected} of {total} rows ({:.1}%), more than max_reject_fraction {max_fraction}; by reason: {by_reason}; first: {first}",
        path.display(), 100.0 * *rejected as f64 / *total as f64
    )]
    TooManyRejects {
        /// The dataset's manifest.
        path: PathBuf,
        /// Rows rejected.
        rejected: usize,
        /// Rows read.
        total: usize,
        /// The configured limit.
        max_fraction: f64,
        /// Counts per reason.
        by_reason: String,
        /// The first few rejects with their detail.
        first: String,
    },
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Anything else, with its context in the message.
    #[error("{0}")]
    Other(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
