//! The one error type of the rl crate.

use std::path::PathBuf;

/// Everything the rl stage can fail with; messages name the field, file or step at fault.
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
    /// An input artifact is unusable (missing or mismatched sft checkpoint, empty split).
    #[error("{}: {message}", path.display())]
    Input {
        /// The artifact at fault.
        path: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A reward returned a non-finite value.
    #[error(
        "reward {name} returned {value} for sample {sample} (answer {answer:?}); rewards must be finite or None (not applicable)"
    )]
    BadReward {
        /// The reward's name.
        name: String,
        /// The value it returned.
        value: f64,
        /// The sample id.
        sample: String,
        /// The answer it scored.
        answer: String,
    },
    /// An external checker failed: it crashed, timed out, wrote the wrong number of lines, a line that is not
    /// JSON, or a score that is not a finite number.
    #[error("reward {name}: {message} (sample {sample})")]
    ExternalReward {
        /// The reward's name.
        name: String,
        /// The sample the failure concerns (the batch's first one when it concerns the whole batch).
        sample: String,
        /// What went wrong and what was expected.
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
    /// A checkpoint could not be written or read.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The file or folder.
        path: PathBuf,
        /// What failed.
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
    /// The model crate failed (loading, data, shapes).
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

impl Error {
    /// A config error on `field`.
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

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
