//! The one error type of the artifact crate.

use std::path::PathBuf;

/// Everything that can go wrong while writing or reading an artifact.
///
/// Every variant names the file it is about, so a message read in a CI log is enough to find the problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// A filesystem operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done ("creating", "reading", ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A directory has no `manifest.json`: it was never completed or is not an artifact.
    #[error("{}: no manifest.json, so this is not a complete artifact", dir.display())]
    MissingManifest {
        /// The directory that was opened.
        dir: PathBuf,
    },
    /// `manifest.json` exists but does not parse or has the wrong format version.
    #[error("{}: invalid manifest: {reason}", path.display())]
    InvalidManifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file listed in the manifest does not match what is on disk.
    #[error("{}: {reason}", path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What differs from the manifest (size, hash, rows, schema).
        reason: String,
    },
    /// A table does not have the columns or types a reader requires.
    #[error("{}: schema mismatch: {reason}", path.display())]
    Schema {
        /// The table file.
        path: PathBuf,
        /// The first difference found.
        reason: String,
    },
    /// The artifact has no table or file of that name.
    #[error("{}: no output named {name:?}; it has {available}", dir.display())]
    NoSuchOutput {
        /// The artifact directory.
        dir: PathBuf,
        /// The name asked for.
        name: String,
        /// The names it does have.
        available: String,
    },
    /// The output path holds something a writer must not replace (a file, a link, a folder that is not an
    /// artifact): nothing was written.
    #[error(
        "{}: refusing to replace {found}; an output must be absent, an empty folder or an mmrl artifact",
        path.display()
    )]
    NotReplaceable {
        /// The output path.
        path: PathBuf,
        /// What is there.
        found: String,
    },
    /// Another writer, in this process or another, is writing the same output.
    #[error(
        "{}: another writer ({}) is writing this output (lock {}); wait for it to finish or stop it",
        dest.display(),
        holder.map_or_else(|| "pid unknown".to_owned(), |pid| format!("pid {pid}")),
        lock.display()
    )]
    Locked {
        /// The output path.
        dest: PathBuf,
        /// The lock file beside it.
        lock: PathBuf,
        /// The process id the holder wrote into the lock file, if it could be read.
        holder: Option<u32>,
    },
    /// A caller misused the writer (two outputs with one name, an unsafe file name).
    #[error("{0}")]
    Usage(String),
    /// Parquet encoding or decoding failed.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The table file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// Arrow rejected a batch (for example a column of the wrong length).
    #[error("{context}: arrow: {source}")]
    Arrow {
        /// What was being built.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow::error::ArrowError,
    },
}

/// The result type of this crate.
pub type Result<T, E = ArtifactError> = std::result::Result<T, E>;

pub(crate) fn io(
    action: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let path = path.into();
    move |source| ArtifactError::Io {
        action,
        path,
        source,
    }
}
