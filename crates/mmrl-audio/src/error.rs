//! The one error type of the audio crate.

use std::path::PathBuf;

/// Everything the audio stage and its library functions can fail with. Each message names the file, row or field
/// at fault and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: {field}: {message}")]
    Config {
        /// The offending field, as written in the pipeline TOML (dotted for nested tables).
        field: String,
        /// What was expected.
        message: String,
    },
    /// A clip could not be decoded or is unusable; `reason` is the stable reject code.
    #[error("{what}: {reason}: {detail}")]
    Audio {
        /// The file or sample the clip came from.
        what: String,
        /// The stable reject code (`truncated_audio`, `unsupported_encoding`, ...).
        reason: &'static str,
        /// What is wrong with it.
        detail: String,
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
    /// The input table does not have the columns the stage needs.
    #[error("{}: {message}", path.display())]
    Input {
        /// The input artifact or table.
        path: PathBuf,
        /// What is missing and what was expected.
        message: String,
    },
    /// A fitted state (noise profile, dictionaries, normalization) does not match the configuration it is applied
    /// with.
    #[error("state mismatch: {0}")]
    State(String),
    /// An FFT or resampler failed; the message says which and with what sizes.
    #[error("dsp: {0}")]
    Dsp(String),
    /// Reading or writing an artifact failed.
    #[error(transparent)]
    Artifact(#[from] mmrl_artifact::ArtifactError),
    /// Arrow rejected a batch.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn config_error(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}

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
