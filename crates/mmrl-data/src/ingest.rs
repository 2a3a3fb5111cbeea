//! The ingest stage: a dataset (a `manifest.csv` folder, a Hugging Face ImageFolder/AudioFolder, or `datasets`
//! Parquet files; see [`crate::source`]) becomes the first artifact, every row validated.
//!
//! Accepted rows go to `samples.parquet` (images and audio as their encoded bytes, features typed), refused rows
//! to `rejects.parquet` with a stable reason code and a message naming the file and line. Nothing is dropped
//! silently, and the stage fails without writing anything when more than `max_reject_fraction` of the rows are
//! refused. [`read`] does all of this but the writing, for callers such as a dataset profiler.
//!
//! A sample's `source_line` is the line of its CSV or JSONL file (the CSV header is line 1) or its row index + 1
//! in its Parquet file. With several source files (split folders, Parquet shards) that number repeats across
//! files; reject details and derived ids name the file too.

mod columns;
mod media;
pub mod qtype;
mod rows;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Float64Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use mmrl_artifact::sample::{self, FeatureKind, Rejects};
use mmrl_artifact::{ArtifactWriter, InputKind, InputRecord, Role, StageInfo};
use serde::{Deserialize, Serialize};

pub use columns::{ColumnReport, IgnoredColumn};
pub use media::{AUDIO_EXTENSIONS, IMAGE_EXTENSIONS};
pub use qtype::{DerivedQtypes, TemplateCount};

use crate::source::{self, Format, Table};
use crate::{Error, Result};
use rows::{Checked, Checker, MediaSource};

/// The file that makes a folder a `manifest.csv` dataset.
pub const MANIFEST_CSV: &str = source::MANIFEST_CSV;

/// The roles a column can play; every other scalar column is a tabular feature. In `manifest.csv` they are the
/// column names; `columns` in the params maps them to other names. `modalities` is the optional annotation of
/// what each answer needs ([`sample::MODALITIES`]), written after the features and never a feature itself.
pub const RESERVED_COLUMNS: [&str; 9] = [
    "id",
    "image",
    "audio",
    "question",
    "answer",
    "split",
    "task",
    "qtype",
    "modalities",
];

/// The words a `modalities` cell may hold, separated by spaces, `|` or commas.
pub const MODALITY_WORDS: [&str; 3] = ["image", "audio", "tabular"];

/// Roles every dataset needs; `id` only in `manifest.csv` (other formats derive `<file>:<line>`).
const REQUIRED_COLUMNS: [&str; 3] = ["id", "question", "answer"];

/// Parameters of the ingest stage (`[stages.ingest.params]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// The stage fails when more than this fraction of rows is rejected.
    pub max_reject_fraction: f64,
    /// Media files larger than this are rejected (`file_too_large`).
    pub max_file_bytes: u64,
    /// Images with more pixels than this are rejected before decoding (`image_too_large`): no decompression bombs.
    pub max_image_pixels: u64,
    /// Feature column types that override inference. Without an entry, a column is numeric when every
    /// non-empty cell parses as a number, categorical otherwise.
    pub column_types: BTreeMap<String, FeatureKind>,
    /// Which data column plays which role, as AutoTrain's column mapping: `{ question = "prompt", answer =
    /// "label", image = "img" }`. Keys are [`RESERVED_COLUMNS`]; a role not mapped is read from the column of its
    /// own name.
    pub columns: BTreeMap<String, String>,
    /// Without a `qtype` column, question types are derived from the question text, coarsened until at most this
    /// many remain (see [`qtype`]).
    pub max_derived_qtypes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_reject_fraction: 0.2,
            max_file_bytes: 32 << 20,
            max_image_pixels: 4096 * 4096,
            column_types: BTreeMap::new(),
            columns: BTreeMap::new(),
            max_derived_qtypes: 20,
        }
    }
}

impl IngestConfig {
    /// Checks every field before any work is done.
    pub fn validate(&self) -> Result<()> {
        let config = |field: &str, message: String| Error::Config {
            field: field.to_owned(),
            message,
        };
        if !(0.0..=1.0).contains(&self.max_reject_fraction) {
            return Err(config(
                "max_reject_fraction",
                format!("{} is not in [0, 1]", self.max_reject_fraction),
            ));
        }
        if self.max_file_bytes == 0 {
            return Err(config("max_file_bytes", "must be at least 1".into()));
        }
        if self.max_image_pixels == 0 {
            return Err(config("max_image_pixels", "must be at least 1".into()));
        }
        if self.max_derived_qtypes == 0 {
            return Err(config("max_derived_qtypes", "must be at least 1".into()));
        }
        if let Some(name) = self
            .column_types
            .keys()
            .find(|k| RESERVED_COLUMNS.contains(&k.as_str()))
        {
            return Err(config(
                &format!("column_types.{name}"),
                "is a reserved column, not a tabular feature".into(),
            ));
        }
        let mut targets: BTreeMap<&str, &str> = BTreeMap::new();
        for (role, column) in &self.columns {
            let field = format!("columns.{role}");
            if !RESERVED_COLUMNS.contains(&role.as_str()) {
                return Err(config(
                    &field,
                    format!("{role:?} is not a role; expected one of {RESERVED_COLUMNS:?}"),
                ));
            }
            if column.trim().is_empty() {
                return Err(config(&field, "names no column".into()));
            }
            if let Some(other) = targets.insert(column, role) {
                return Err(config(
                    &field,
                    format!("column {column:?} is already mapped to columns.{other}"),
                ));
            }
            if self.column_types.contains_key(column) {
                return Err(config(
                    &format!("column_types.{column}"),
                    format!("is mapped to columns.{role}, not a tabular feature"),
                ));
            }
        }
        Ok(())
    }
}

/// What ingest did, also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestSummary {
    /// Data rows read.
    pub rows: usize,
    /// Rows written to `samples`.
    pub accepted: usize,
    /// Rows written to `rejects`.
    pub rejected: usize,
    /// Rejects per reason code.
    pub rejects_by_reason: BTreeMap<String, usize>,
    /// The tabular features and their inferred or declared types.
    pub features: Vec<(String, FeatureKind)>,
    /// Samples without an image.
    pub missing_image: usize,
    /// Samples without audio.
    pub missing_audio: usize,
    /// The layout read: `manifest_csv`, `hf_folder_csv`, `hf_folder_jsonl` or `parquet`.
    pub format: Format,
    /// The files rows were read from, relative to the dataset root.
    pub source_files: Vec<String>,
    /// Which column played which role, derived ids, auto media columns, ignored columns.
    pub columns: ColumnReport,
    /// `column` when question types come from a `qtype` column, `derived` when from the question text.
    pub qtype_source: &'static str,
    /// The derivation rule applied (absent with a `qtype` column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qtype_rule: Option<String>,
    /// The derived question types and their accepted rows (empty with a `qtype` column).
    pub qtype_templates: Vec<TemplateCount>,
}

/// A refused row: stable reason code plus a message for people naming the file and line.
#[derive(Debug, Clone, PartialEq)]
pub struct Reject {
    /// The stable reason code (`missing_media`, `unsupported_format`, ...).
    pub reason: &'static str,
    /// What is wrong, where, and what was expected.
    pub detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// One accepted sample, before it becomes Arrow columns.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Unique id (from the data, or `<file>:<line>`).
    pub id: String,
    /// `train`, `val`, `test`, or none yet.
    pub split: Option<String>,
    /// The task, if the data has one.
    pub task: Option<String>,
    /// The question type: the `qtype` column's, or derived from the question.
    pub qtype: Option<String>,
    /// The question text.
    pub question: String,
    /// The answer text.
    pub answer: String,
    /// Encoded PNG or JPEG.
    pub image: Option<Vec<u8>>,
    /// Encoded WAV.
    pub audio: Option<Vec<u8>>,
    /// One value per feature of [`Ingested::features`].
    pub features: Vec<FeatureValue>,
    /// What the answer needs, as the data declares it (`modalities` column), if it does.
    pub modalities: Option<String>,
    /// One value per checker column of [`Ingested::checkers`] (`None`: empty cell).
    pub checks: Vec<Option<String>>,
}

/// A tabular feature value.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureValue {
    /// A numeric feature; `None` when missing.
    Num(Option<f64>),
    /// A categorical feature; `None` when missing.
    Cat(Option<String>),
}

/// One source row after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestedRow {
    /// The line (CSV, JSONL) or row index + 1 (Parquet) in its source file.
    pub line: u64,
    /// The row's id, when it has one.
    pub id: Option<String>,
    /// The sample, or why it was refused.
    pub outcome: std::result::Result<Sample, Reject>,
}

/// A dataset validated but not written: what [`run`] writes, for callers that only want to look.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    /// The layout read.
    pub format: Format,
    /// The source files, relative to the dataset root.
    pub source_files: Vec<String>,
    /// The tabular features and their types.
    pub features: Vec<(String, FeatureKind)>,
    /// Every row, in source order.
    pub rows: Vec<IngestedRow>,
    /// Content hash of the source files and the media files they name.
    pub content_hash: String,
    /// Bytes of the source files and media files.
    pub bytes: u64,
    /// How the columns were read.
    pub columns: ColumnReport,
    /// Derived question types; `None` when the data has a `qtype` column.
    pub derived_qtypes: Option<DerivedQtypes>,
    /// Whether the data has a `modalities` column (then `samples` has one too, after the features).
    pub declares_modalities: bool,
    /// The checker columns (`accept`, `check_*`) in data order: `samples` has them last, as text.
    pub checkers: Vec<String>,
    /// The path errors about the whole dataset name: its one source file, or its root.
    pub path: std::path::PathBuf,
}

/// Runs the stage: reads the dataset at `dataset` (a folder or a Parquet file), writes the artifact at `output`.
pub fn run(config: &IngestConfig, dataset: &Path, output: &Path) -> Result<IngestSummary> {
    let info = StageInfo {
        stage: "ingest".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::Other(format!("serializing config: {e}")))?,
        seed: None,
    };
    let ingested = read(config, dataset)?;
    let summary = summarize(&ingested);
    check_reject_fraction(config, &ingested, &summary)?;
    write(&ingested, &summary, info, dataset, output)?;
    tracing::info!(
        format = ingested.format.as_str(),
        rows = summary.rows,
        accepted = summary.accepted,
        rejected = summary.rejected,
        qtype_source = summary.qtype_source,
        "ingest done"
    );
    Ok(summary)
}

/// Reads and validates every row of the dataset at `dataset`: the format is detected, columns mapped, media
/// read and decoded, question types derived when absent. Nothing is written and no reject limit applies.
pub fn read(config: &IngestConfig, dataset: &Path) -> Result<Ingested> {
    config.validate()?;
    let mut table = source::read(dataset)?;
    if table.rows.is_empty() {
        return Err(Error::Dataset {
            path: match table.layout.files.as_slice() {
                [one] => one.path.clone(),
                _ => table.layout.root.clone(),
            },
            message: "has a header but no rows".into(),
        });
    }
    let plan = columns::plan(config, &table)?;
    let source_rows = std::mem::take(&mut table.rows);
    let checked = check_rows(&table, &plan, source_rows)?;
    let (mut rows, media_hashes) = load_rows(config, checked, &table)?;
    let derived_qtypes = match plan.role("qtype") {
        Some(_) => None,
        None => Some(derive_qtypes(config, &mut rows)),
    };
    let mut bytes = 0;
    let mut hashed: Vec<(String, String)> = Vec::new();
    for (rel, hash, size) in &table.file_hashes {
        bytes += size;
        hashed.push((rel.clone(), hash.clone()));
    }
    for (rel, (hash, size)) in media_hashes {
        bytes += size;
        hashed.push((rel, hash));
    }
    let content_hash =
        mmrl_artifact::hash::combine(hashed.iter().map(|(r, h)| (r.as_str(), h.as_str())));
    Ok(Ingested {
        format: table.layout.format,
        source_files: table.layout.files.iter().map(|f| f.rel.clone()).collect(),
        features: plan
            .features
            .iter()
            .map(|(n, k, _)| (n.clone(), *k))
            .collect(),
        rows,
        content_hash,
        bytes,
        columns: plan.report.clone(),
        derived_qtypes,
        declares_modalities: plan.role("modalities").is_some(),
        checkers: plan.checkers.iter().map(|(n, _)| n.clone()).collect(),
        path: match table.layout.files.as_slice() {
            [one] => one.path.clone(),
            _ => table.layout.root.clone(),
        },
    })
}

/// Cheap per-row checks, in order (duplicate ids need it).
fn check_rows(table: &Table, plan: &columns::Plan, rows: Vec<source::Row>) -> Result<Vec<Checked>> {
    let mut checker = Checker::new(table, plan)?;
    Ok(rows.into_iter().map(|row| checker.check(row)).collect())
}

/// Media file hashes and sizes by root-relative path.
type MediaHashes = BTreeMap<String, (String, u64)>;
/// One media file's root-relative path, hash and size.
type MediaHash = (String, (String, u64));

/// Reads, hashes and decodes media in parallel; order is preserved.
fn load_rows(
    config: &IngestConfig,
    mut checked: Vec<Checked>,
    table: &Table,
) -> Result<(Vec<IngestedRow>, MediaHashes)> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = checked.len().div_ceil(threads).max(1);
    let expected = checked.len();
    let mut parts = Vec::new();
    while checked.len() > chunk {
        let rest = checked.split_off(chunk);
        parts.push(std::mem::replace(&mut checked, rest));
    }
    parts.push(checked);
    let mut loaded = Vec::with_capacity(expected);
    let mut media_hashes = MediaHashes::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = parts
            .into_iter()
            .map(|part| {
                scope.spawn(move || {
                    part.into_iter()
                        .map(|row| load_row(config, row))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for handle in handles {
            // A panic in a decoder is a bug, not bad data; it becomes an error below rather than an abort.
            if let Ok(part) = handle.join() {
                for (row, hashes) in part {
                    media_hashes.extend(hashes);
                    loaded.push(row);
                }
            }
        }
    });
    if loaded.len() != expected {
        return Err(Error::Other(format!(
            "{}: a media decoder panicked",
            table.layout.root.display()
        )));
    }
    Ok((loaded, media_hashes))
}

/// Reads and decodes one row's media; a file's hash is recorded under its root-relative path.
fn load_row(config: &IngestConfig, (line, id, pending): Checked) -> (IngestedRow, Vec<MediaHash>) {
    let mut hashes = Vec::new();
    let outcome = pending.and_then(|p| {
        let mut sample = p.sample;
        let mut load =
            |source: MediaSource, column: &str| -> std::result::Result<(Vec<u8>, String), Reject> {
                match source {
                    MediaSource::File { rel, path } => {
                        let bytes = media::read_media(config, &rel, &path, &p.loc, column)?;
                        hashes.push((
                            rel.clone(),
                            (mmrl_artifact::hash::hash_bytes(&bytes), bytes.len() as u64),
                        ));
                        Ok((bytes, rel))
                    }
                    MediaSource::Bytes { name, bytes } => {
                        media::check_size(config, bytes.len() as u64, &name, &p.loc, column)?;
                        Ok((bytes, name))
                    }
                }
            };
        if let Some(source) = p.image {
            let (bytes, name) = load(source, "image")?;
            media::check_image(config, &bytes, &name, &p.loc)?;
            sample.image = Some(bytes);
        }
        if let Some(source) = p.audio {
            let (bytes, name) = load(source, "audio")?;
            media::check_audio(&bytes, &name, &p.loc)?;
            sample.audio = Some(bytes);
        }
        Ok(sample)
    });
    (IngestedRow { line, id, outcome }, hashes)
}

/// Gives every accepted sample a question type derived from its question (no `qtype` column).
fn derive_qtypes(config: &IngestConfig, rows: &mut [IngestedRow]) -> DerivedQtypes {
    let questions: Vec<&str> = rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().ok().map(|s| s.question.as_str()))
        .collect();
    let (types, derived) = qtype::derive(&questions, config.max_derived_qtypes);
    let accepted = rows.iter_mut().filter_map(|r| r.outcome.as_mut().ok());
    for (sample, qtype) in accepted.zip(types) {
        sample.qtype = Some(qtype);
    }
    derived
}

fn summarize(ingested: &Ingested) -> IngestSummary {
    let mut by_reason = BTreeMap::new();
    let (mut accepted, mut missing_image, mut missing_audio) = (0, 0, 0);
    for row in &ingested.rows {
        match &row.outcome {
            Ok(s) => {
                accepted += 1;
                missing_image += usize::from(s.image.is_none());
                missing_audio += usize::from(s.audio.is_none());
            }
            Err(r) => *by_reason.entry(r.reason.to_owned()).or_insert(0) += 1,
        }
    }
    IngestSummary {
        rows: ingested.rows.len(),
        accepted,
        rejected: ingested.rows.len() - accepted,
        rejects_by_reason: by_reason,
        features: ingested.features.clone(),
        missing_image,
        missing_audio,
        format: ingested.format,
        source_files: ingested.source_files.clone(),
        columns: ingested.columns.clone(),
        qtype_source: if ingested.derived_qtypes.is_some() {
            "derived"
        } else {
            "column"
        },
        qtype_rule: ingested.derived_qtypes.as_ref().map(|d| d.rule.clone()),
        qtype_templates: ingested
            .derived_qtypes
            .as_ref()
            .map(|d| d.templates.clone())
            .unwrap_or_default(),
    }
}

/// Fails, naming the first rejects, when more than `max_reject_fraction` of the rows were refused.
fn check_reject_fraction(
    config: &IngestConfig,
    ingested: &Ingested,
    summary: &IngestSummary,
) -> Result<()> {
    if summary.rejected as f64 <= config.max_reject_fraction * summary.rows as f64 {
        return Ok(());
    }
    let first = ingested
        .rows
        .iter()
        .filter_map(|r| r.outcome.as_ref().err().map(|e| e.detail.clone()))
        .take(3)
        .collect::<Vec<_>>()
        .join("; ");
    Err(Error::TooManyRejects {
        path: ingested.path.clone(),
        rejected: summary.rejected,
        total: summary.rows,
        max_fraction: config.max_reject_fraction,
        by_reason: format!("{:?}", summary.rejects_by_reason),
        first,
    })
}

/// Writes `samples`, `rejects` and `report.json` as one atomic artifact.
fn write(
    ingested: &Ingested,
    summary: &IngestSummary,
    info: StageInfo,
    dataset: &Path,
    output: &Path,
) -> Result<()> {
    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input(InputRecord {
        name: "dataset".into(),
        path: dataset.display().to_string(),
        kind: if dataset.is_dir() {
            InputKind::Folder
        } else {
            InputKind::File
        },
        content_hash: ingested.content_hash.clone(),
        bytes: ingested.bytes,
        rows: Some(summary.rows as u64),
        stage: None,
        lineage_fit_splits: Vec::new(),
    });
    let schema = samples_schema(ingested);
    {
        let mut table = writer.table("samples", Role::Data, schema.clone())?;
        let accepted: Vec<_> = ingested
            .rows
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok().map(|s| (r.line, s)))
            .collect();
        for chunk in accepted.chunks(512) {
            table.write(&samples_batch(&schema, &ingested.features, chunk)?)?;
        }
        table.finish()?;
    }
    let mut rejects = Rejects::new("ingest");
    for row in &ingested.rows {
        if let Err(r) = &row.outcome {
            rejects.push(row.line, row.id.as_deref(), r.reason, &r.detail);
        }
    }
    writer.write_rejects(rejects)?;
    writer.write_json("report.json", Role::Report, summary)?;
    writer.commit()?;
    Ok(())
}

/// The sample schema with this dataset's features, then its `modalities` annotation when it declares one, then
/// its checker columns: annotations as text, never features.
fn samples_schema(ingested: &Ingested) -> arrow::datatypes::SchemaRef {
    let schema = sample::sample_schema(&ingested.features);
    if !ingested.declares_modalities && ingested.checkers.is_empty() {
        return schema;
    }
    let mut fields: Vec<arrow::datatypes::Field> =
        schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let annotations = ingested
        .declares_modalities
        .then_some(sample::MODALITIES)
        .into_iter()
        .chain(ingested.checkers.iter().map(String::as_str));
    for name in annotations {
        fields.push(arrow::datatypes::Field::new(
            name,
            arrow::datatypes::DataType::Utf8,
            true,
        ));
    }
    Arc::new(arrow::datatypes::Schema::new(fields))
}

fn samples_batch(
    schema: &arrow::datatypes::SchemaRef,
    features: &[(String, FeatureKind)],
    rows: &[(u64, &Sample)],
) -> Result<RecordBatch> {
    let strings = |f: &dyn Fn(&Sample) -> Option<&str>| -> ArrayRef {
        let mut b = StringBuilder::new();
        for (_, s) in rows {
            b.append_option(f(s));
        }
        Arc::new(b.finish())
    };
    let binary = |f: &dyn Fn(&Sample) -> Option<&[u8]>| -> ArrayRef {
        let mut b = BinaryBuilder::new();
        for (_, s) in rows {
            b.append_option(f(s));
        }
        Arc::new(b.finish())
    };
    let mut lines = UInt64Builder::with_capacity(rows.len());
    for (line, _) in rows {
        lines.append_value(*line);
    }
    let mut columns: Vec<ArrayRef> = vec![
        strings(&|s| Some(&s.id)),
        strings(&|s| s.split.as_deref()),
        strings(&|s| s.task.as_deref()),
        strings(&|s| s.qtype.as_deref()),
        strings(&|s| Some(&s.question)),
        strings(&|s| Some(&s.answer)),
        binary(&|s| s.image.as_deref()),
        binary(&|s| s.audio.as_deref()),
        Arc::new(lines.finish()),
    ];
    for (i, (_, kind)) in features.iter().enumerate() {
        columns.push(match kind {
            FeatureKind::Numeric => {
                let mut b = Float64Builder::with_capacity(rows.len());
                for (_, s) in rows {
                    b.append_option(match &s.features[i] {
                        FeatureValue::Num(v) => *v,
                        FeatureValue::Cat(_) => None,
                    });
                }
                Arc::new(b.finish())
            }
            FeatureKind::Categorical => strings(&|s| match &s.features[i] {
                FeatureValue::Cat(v) => v.as_deref(),
                FeatureValue::Num(_) => None,
            }),
        });
    }
    if schema.column_with_name(sample::MODALITIES).is_some() {
        columns.push(strings(&|s| s.modalities.as_deref()));
    }
    let checkers = schema
        .fields()
        .iter()
        .filter(|f| sample::is_checker_column(f.name()))
        .count();
    for k in 0..checkers {
        columns.push(strings(&|s| s.checks.get(k).and_then(Option::as_deref)));
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
