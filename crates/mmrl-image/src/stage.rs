//! The `image` stage: select's `samples` table in, the `images` tensor table out, plus `state.json`,
//! `report.json` and `rejects.parquet`.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch,
    StringArray, UInt16Array, UInt64Array,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use mmrl_artifact::sample::{self, Rejects, Split};
use mmrl_artifact::{Artifact, ArtifactWriter, Role, StageInfo};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::engine::{self, AbsentSample, DuplicateReport, Fate, Media, Row, Source, SplitStats};
use crate::normalize::Normalization;
use crate::process::Preprocessor;
use crate::{Error, Result};

/// The stage name, as in manifests and rejects.
pub const STAGE: &str = "image";
/// The input artifact's table.
pub const INPUT_TABLE: &str = "samples";
/// The output table (`images.parquet`).
pub const TABLE: &str = "images";
/// Column: whether the row has an image tensor.
pub const PRESENT: &str = "image_present";
/// Column: the normalized `3 x size x size` tensor, null when not present.
pub const TENSOR: &str = "image_tensor";
/// Rows per batch read and written.
const BATCH_ROWS: usize = 256;

/// The schema of the output table for tensors of side `size`.
pub fn output_schema(size: u32) -> SchemaRef {
    let size = size as usize;
    Arc::new(Schema::new(vec![
        Field::new(sample::ID, DataType::Utf8, false),
        Field::new(sample::SPLIT, DataType::Utf8, false),
        Field::new(sample::VIEW, DataType::UInt16, false),
        Field::new(PRESENT, DataType::Boolean, false),
        sample::tensor_field(TENSOR, &[3, size, size], true),
    ]))
}

/// The fitted state (`state.json`): what val, test and later runs need to preprocess images identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageState {
    /// The normalization applied to every split.
    pub normalization: Normalization,
    /// `true` when fitted on the train split; `false` when given in the config (or nothing was to fit).
    pub fitted: bool,
    /// The split fitted on (`train`), when fitted.
    pub fit_split: Option<String>,
    /// Train view-0 images fitted on.
    pub fit_images: usize,
    /// Pixels fitted on (padding excluded).
    pub fit_pixels: u64,
    /// The tensor shape `[3, size, size]`.
    pub shape: [usize; 3],
    /// The full config the state belongs to.
    pub config: ImageConfig,
}

impl ImageState {
    /// Reads a `state.json` written by the stage or by `preprocess`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(crate::error::io("reading", path))?;
        let state: ImageState = serde_json::from_str(&text).map_err(|e| Error::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        state.config.validate().map_err(|e| Error::State {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if state
            .normalization
            .std
            .iter()
            .any(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(Error::State {
                path: path.to_path_buf(),
                message: "std must be finite and > 0".into(),
            });
        }
        Ok(state)
    }
}

/// What the stage did (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageReport {
    /// Input rows.
    pub rows_in: usize,
    /// Input rows per split.
    pub rows_in_by_split: BTreeMap<String, usize>,
    /// Samples written (view 0 rows).
    pub samples_out: usize,
    /// Rows written, augmented views included.
    pub rows_out: usize,
    /// Augmented views per train sample.
    pub views_per_train_sample: u16,
    /// Samples written with an image tensor.
    pub present: usize,
    /// Samples whose input had no image.
    pub absent_in_input: usize,
    /// Samples dropped (listed in `rejects.parquet`).
    pub dropped: usize,
    /// Drops per reason code.
    pub dropped_by_reason: BTreeMap<String, usize>,
    /// Drops per split and reason code: what each split lost, and why (`test` loses rows only to its own
    /// images' checks, never to a near-duplicate in another split).
    pub dropped_by_split: BTreeMap<String, BTreeMap<String, usize>>,
    /// Samples kept without image because a check failed and its policy is `absent`.
    pub marked_absent: usize,
    /// Marked absent per reason code.
    pub marked_absent_by_reason: BTreeMap<String, usize>,
    /// Which samples were marked absent and why.
    pub marked_absent_samples: Vec<AbsentSample>,
    /// Images that passed the checks, per `format/layout` (`png/rgb8`).
    pub formats: BTreeMap<String, usize>,
    /// Near-duplicate groups.
    pub duplicates: DuplicateReport,
    /// The normalization applied.
    pub normalization: Normalization,
    /// Whether it was fitted on train (`false`: given in the config).
    pub fitted: bool,
    /// Train view-0 images it was fitted on.
    pub fit_images: usize,
    /// Raw channel statistics per split (0-1 scale, view 0, kept images).
    pub channel_stats_by_split: BTreeMap<String, SplitStats>,
    /// The tensor shape.
    pub shape: [usize; 3],
}

/// The select artifact's samples table, read with only the columns the stage needs.
struct TableSource {
    path: PathBuf,
}

impl TableSource {
    const COLUMNS: [(&'static str, DataType); 4] = [
        (sample::ID, DataType::Utf8),
        (sample::SPLIT, DataType::Utf8),
        (sample::IMAGE, DataType::Binary),
        (sample::SOURCE_LINE, DataType::UInt64),
    ];

    fn new(artifact: &Artifact) -> Result<Self> {
        let schema = artifact.table_schema(INPUT_TABLE)?;
        let path = artifact.file(&format!("{INPUT_TABLE}.parquet"))?;
        for (name, data_type) in &Self::COLUMNS {
            match schema.field_with_name(name) {
                Ok(field) if field.data_type() == data_type => {}
                Ok(field) => {
                    return Err(Error::Input {
                        path,
                        message: format!(
                            "column {name:?} is {:?}, expected {data_type:?}",
                            field.data_type()
                        ),
                    });
                }
                Err(_) => {
                    return Err(Error::Input {
                        path,
                        message: format!(
                            "missing column {name:?}; the image stage reads the select stage's samples table"
                        ),
                    });
                }
            }
        }
        Ok(Self { path })
    }
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str, path: &Path) -> Result<&'a T> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| Error::Input {
            path: path.to_path_buf(),
            message: format!("column {name:?} missing or mistyped"),
        })
}

impl Source for TableSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn for_each_batch(&self, f: &mut dyn FnMut(Vec<Row>) -> Result<()>) -> Result<()> {
        let parquet_error = |source| Error::Parquet {
            path: self.path.clone(),
            source,
        };
        let file = File::open(&self.path).map_err(crate::error::io("opening", &self.path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
        let mask = ProjectionMask::columns(
            builder.parquet_schema(),
            Self::COLUMNS.iter().map(|(n, _)| *n),
        );
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(parquet_error)?;
        let mut row_number = 0usize;
        for batch in reader {
            let batch = batch?;
            let ids = column::<StringArray>(&batch, sample::ID, &self.path)?;
            let splits = column::<StringArray>(&batch, sample::SPLIT, &self.path)?;
            let images = column::<BinaryArray>(&batch, sample::IMAGE, &self.path)?;
            let lines = column::<UInt64Array>(&batch, sample::SOURCE_LINE, &self.path)?;
            let mut rows = Vec::with_capacity(batch.num_rows());
            for i in 0..batch.num_rows() {
                row_number += 1;
                let id = ids
                    .is_valid(i)
                    .then(|| ids.value(i).to_owned())
                    .ok_or_else(|| Error::Input {
                        path: self.path.clone(),
                        message: format!("row {row_number}: id is null"),
                    })?;
                let split_text = splits.is_valid(i).then(|| splits.value(i));
                let split = split_text.and_then(Split::parse).ok_or_else(|| Error::Input {
                    path: self.path.clone(),
                    message: format!(
                        "row {row_number} (id {id:?}): split is {}; expected train, val or test (the image stage runs after select)",
                        split_text.map_or_else(|| "null".to_owned(), |s| format!("{s:?}"))
                    ),
                })?;
                let line = if lines.is_valid(i) { lines.value(i) } else { 0 };
                let image = if images.is_valid(i) {
                    Media::Bytes(images.value(i).to_vec())
                } else {
                    Media::None
                };
                rows.push(Row {
                    id,
                    split,
                    line,
                    image,
                });
            }
            f(rows)?;
        }
        Ok(())
    }
}

/// Runs the stage: reads the select artifact at `samples`, writes the image artifact at `output`.
pub fn run(config: &ImageConfig, seed: u64, samples: &Path, output: &Path) -> Result<ImageReport> {
    let pre = Preprocessor::new(config)?;
    let info = StageInfo {
        stage: STAGE.into(),
        crate_name: env!("CARGO_PKG_NAME").into(),
        crate_version: env!("CARGO_PKG_VERSION").into(),
        config: serde_json::to_value(config)
            .map_err(|e| Error::Other(format!("serializing config: {e}")))?,
        seed: Some(seed),
    };
    let input = Artifact::open(samples)?;
    let source = TableSource::new(&input)?;
    tracing::info!(input = %source.describe(), "image pass 1: checking images");
    let plan = engine::plan(&pre, &source)?;

    let mut writer = ArtifactWriter::create(output, info)?;
    writer.input_artifact("samples", &input);
    if plan.fitted {
        writer.fit_splits(&[Split::Train.as_str()]);
    }
    let schema = output_schema(config.size);
    let n_views = config.augment.n_views;
    let views_for = move |split: Split| if split == Split::Train { n_views } else { 0 };
    let mut rows_out = 0usize;
    tracing::info!(normalization = ?plan.normalization, "image pass 2: writing tensors");
    {
        let mut table = writer.table(TABLE, Role::Data, schema.clone())?;
        engine::produce(&pre, &source, &plan, seed, &views_for, &mut |rows| {
            rows_out += rows.len();
            Ok(table.write(&output_batch(&schema, &plan.rows, rows)?)?)
        })?;
        table.finish()?;
    }

    let mut rejects = Rejects::new(STAGE);
    for row in &plan.rows {
        if let Fate::Drop(r) = &row.fate {
            let detail = format!(
                "sample {:?} (manifest line {}): {}",
                row.id, row.line, r.detail
            );
            rejects.push(row.line, Some(&row.id), r.reason.as_str(), detail);
        }
    }
    writer.write_rejects(rejects)?;

    let report = report(config, &plan, rows_out);
    let state = ImageState {
        normalization: plan.normalization,
        fitted: plan.fitted,
        fit_split: plan.fitted.then(|| Split::Train.as_str().to_owned()),
        fit_images: plan.fit_images,
        fit_pixels: plan.fit_sums.pixels,
        shape: config.shape(),
        config: config.clone(),
    };
    writer.write_json("state.json", Role::State, &state)?;
    writer.write_json("report.json", Role::Report, &report)?;
    writer.commit()?;
    tracing::info!(
        rows_in = report.rows_in,
        samples_out = report.samples_out,
        rows_out = report.rows_out,
        dropped = report.dropped,
        duplicate_groups = report.duplicates.groups,
        "image stage done"
    );
    Ok(report)
}

pub(crate) fn report(config: &ImageConfig, plan: &engine::Plan, rows_out: usize) -> ImageReport {
    let mut rows_in_by_split = BTreeMap::new();
    for row in &plan.rows {
        *rows_in_by_split
            .entry(row.split.as_str().to_owned())
            .or_insert(0) += 1;
    }
    let count = |f: &dyn Fn(&Fate) -> bool| plan.rows.iter().filter(|r| f(&r.fate)).count();
    let dropped_by_reason = engine::count_by_reason(&plan.rows, false);
    let marked_absent_by_reason = engine::count_by_reason(&plan.rows, true);
    let dropped = count(&|f| matches!(f, Fate::Drop(_)));
    ImageReport {
        rows_in: plan.rows.len(),
        rows_in_by_split,
        samples_out: plan.rows.len() - dropped,
        rows_out,
        views_per_train_sample: config.augment.n_views,
        present: count(&|f| *f == Fate::Present),
        absent_in_input: count(&|f| *f == Fate::NoImage),
        dropped,
        dropped_by_reason,
        dropped_by_split: engine::drops_by_split(&plan.rows),
        marked_absent: count(&|f| matches!(f, Fate::Absent(_))),
        marked_absent_by_reason,
        marked_absent_samples: engine::absent_samples(&plan.rows),
        formats: plan.formats.clone(),
        duplicates: plan.duplicates.clone(),
        normalization: plan.normalization,
        fitted: plan.fitted,
        fit_images: plan.fit_images,
        channel_stats_by_split: plan.by_split.clone(),
        shape: config.shape(),
    }
}

/// The tensor column from `(tensor or null)` per row.
pub(crate) fn tensor_column(field: &Field, tensors: Vec<Option<Vec<f32>>>) -> Result<ArrayRef> {
    let DataType::FixedSizeList(item, len) = field.data_type() else {
        return Err(Error::Other(format!(
            "column {:?} is not a fixed-size list",
            field.name()
        )));
    };
    let per = *len as usize;
    let mut values = Vec::with_capacity(tensors.len() * per);
    let mut valid = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        match tensor {
            Some(t) if t.len() == per => {
                values.extend_from_slice(&t);
                valid.push(true);
            }
            Some(t) => {
                return Err(Error::Other(format!(
                    "tensor of {} values, expected {per}",
                    t.len()
                )));
            }
            None => {
                values.resize(values.len() + per, 0.0);
                valid.push(false);
            }
        }
    }
    let array = FixedSizeListArray::try_new(
        item.clone(),
        *len,
        Arc::new(Float32Array::from(values)),
        Some(NullBuffer::from(valid)),
    )?;
    Ok(Arc::new(array))
}

fn output_batch(
    schema: &SchemaRef,
    rows: &[engine::Info],
    out: engine::Produced,
) -> Result<RecordBatch> {
    let ids: StringArray = out
        .iter()
        .map(|(i, _, _)| Some(rows[*i].id.as_str()))
        .collect();
    let splits: StringArray = out
        .iter()
        .map(|(i, _, _)| Some(rows[*i].split.as_str()))
        .collect();
    let views: UInt16Array = out.iter().map(|(_, v, _)| Some(*v)).collect();
    let present: BooleanArray = out.iter().map(|(_, _, t)| Some(t.is_some())).collect();
    let tensors = tensor_column(
        schema.field(4),
        out.into_iter().map(|(_, _, t)| t).collect(),
    )?;
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(ids),
            Arc::new(splits),
            Arc::new(views),
            Arc::new(present),
            tensors,
        ],
    )?)
}
