//! Standalone use on a folder of images: `mmrl-image preprocess --input DIR --output FILE.parquet`.
//!
//! Every PNG or JPEG under the folder (recursively, in sorted order) becomes a row keyed by its path relative to
//! the folder. The folder is one split: statistics are fitted on it, unless a saved state (`--state`) is given,
//! whose config and normalization are then applied unchanged. No augmentation. Next to the Parquet file go
//! `FILE.report.json` (counts, rejects with file and reason, duplicate groups, statistics) and
//! `FILE.state.json` (reusable with `--state`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::{self, Split};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::config::ImageConfig;
use crate::engine::{self, Fate, Media, Row, Source};
use crate::process::Preprocessor;
use crate::reject::Reason;
use crate::stage::{self, ImageReport, ImageState};
use crate::{Error, Result};

/// Files read per batch.
const BATCH_FILES: usize = 256;

/// The schema of a preprocess output file.
pub fn output_schema(size: u32) -> SchemaRef {
    let size = size as usize;
    Arc::new(Schema::new(vec![
        Field::new(sample::ID, DataType::Utf8, false),
        Field::new(stage::PRESENT, DataType::Boolean, false),
        sample::tensor_field(stage::TENSOR, &[3, size, size], true),
    ]))
}

/// A file refused by `preprocess`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileReject {
    /// Path relative to the input folder.
    pub file: String,
    /// The reason code.
    pub reason: Reason,
    /// What was wrong.
    pub detail: String,
}

/// What `preprocess` did (`FILE.report.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FolderReport {
    /// The folder read.
    pub input: String,
    /// The Parquet file written.
    pub output: String,
    /// Counts, duplicates and statistics, as the stage reports them (the folder counts as the train split).
    pub summary: ImageReport,
    /// Every dropped file with its reason.
    pub rejects: Vec<FileReject>,
}

/// The files of a folder, read in batches.
struct FolderSource {
    root: PathBuf,
    files: Vec<String>,
}

impl FolderSource {
    fn new(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Input {
                path: root.to_path_buf(),
                message: "not a directory".into(),
            });
        }
        let mut files = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).map_err(crate::error::io("listing", &dir))? {
                let path = entry.map_err(crate::error::io("listing", &dir))?.path();
                if path.is_dir() {
                    stack.push(path);
                } else if is_image_name(&path) {
                    let rel = path.strip_prefix(root).unwrap_or(&path);
                    files.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(Error::Input {
                path: root.to_path_buf(),
                message: "no .png, .jpg or .jpeg file in the folder".into(),
            });
        }
        Ok(Self {
            root: root.to_path_buf(),
            files,
        })
    }
}

/// Files are chosen by extension; whether the content matches is checked from the bytes, so a `.png` that is
/// not a PNG is rejected with the reason.
fn is_image_name(path: &Path) -> bool {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

impl Source for FolderSource {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn for_each_batch(&self, f: &mut dyn FnMut(Vec<Row>) -> Result<()>) -> Result<()> {
        use rayon::prelude::*;
        let mut line = 0u64;
        for chunk in self.files.chunks(BATCH_FILES) {
            let contents: Vec<Media> = chunk
                .par_iter()
                .map(|rel| match std::fs::read(self.root.join(rel)) {
                    Ok(bytes) => Media::Bytes(bytes),
                    Err(e) => Media::Unreadable(e.to_string()),
                })
                .collect();
            let rows = chunk
                .iter()
                .zip(contents)
                .map(|(rel, image)| {
                    line += 1;
                    Row {
                        id: rel.clone(),
                        split: Split::Train,
                        line,
                        image,
                    }
                })
                .collect();
            f(rows)?;
        }
        Ok(())
    }
}

/// Preprocesses every image of `input` into the Parquet file `output` (plus `.report.json` and `.state.json`
/// next to it). With `state`, its config and normalization are used and `config` must be `None`.
pub fn preprocess(
    config: Option<&ImageConfig>,
    state: Option<&ImageState>,
    input: &Path,
    output: &Path,
) -> Result<FolderReport> {
    let mut config = match (config, state) {
        (Some(_), Some(_)) => {
            return Err(Error::Other(
                "give either params or a saved state, not both: the state carries its config"
                    .into(),
            ));
        }
        (Some(c), None) => c.clone(),
        (None, Some(s)) => {
            let mut c = s.config.clone();
            c.mean = Some(s.normalization.mean);
            c.std = Some(s.normalization.std);
            c
        }
        (None, None) => ImageConfig::default(),
    };
    if config.augment.n_views > 0 {
        tracing::warn!(
            n_views = config.augment.n_views,
            "preprocess writes un-augmented images only; augment.n_views ignored"
        );
        config.augment.n_views = 0;
    }
    let pre = Preprocessor::new(&config)?;
    let source = FolderSource::new(input)?;
    tracing::info!(files = source.files.len(), input = %input.display(), "preprocess pass 1: checking images");
    let plan = engine::plan(&pre, &source)?;

    let schema = output_schema(config.size);
    let file = File::create(output).map_err(crate::error::io("creating", output))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build();
    let parquet_error = |source| Error::Parquet {
        path: output.to_path_buf(),
        source,
    };
    let mut writer =
        ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet_error)?;
    let mut rows_out = 0;
    tracing::info!(normalization = ?plan.normalization, "preprocess pass 2: writing tensors");
    engine::produce(&pre, &source, &plan, 0, &|_| 0, &mut |rows| {
        rows_out += rows.len();
        let ids: StringArray = rows
            .iter()
            .map(|(i, _, _)| Some(plan.rows[*i].id.as_str()))
            .collect();
        let present: BooleanArray = rows.iter().map(|(_, _, t)| Some(t.is_some())).collect();
        let tensors = stage::tensor_column(
            schema.field(2),
            rows.into_iter().map(|(_, _, t)| t).collect(),
        )?;
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(ids), Arc::new(present), tensors],
        )?;
        writer.write(&batch).map_err(parquet_error)
    })?;
    writer.close().map_err(parquet_error)?;

    let summary = stage::report(&config, &plan, rows_out);
    let rejects = plan
        .rows
        .iter()
        .filter_map(|row| match &row.fate {
            Fate::Drop(r) => Some(FileReject {
                file: row.id.clone(),
                reason: r.reason,
                detail: r.detail.clone(),
            }),
            _ => None,
        })
        .collect();
    let report = FolderReport {
        input: input.display().to_string(),
        output: output.display().to_string(),
        summary,
        rejects,
    };
    let fitted_state = ImageState {
        normalization: plan.normalization,
        fitted: plan.fitted,
        fit_split: plan.fitted.then(|| "folder".to_owned()),
        fit_images: plan.fit_images,
        fit_pixels: plan.fit_sums.pixels,
        shape: config.shape(),
        config: ImageConfig {
            mean: None,
            std: None,
            ..config.clone()
        },
    };
    let state_out = state.cloned().unwrap_or(fitted_state);
    write_json(&sidecar(output, "report.json"), &report)?;
    write_json(&sidecar(output, "state.json"), &state_out)?;
    Ok(report)
}

/// `out.parquet` -> `out.report.json`.
pub fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    output.with_extension(suffix)
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Other(format!("serializing {}: {e}", path.display())))?;
    std::fs::write(path, text + "\n").map_err(crate::error::io("writing", path))
}

/// Counts of rejects per reason in a report, for a one-line summary.
pub fn reject_counts(report: &FolderReport) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in &report.rejects {
        *counts.entry(r.reason.as_str().to_owned()).or_insert(0) += 1;
    }
    counts
}
