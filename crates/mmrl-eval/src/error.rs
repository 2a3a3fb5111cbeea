//! The one error type of the eval crate.

use std::path::PathBuf;

/// Everything eval can fail with. Each message names the artifact, file, field or sample at fault.
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
    /// An input's lineage breaks hold-out discipline (fit on test) or is unknown.
    #[error("{}: {message}", path.display())]
    Lineage {
        /// The artifact at fault.
        path: PathBuf,
        /// What was found and what to do.
        message: String,
    },
    /// Predictions do not line up with the test samples (unknown, duplicate or missing ids).
    #[error("predictions of {model:?}: {message}")]
    Predictions {
        /// The model whose predictions are at fault.
        model: String,
        /// What is wrong, naming the sample ids.
        message: String,
    },
    /// A classical baseline failed to fit.
    #[error("baseline {name:?}: {message}")]
    Baseline {
        /// The baseline.
        name: String,
        /// The underlying failure.
        message: String,
    },
    /// Drawing a plot failed.
    #[error("plot {name:?}: {message}")]
    Plot {
        /// The plot.
        name: String,
        /// The underlying failure.
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
    /// The model crate failed (loading a checkpoint, joining the data).
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
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config_err(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}

pub(crate) fn input_err(path: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        message: message.into(),
    }
}
