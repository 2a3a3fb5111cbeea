//! The one error type of the compress crate.

use std::path::PathBuf;

/// Everything compress can fail with. Each message names the file, field or layer at fault and what was
/// expected.
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
    /// An input artifact or checkpoint is unusable.
    #[error("{}: {message}", path.display())]
    Input {
        /// The artifact or file at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A pruning request does not fit the model (more heads than a layer has, ...).
    #[error("prune: {0}")]
    Prune(String),
    /// A quantization request does not fit the model (already quantized, ...).
    #[error("quantize: {0}")]
    Quantize(String),
    /// Model loading, training or decoding failed.
    #[error(transparent)]
    Model(#[from] mmrl_model::Error),
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// JSON (de)serialization failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
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
