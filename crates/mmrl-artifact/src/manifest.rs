//! `manifest.json`: what a stage read, how it was configured, and what it wrote.

use std::path::Path;

use arrow_schema::Schema;
use serde::{Deserialize, Serialize};

use crate::error::{ArtifactError, Result, io};

/// The manifest format this crate writes and reads; bumped on any incompatible change.
pub const FORMAT_VERSION: u32 = 1;

/// The name of the manifest file inside every artifact directory. It is written last.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The manifest of one artifact directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT_VERSION`] at write time.
    pub format_version: u32,
    /// The stage that wrote the artifact (`ingest`, `select`, ...).
    pub stage: String,
    /// The crate that implements the stage.
    pub crate_name: String,
    /// Its version.
    pub crate_version: String,
    /// The fully resolved stage configuration, defaults filled in.
    pub config: serde_json::Value,
    /// The seed the stage ran with, if it uses randomness.
    pub seed: Option<u64>,
    /// The splits whose rows any statistic of this stage was fit on (empty: nothing was fit).
    /// Eval refuses a lineage in which `test` appears here.
    pub fit_splits: Vec<String>,
    /// Everything the stage read.
    pub inputs: Vec<InputRecord>,
    /// Everything the stage wrote, besides this manifest.
    pub outputs: Vec<FileRecord>,
    /// A hash of all outputs (names and blake3 hashes): equal content hashes mean equal artifacts.
    pub content_hash: String,
    /// When the stage started (RFC 3339, UTC).
    pub started_at: String,
    /// When the artifact was committed (RFC 3339, UTC).
    pub finished_at: String,
    /// `git rev-parse HEAD` of the working directory, with `-dirty` when it had changes; absent outside git.
    pub git_revision: Option<String>,
}

/// One thing a stage read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputRecord {
    /// The input's name in the stage's interface (`dataset`, `samples`, ...).
    pub name: String,
    /// Where it was read from, as given.
    pub path: String,
    /// What kind of thing it is.
    pub kind: InputKind,
    /// For an artifact, its manifest's `content_hash`; for a folder or file, the blake3 of its content.
    pub content_hash: String,
    /// Total size in bytes.
    pub bytes: u64,
    /// Rows read, where that means something.
    pub rows: Option<u64>,
    /// The stage that produced it, for an artifact; lets eval follow the lineage.
    pub stage: Option<String>,
    /// For an artifact, the splits its own lineage was fit on (its `fit_splits` and its inputs').
    #[serde(default)]
    pub lineage_fit_splits: Vec<String>,
}

/// What kind of input a stage read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// An artifact directory with its own manifest.
    Artifact,
    /// A user's folder (a dataset).
    Folder,
    /// A single file.
    File,
}

/// One file an artifact holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// File name inside the artifact directory.
    pub file: String,
    /// What the file is for.
    pub role: Role,
    /// blake3 of the file (hex).
    pub blake3: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Row count, for a table.
    pub rows: Option<u64>,
    /// Arrow schema, for a table.
    pub schema: Option<Schema>,
    /// Whether the output is a folder of files (then `blake3` combines its files' hashes by relative path).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
}

/// What an output file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The rows the next stage consumes.
    Data,
    /// Rows the stage refused, with the reason.
    Rejects,
    /// Fitted state (statistics, vocabularies, weights) to apply unchanged elsewhere.
    State,
    /// A human- or machine-readable report.
    Report,
}

impl Manifest {
    /// Reads and checks a manifest file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|e| ArtifactError::InvalidManifest {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if manifest.format_version != FORMAT_VERSION {
            return Err(ArtifactError::InvalidManifest {
                path: path.to_path_buf(),
                reason: format!(
                    "format_version {} is not the supported {FORMAT_VERSION}",
                    manifest.format_version
                ),
            });
        }
        let expected = crate::hash::combine(
            manifest
                .outputs
                .iter()
                .map(|o| (o.file.as_str(), o.blake3.as_str())),
        );
        if manifest.content_hash != expected {
            return Err(ArtifactError::InvalidManifest {
                path: path.to_path_buf(),
                reason: "content_hash does not match the listed outputs".into(),
            });
        }
        Ok(manifest)
    }

    /// The output record of that file name.
    pub fn output(&self, file: &str) -> Option<&FileRecord> {
        self.outputs.iter().find(|o| o.file == file)
    }

    /// Total rows of the outputs with [`Role::Data`].
    pub fn data_rows(&self) -> u64 {
        self.outputs
            .iter()
            .filter(|o| o.role == Role::Data)
            .filter_map(|o| o.rows)
            .sum()
    }

    /// The splits fit on anywhere in this artifact's lineage: its own and every input artifact's.
    pub fn lineage_fit_splits(&self) -> Vec<String> {
        let mut splits: Vec<String> = self
            .fit_splits
            .iter()
            .chain(self.inputs.iter().flat_map(|i| i.lineage_fit_splits.iter()))
            .cloned()
            .collect();
        splits.sort();
        splits.dedup();
        splits
    }
}
