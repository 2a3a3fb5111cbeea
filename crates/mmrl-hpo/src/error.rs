//! The one error type of the hpo library.

use std::path::PathBuf;

/// Everything that can go wrong in a study, a search space or the hpo stage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A search space or stage config that cannot be used; the message names the parameter or field.
    #[error("{0}")]
    Config(String),
    /// A journal line that cannot be read (not the tail, which is recovered).
    #[error("{path}: line {line}: {message}")]
    Journal {
        /// The journal file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        message: String,
    },
    /// A database storage that cannot be used: the URL (without password) and what was expected.
    #[error("storage {url}: {message}")]
    Storage {
        /// The storage URL without its password.
        url: String,
        /// What went wrong and what was expected.
        message: String,
    },
    /// A study directory held by another hpo process.
    #[error("{0}")]
    Busy(String),
    /// A sampler, pruner or study failure.
    #[error("{0}")]
    Study(String),
    /// File system errors with the path involved.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Reading or writing an artifact.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow errors while building the trials table.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet errors while writing the trials table.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds a closure mapping an `io::Error` to [`Error::Io`] for `path`.
pub(crate) fn io(
    action: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}
