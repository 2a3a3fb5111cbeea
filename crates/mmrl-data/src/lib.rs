//! mmrl's data stages: the seeded default dataset ([`generate`]), ingest of a dataset ([`ingest`]), task-specific
//! selection with dedup and leak-free splits ([`select`]), and the profile `init` writes a pipeline from
//! ([`profile`]).
//!
//! A dataset is a folder with `manifest.csv` (columns `id`, `image`, `audio`, `question`, `answer`, and optionally
//! `split`, `task`, `qtype`, `modalities`; every other column is a tabular feature) plus the media it points to, a
//! Hugging Face ImageFolder/AudioFolder, or `datasets` Parquet ([`source`] detects which). Ingest turns it into
//! the first artifact: a `samples` table in the sample schema of [`mmrl_artifact::sample`] and a `rejects` table
//! naming every refused row and why.

mod error;
pub mod generate;
pub mod ingest;
pub mod profile;
pub mod select;
pub mod source;

pub use error::{Error, Result};
