//! The on-disk contract of mmrl: artifact directories of Parquet tables plus `manifest.json`.
//!
//! Stages talk only through artifacts. A stage writes with an [`ArtifactWriter`], which builds the directory
//! under a hidden temporary name and renames it into place on [`ArtifactWriter::commit`], so nothing that reads
//! as complete can be left half-written. The next stage opens it with [`Artifact::open`], which validates the
//! manifest, sizes, row counts and schemas, and every byte against the manifest's blake3 hashes.
//!
//! A writer replaces only an artifact or an empty folder ([`check_replaceable`]), holds a lock file beside its
//! output while it writes (a stage binary claims it at start, [`claim_output`]), and removes what writers that
//! are gone left behind.
//!
//! ```no_run
//! use std::sync::Arc;
//! use arrow::array::{Int64Array, RecordBatch};
//! use arrow::datatypes::{DataType, Field, Schema};
//! use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
//!
//! # fn main() -> mmrl_artifact::Result<()> {
//! let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
//! let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(Int64Array::from(vec![1, 2, 3]))]).unwrap();
//! let info = StageInfo {
//!     stage: "demo".into(),
//!     crate_name: env!("CARGO_PKG_NAME").into(),
//!     crate_version: env!("CARGO_PKG_VERSION").into(),
//!     config: serde_json::json!({}),
//!     seed: None,
//! };
//! let mut writer = ArtifactWriter::create("artifacts/demo", info)?;
//! writer.write_table("numbers", Role::Data, schema, &[batch])?;
//! writer.commit()?;
//! let (_, batches) = Artifact::open("artifacts/demo")?.read_table("numbers")?;
//! # Ok(()) }
//! ```

#[cfg(feature = "cli")]
pub mod cli;
mod error;
pub mod hash;
mod manifest;
mod output;
mod read;
pub mod sample;
pub mod trial;
mod write;

pub use error::{ArtifactError, Result};
pub use manifest::{
    FORMAT_VERSION, FileRecord, InputKind, InputRecord, MANIFEST_FILE, Manifest, Role,
};
pub use output::{check_replaceable, claim_output, overlap};
pub use read::{Artifact, TableReader, same_columns};
pub use write::{ArtifactWriter, PARTIAL_MARKER, StageInfo, TableWriter, git_revision, work_dir};

// Re-exported so that stages build batches against the exact arrow this crate writes.
pub use arrow;
