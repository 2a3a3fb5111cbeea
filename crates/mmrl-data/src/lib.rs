//! mmrl's data stages: the seeded default dataset ([`generate`]), ingest of a dataset folder ([`ingest`]), and
//! task-specific selection with dedup and leak-free splits ([`select`]).
//!
//! A dataset folder holds `manifest.csv` (columns `id`, `image`, `audio`, `question`, `answer`, and optionally
//! `split`, `task`, `qtype`; every other column is a tabular feature) plus the media it points to. Ingest turns it
//! into the first artifact: a `samples` table in the sample schema of [`mmrl_artifact::sample`] and a `rejects`
//! table naming every refused row and why.

mod error;
pub mod generate;
pub mod ingest;
pub mod select;
pub mod source;

pub use error::{Error, Result};
