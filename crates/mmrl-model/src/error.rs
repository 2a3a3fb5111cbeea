//! The one error type of the model crate.

use std::path::PathBuf;

/// Everything the model, the sft stage and predict can fail with. Each message names the file, field or
/// step at fault and what to do about it.
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
    /// An input artifact is unusable (missing table or column, wrong type, empty split).
    #[error("{}: {message}", path.display())]
    Input {
        /// The artifact or file at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A checkpoint does not fit the model it is loaded into.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What differs and how to fix it.
        message: String,
    },
    /// Training diverged.
    #[error("training diverged at step {step}: {message}")]
    Diverged {
        /// The optimizer step.
        step: u64,
        /// What happened and what to change.
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
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Anything else, with its context in the message.
    #[error("{0}")]
    Other(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}
