//! The one error type of the image crate.

use std::path::PathBuf;

/// Everything the image stage can fail with. Each message names the file, row or field at fault.
///
/// A bad *image* is never an error: it becomes a [`Reject`](crate::Reject) with a reason code. These errors are
/// about the run as a whole: a bad config, an unreadable input artifact, a failed write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {field}: {message}")]
    Config {
        /// The offending field, as written in the pipeline TOML (`augment.rotate_degrees`).
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
    /// The input table breaks the contract the stage relies on (a missing column, a null split, a repeated id).
    #[error("{}: {message}", path.display())]
    Input {
        /// The table or folder at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// Nothing to fit the normalization statistics on.
    #[error(
        "no {what} image to fit the channel mean and std on; give mean and std in the config to skip fitting"
    )]
    NothingToFit {
        /// Which images were looked for ("train view-0").
        what: String,
    },
    /// A saved state file does not parse or does not match this crate's format.
    #[error("{}: invalid image state: {message}", path.display())]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed outside an artifact.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Anything else, with its context in the message.
    #[error("{0}")]
    Other(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
