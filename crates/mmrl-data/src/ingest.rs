//! The ingest stage: a dataset folder (`manifest.csv` + media) becomes the first artifact, every row validated.
//!
//! Accepted rows go to `samples.parquet` (images and audio as their encoded bytes, features typed), refused rows
//! to `rejects.parquet` with a stable reason code and a message. Nothing is dropped silently, and the stage fails
//! without writing anything when more than `max_reject_fraction` of the rows are refused.

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Float64Builder, RecordBatch, StringBuilder, UInt64Builder,
};
use mmrl_artifact::sample::{self, FeatureKind, Rejects, Split};
use mmrl_artifact::{ArtifactWriter, InputKind, InputRecord, Role, StageInfo};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file every dataset folder must have.
pub const MANIFEST_CSV: &str = "manifest.csv";

/// Columns of `manifest.csv` with a fixed meaning; every other column is a tabular feature.
pub const RESERVED_COLUMNS: [&str; 8] = [
    "id", "image", "audio", "question", "answer", "split", "task", "qtype",
];

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
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            max_reject_fraction: 0.2,
            max_file_bytes: 32 << 20,
            max_image_pixels: 4096 * 4096,
            column_types: BTreeMap::new(),
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
        Ok(())
    }
}

/// What ingest did, also written as `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestSummary {
    /// Data rows in `manifest.csv`.
    pub rows: usize,
    /// Rows written to `samples`.
    pub accepted: usize,
    /// Rows written to `rejects`.
    pub rejected: usize,
    /// Rejects per reason code.
    pub rejects_by_reason: BTreeMap<String, usize>,
    /// The tabular features and their inferred or declared types.
    pub features: Vec<(String, FeatureKind)>,
    /// Samples without an image / without audio.
    pub missing_image: usize,
    /// Samples without audio.
    pub missing_audio: usize,
}

/// A refused row: stable reason code plus a message for people.
#[derive(Debug, Clone, PartialEq)]
struct Reject {
    reason: &'static str,
    detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// Runs the stage: reads the folder `dataset`, writes the artifact at `output`.
pub fn run(config: &IngestConfig, dataset: &Path, output: &Path) -> Result<IngestSummary> {
    config.validate()?;
    let info = StageInfo {
        stage: "ingest".into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::Other(format!("serializing config: {e}")))?,
        seed: None,
    };
    let parsed = read_dataset(config, dataset)?;
    let total = parsed.rows.len();
    let rejected = parsed.rows.iter().filter(|r| r.outcome.is_err()).count();
    let mut by_reason = BTreeMap::new();
    for row in &parsed.rows {
        if let Err(r) = &row.outcome {
            *by_reason.entry(r.reason.to_owned()).or_insert(0) += 1;
        }
    }
    let manifest_path = dataset.join(MANIFEST_CSV);
    if rejected as f64 > config.max_reject_fraction * total as f64 {
        let first = parsed
            .rows
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("line {}: {}", r.line, e.detail))
            })
            .take(3)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::TooManyRejects {
            path: manifest_path,
            rejected,
            total,
            max_fraction: config.max_reject_fraction,
            by_reason: format!("{by_reason:?}"),
            first,
        });
    }

    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input(InputRecord {
        name: "dataset".into(),
        path: dataset.display().to_string(),
        kind: InputKind::Folder,
        content_hash: parsed.content_hash.clone(),
        bytes: parsed.bytes,
        rows: Some(total as u64),
        stage: None,
        lineage_fit_splits: Vec::new(),
    });
    let schema = sample::sample_schema(&parsed.features);
    let mut summary = IngestSummary {
        rows: total,
        accepted: total - rejected,
        rejected,
        rejects_by_reason: by_reason,
        features: parsed.features.clone(),
        missing_image: 0,
        missing_audio: 0,
    };
    {
        let mut table = writer.table("samples", Role::Data, schema.clone())?;
        let accepted: Vec<_> = parsed
            .rows
            .iter()
            .filter_map(|r| r.outcome.as_ref().ok().map(|s| (r.line, s)))
            .collect();
        for chunk in accepted.chunks(512) {
            summary.missing_image += chunk.iter().filter(|(_, s)| s.image.is_none()).count();
            summary.missing_audio += chunk.iter().filter(|(_, s)| s.audio.is_none()).count();
            table.write(&samples_batch(&schema, &parsed.features, chunk)?)?;
        }
        table.finish()?;
    }
    let mut rejects = Rejects::new("ingest");
    for row in &parsed.rows {
        if let Err(r) = &row.outcome {
            rejects.push(row.line, row.id.as_deref(), r.reason, &r.detail);
        }
    }
    writer.write_table(
        "rejects",
        Role::Rejects,
        sample::rejects_schema(),
        &[rejects.finish()?],
    )?;
    writer.write_json("report.json", Role::Report, &summary)?;
    writer.commit()?;
    tracing::info!(
        rows = total,
        accepted = summary.accepted,
        rejected,
        "ingest done"
    );
    Ok(summary)
}

/// One accepted sample, before it becomes Arrow columns.
#[derive(Debug)]
struct Sample {
    id: String,
    split: Option<String>,
    task: Option<String>,
    qtype: Option<String>,
    question: String,
    answer: String,
    image: Option<Vec<u8>>,
    audio: Option<Vec<u8>>,
    features: Vec<Cell>,
}

#[derive(Debug)]
enum Cell {
    Num(Option<f64>),
    Cat(Option<String>),
}

#[derive(Debug)]
struct ParsedRow {
    line: u64,
    id: Option<String>,
    outcome: std::result::Result<Sample, Reject>,
}

struct Parsed {
    features: Vec<(String, FeatureKind)>,
    rows: Vec<ParsedRow>,
    content_hash: String,
    bytes: u64,
}

/// Column positions of the reserved columns in the header.
struct Columns {
    index: HashMap<String, usize>,
    width: usize,
}

impl Columns {
    fn get<'r>(&self, record: &'r csv::StringRecord, name: &str) -> Option<&'r str> {
        self.index
            .get(name)
            .and_then(|&i| record.get(i))
            .map(str::trim)
    }
}

fn read_dataset(config: &IngestConfig, dataset: &Path) -> Result<Parsed> {
    let manifest_path = dataset.join(MANIFEST_CSV);
    let dataset_error = |message: String| Error::Dataset {
        path: manifest_path.clone(),
        message,
    };
    if !dataset.is_dir() {
        return Err(Error::Dataset {
            path: dataset.to_path_buf(),
            message: "not a directory; a dataset folder holds manifest.csv and its media".into(),
        });
    }
    let manifest_bytes = std::fs::read(&manifest_path).map_err(|source| Error::Io {
        action: "reading the dataset manifest",
        path: manifest_path.clone(),
        source,
    })?;
    let root = dataset.canonicalize().map_err(|source| Error::Io {
        action: "resolving",
        path: dataset.to_path_buf(),
        source,
    })?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(manifest_bytes.as_slice());
    let header = reader
        .headers()
        .map_err(|e| dataset_error(format!("unreadable header: {e}")))?
        .clone();
    let mut index = HashMap::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.trim();
        if name.is_empty() {
            return Err(dataset_error(format!("column {} has an empty name", i + 1)));
        }
        if index.insert(name.to_owned(), i).is_some() {
            return Err(dataset_error(format!(
                "column {name:?} appears twice in the header"
            )));
        }
    }
    if let Some(missing) = REQUIRED_COLUMNS.iter().find(|c| !index.contains_key(**c)) {
        return Err(dataset_error(format!(
            "missing required column {missing:?}; expected at least {REQUIRED_COLUMNS:?} and optionally image, audio, split, task, qtype"
        )));
    }
    for name in config.column_types.keys() {
        if !index.contains_key(name) {
            return Err(Error::Config {
                field: format!("column_types.{name}"),
                message: format!("no such column in {}", manifest_path.display()),
            });
        }
    }
    let columns = Columns {
        index,
        width: header.len(),
    };
    let records = reader
        .records()
        .enumerate()
        .map(|(i, r)| (i as u64 + 2, r))
        .collect::<Vec<_>>();
    if records.is_empty() {
        return Err(dataset_error("has a header but no rows".into()));
    }

    // Feature columns in header order, typed by declaration or by inference over the well-formed rows.
    let feature_cols: Vec<(String, usize)> = header
        .iter()
        .enumerate()
        .map(|(i, n)| (n.trim().to_owned(), i))
        .filter(|(n, _)| !RESERVED_COLUMNS.contains(&n.as_str()))
        .collect();
    let features: Vec<(String, FeatureKind, usize)> = feature_cols
        .into_iter()
        .map(|(name, i)| {
            let kind = config.column_types.get(&name).copied().unwrap_or_else(|| {
                let numeric = records
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .all(|r| {
                        let cell = r.get(i).map(str::trim).unwrap_or("");
                        cell.is_empty() || cell.parse::<f64>().is_ok()
                    });
                if numeric {
                    FeatureKind::Numeric
                } else {
                    FeatureKind::Categorical
                }
            });
            (name, kind, i)
        })
        .collect();

    // Cheap per-row checks first, sequentially (duplicate ids need the order).
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut rows: Vec<(u64, Option<String>, std::result::Result<Pending, Reject>)> =
        Vec::with_capacity(records.len());
    for (line, record) in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                rows.push((
                    line,
                    None,
                    Err(reject("malformed_row", format!("line {line}: {e}"))),
                ));
                continue;
            }
        };
        let id = columns.get(&record, "id").unwrap_or("").to_owned();
        let id_opt = (!id.is_empty()).then(|| id.clone());
        let outcome = check_row(&columns, &features, &root, &record, line, &id, &mut seen);
        rows.push((line, id_opt, outcome));
    }

    // Media: read, hash and decode in parallel; order is preserved.
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let chunk = rows.len().div_ceil(threads).max(1);
    let mut loaded: Vec<ParsedRow> = Vec::with_capacity(rows.len());
    let mut media_hashes: BTreeMap<String, (String, u64)> = BTreeMap::new();
    let expected = rows.len();
    let mut parts = Vec::new();
    while rows.len() > chunk {
        let rest = rows.split_off(chunk);
        parts.push(std::mem::replace(&mut rows, rest));
    }
    parts.push(rows);
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
            manifest_path.display()
        )));
    }
    let manifest_hash = mmrl_artifact::hash::hash_bytes(&manifest_bytes);
    let mut bytes = manifest_bytes.len() as u64;
    let mut all = vec![(MANIFEST_CSV.to_owned(), manifest_hash)];
    for (rel, (hash, size)) in media_hashes {
        bytes += size;
        all.push((rel, hash));
    }
    let content_hash =
        mmrl_artifact::hash::combine(all.iter().map(|(r, h)| (r.as_str(), h.as_str())));
    Ok(Parsed {
        features: features.into_iter().map(|(n, k, _)| (n, k)).collect(),
        rows: loaded,
        content_hash,
        bytes,
    })
}

/// A row that passed the cheap checks; its media still need reading and decoding.
#[derive(Debug)]
struct Pending {
    sample: Sample,
    image: Option<(String, PathBuf)>,
    audio: Option<(String, PathBuf)>,
}

fn check_row(
    columns: &Columns,
    features: &[(String, FeatureKind, usize)],
    root: &Path,
    record: &csv::StringRecord,
    line: u64,
    id: &str,
    seen: &mut HashMap<String, u64>,
) -> std::result::Result<Pending, Reject> {
    if record.len() != columns.width {
        return Err(reject(
            "malformed_row",
            format!(
                "line {line}: {} fields, the header has {}",
                record.len(),
                columns.width
            ),
        ));
    }
    if id.is_empty() {
        return Err(reject("empty_id", format!("line {line}: empty id")));
    }
    if let Some(first) = seen.get(id) {
        return Err(reject(
            "duplicate_id",
            format!("line {line}: id {id:?} already used on line {first}"),
        ));
    }
    seen.insert(id.to_owned(), line);
    let text = |name: &str| {
        columns
            .get(record, name)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let question = text("question")
        .ok_or_else(|| reject("empty_question", format!("line {line}: empty question")))?;
    let answer = text("answer")
        .ok_or_else(|| reject("empty_answer", format!("line {line}: empty answer")))?;
    let split = text("split");
    if let Some(s) = &split {
        if Split::parse(s).is_none() {
            return Err(reject(
                "invalid_split",
                format!("line {line}: split {s:?} is not one of train, val, test"),
            ));
        }
    }
    let mut cells = Vec::with_capacity(features.len());
    for (name, kind, i) in features {
        let cell = record.get(*i).map(str::trim).unwrap_or("");
        cells.push(match kind {
            FeatureKind::Categorical => Cell::Cat((!cell.is_empty()).then(|| cell.to_owned())),
            FeatureKind::Numeric if cell.is_empty() => Cell::Num(None),
            FeatureKind::Numeric => match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => Cell::Num(Some(v)),
                Ok(_) => {
                    return Err(reject(
                        "non_finite_number",
                        format!("line {line}: column {name:?} holds {cell:?}; expected a finite number or an empty cell"),
                    ));
                }
                Err(_) => {
                    return Err(reject(
                        "unparsable_number",
                        format!("line {line}: column {name:?} holds {cell:?}; expected a number or an empty cell"),
                    ));
                }
            },
        });
    }
    let media = |column: &str| -> std::result::Result<Option<(String, PathBuf)>, Reject> {
        match columns.get(record, column).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(rel) => resolve_media(root, rel, line, column).map(|p| Some((rel.to_owned(), p))),
        }
    };
    let image = media("image")?;
    let audio = media("audio")?;
    Ok(Pending {
        sample: Sample {
            id: id.to_owned(),
            split,
            task: text("task"),
            qtype: text("qtype"),
            question,
            answer,
            image: None,
            audio: None,
            features: cells,
        },
        image,
        audio,
    })
}

/// Resolves a media path relative to the dataset root, refusing anything that leaves it.
fn resolve_media(
    root: &Path,
    rel: &str,
    line: u64,
    column: &str,
) -> std::result::Result<PathBuf, Reject> {
    let path = Path::new(rel);
    let escapes = path.is_absolute()
        || path.components().any(|c| {
            matches!(
                c,
                Component::ParentDir | Component::RootDir | Component::Prefix(_)
            )
        });
    if escapes {
        return Err(reject(
            "path_escapes_folder",
            format!(
                "line {line}: {column} path {rel:?} must be relative to the dataset folder, without '..'"
            ),
        ));
    }
    let joined = root.join(path);
    let resolved = match joined.canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(reject(
                "missing_media",
                format!("line {line}: {column} file {rel:?} does not exist"),
            ));
        }
        Err(e) => {
            return Err(reject(
                "unreadable_media",
                format!("line {line}: {column} file {rel:?}: {e}"),
            ));
        }
    };
    if !resolved.starts_with(root) {
        return Err(reject(
            "path_escapes_folder",
            format!(
                "line {line}: {column} path {rel:?} resolves outside the dataset folder (a symlink?)"
            ),
        ));
    }
    if !resolved.is_file() {
        return Err(reject(
            "unreadable_media",
            format!("line {line}: {column} path {rel:?} is not a file"),
        ));
    }
    Ok(resolved)
}

type MediaHashes = Vec<(String, (String, u64))>;

fn load_row(
    config: &IngestConfig,
    (line, id, pending): (u64, Option<String>, std::result::Result<Pending, Reject>),
) -> (ParsedRow, MediaHashes) {
    let mut hashes = Vec::new();
    let outcome = pending.and_then(|p| {
        let mut sample = p.sample;
        if let Some((rel, path)) = &p.image {
            let bytes = read_media(config, rel, path, line, "image", &mut hashes)?;
            check_image(config, &bytes, rel, line)?;
            sample.image = Some(bytes);
        }
        if let Some((rel, path)) = &p.audio {
            let bytes = read_media(config, rel, path, line, "audio", &mut hashes)?;
            check_audio(&bytes, rel, line)?;
            sample.audio = Some(bytes);
        }
        Ok(sample)
    });
    (ParsedRow { line, id, outcome }, hashes)
}

fn read_media(
    config: &IngestConfig,
    rel: &str,
    path: &Path,
    line: u64,
    column: &str,
    hashes: &mut MediaHashes,
) -> std::result::Result<Vec<u8>, Reject> {
    let size = std::fs::metadata(path)
        .map_err(|e| {
            reject(
                "unreadable_media",
                format!("line {line}: {column} file {rel:?}: {e}"),
            )
        })?
        .len();
    if size > config.max_file_bytes {
        return Err(reject(
            "file_too_large",
            format!(
                "line {line}: {column} file {rel:?} has {size} bytes, over max_file_bytes {}",
                config.max_file_bytes
            ),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| {
        reject(
            "unreadable_media",
            format!("line {line}: {column} file {rel:?}: {e}"),
        )
    })?;
    hashes.push((
        rel.to_owned(),
        (mmrl_artifact::hash::hash_bytes(&bytes), bytes.len() as u64),
    ));
    Ok(bytes)
}

/// Decodes the whole image (a truncated file fails here), refusing formats other than PNG and JPEG and images
/// over the pixel limit before allocating for them.
fn check_image(
    config: &IngestConfig,
    bytes: &[u8],
    rel: &str,
    line: u64,
) -> std::result::Result<(), Reject> {
    let undecodable = |e: &dyn std::fmt::Display| {
        reject(
            "undecodable_image",
            format!("line {line}: image {rel:?}: {e}"),
        )
    };
    let reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    match reader.format() {
        Some(image::ImageFormat::Png | image::ImageFormat::Jpeg) => {}
        Some(other) => {
            return Err(reject(
                "unsupported_format",
                format!("line {line}: image {rel:?} is {other:?}; expected PNG or JPEG"),
            ));
        }
        None => {
            return Err(reject(
                "unsupported_format",
                format!(
                    "line {line}: image {rel:?} is not a PNG or JPEG file (unrecognized signature)"
                ),
            ));
        }
    }
    let (width, height) = reader.into_dimensions().map_err(|e| undecodable(&e))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(reject(
            "undecodable_image",
            format!("line {line}: image {rel:?} has zero size"),
        ));
    }
    if pixels > config.max_image_pixels {
        return Err(reject(
            "image_too_large",
            format!(
                "line {line}: image {rel:?} is {width}x{height}, over max_image_pixels {}",
                config.max_image_pixels
            ),
        ));
    }
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| undecodable(&e))?;
    let mut limits = image::Limits::default();
    // 16-bit RGBA is 8 bytes a pixel; leave room for the decoder's own buffers.
    limits.max_alloc = Some(pixels.saturating_mul(16).max(1 << 20));
    reader.limits(limits);
    reader.decode().map_err(|e| undecodable(&e))?;
    Ok(())
}

/// Reads every sample of a WAV file (a truncated file fails here).
fn check_audio(bytes: &[u8], rel: &str, line: u64) -> std::result::Result<(), Reject> {
    let undecodable = |e: String| {
        reject(
            "undecodable_audio",
            format!("line {line}: audio {rel:?}: {e}"),
        )
    };
    let reader =
        hound::WavReader::new(Cursor::new(bytes)).map_err(|e| undecodable(e.to_string()))?;
    let spec = reader.spec();
    let expected = reader.len() as usize;
    if spec.channels == 0 || spec.sample_rate == 0 {
        return Err(undecodable(format!(
            "{} channels at {} Hz",
            spec.channels, spec.sample_rate
        )));
    }
    if expected == 0 {
        return Err(undecodable("no samples".into()));
    }
    let read = match spec.sample_format {
        hound::SampleFormat::Int => reader
            .into_samples::<i32>()
            .try_fold(0usize, |n, s| s.map(|_| n + 1)),
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .try_fold(0usize, |n, s| s.map(|_| n + 1)),
    }
    .map_err(|e| undecodable(e.to_string()))?;
    if read != expected {
        return Err(undecodable(format!(
            "truncated: {read} of {expected} samples"
        )));
    }
    Ok(())
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
                        Cell::Num(v) => *v,
                        Cell::Cat(_) => None,
                    });
                }
                Arc::new(b.finish())
            }
            FeatureKind::Categorical => strings(&|s| match &s.features[i] {
                Cell::Cat(v) => v.as_deref(),
                Cell::Num(_) => None,
            }),
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}
